"""The gateway with the real ``openai`` SDK against real processes: create (waited for, streamed, background),
resume by ``starting_after`` mid-stream, after SIGKILL of the gateway, on a second gateway and across a SIGKILL of
the coordinator, each time joined to exactly the persisted text; cancel stops the upstream request; a
``previous_response_id`` that is not the newest reply branches; and bad requests get OpenAI's error shape."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request

import openai
import pytest

from services.mock_llm.script import reply_text
from tests.integration.stack import BOTH_DATABASES, wait_until
from tools.spawn import REPO, free_port

MODEL = "mock-1"


@pytest.fixture
def gateway(fresh_stack):
    stack = fresh_stack()
    stack.start("gateway")
    stack.token = add_user(stack, "ada")
    return stack


def add_user(stack, name: str) -> str:
    added = stack.cli("users", "add", name, "--json")
    assert added.returncode == 0, added.stderr
    return json.loads(added.stdout)["token"]


def sdk(stack, port: int | None = None, token: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port or stack.http_port}/v1", api_key=token or stack.token,
                         max_retries=0)


def persisted(stack, response_id: str) -> str:
    return stack.db_message(response_id.removeprefix("resp_"))["content"]


def joined(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def test_create_waits_streams_and_labels_its_usage(gateway):
    client = sdk(gateway)
    text = "hello gateway [[mock tokens=12]]"
    response = client.responses.create(model=MODEL, input=text, instructions="be brief", temperature=0.5,
                                       max_output_tokens=40)
    sent = [e for e in gateway.journal() if e["body"]["messages"][-1]["content"] == text][-1]["body"]
    assert (sent["temperature"], sent["max_tokens"]) == (0.5, 40)
    assert response.status == "completed" and response.output_text == reply_text(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}], MODEL, 12)
    assert response.output_text == persisted(gateway, response.id)
    assert response.usage.output_tokens == 12 and response.usage.model_extra["chatter"]["output_tokens_source"] in (
        "server", "estimated")
    session = response.conversation.id
    assert [h["content"] for h in gateway.cli_json("history", session)["messages"]][0] == text  # a Chatter session
    events = list(client.responses.create(model=MODEL, input="stream me [[mock tokens=30]]", stream=True))
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(set(numbers)) and events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert joined(events) == persisted(gateway, events[-1].response.id) == events[-1].response.output_text


def test_a_dropped_stream_resumes_exactly_on_any_gateway_and_across_a_coordinator_restart(gateway):
    client = sdk(gateway)
    stream = client.responses.create(model=MODEL, input="a long one [[mock tokens=400 tps=40]]", stream=True,
                                     background=True)
    had = []
    for event in stream:
        had.append(event)
        if event.type == "response.output_text.delta" and len(joined(had)) > 20:
            break
    stream.close()  # the client drops: a background response goes on
    response_id = had[0].response.id

    def resume(port=None):
        last = had[-1].sequence_number
        more = []
        for event in sdk(gateway, port).responses.retrieve(response_id, stream=True, starting_after=last):
            assert event.sequence_number > last
            more.append(event)
            if event.type == "response.output_text.delta" and len(joined(had + more)) > len(joined(had)) + 30:
                break
        had.extend(more)

    resume()  # mid-stream, on the same gateway
    gateway.kill("gateway")  # SIGKILL: another gateway takes the resume
    other = free_port()
    second = subprocess.Popen([sys.executable, "-m", "clients.gateway"], cwd=REPO,
                              env=gateway.env | {"CHATTER_HTTP": f"127.0.0.1:{other}"}, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _answers(other), what="the second gateway")
        resume(other)
        gateway.kill("coordinator")  # SIGKILL: the restarted coordinator adopts the reply in flight
        gateway.start("coordinator")
        last = had[-1].sequence_number
        rest = list(sdk(gateway, other).responses.retrieve(response_id, stream=True, starting_after=last))
        again = list(sdk(gateway, other).responses.retrieve(response_id, stream=True, starting_after=-1))
    finally:
        second.terminate()
        second.wait(timeout=10)
    assert all(e.sequence_number > last for e in rest) and rest[-1].type == "response.completed"
    text = joined(had + rest)
    assert text == persisted(gateway, response_id) == rest[-1].response.output_text
    assert text == reply_text([{"role": "user", "content": "a long one [[mock tokens=400 tps=40]]"}], MODEL, 400)
    assert [(e.type, e.sequence_number) for e in again if "delta" not in e.type] == \
        [(e.type, e.sequence_number) for e in had + rest if "delta" not in e.type]  # the same numbers, any time


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/responses/resp_x", timeout=1)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def test_cancel_stops_the_upstream_request_and_a_dropped_plain_stream_is_cancelled(gateway):
    client = sdk(gateway)
    text = "cancel me [[mock tokens=2000 tps=50]]"
    started = client.responses.create(model=MODEL, input=text, background=True)
    wait_until(lambda: any(e["body"]["messages"][-1]["content"] == text and e["chunks_sent"] > 5
                           for e in gateway.journal()), what="the reply to stream")
    cancelled = client.responses.cancel(started.id)
    assert cancelled.status == "cancelled" and cancelled.output_text == persisted(gateway, started.id)
    entry = wait_until(lambda: next((e for e in gateway.journal() if e["body"]["messages"][-1]["content"] == text
                                     and e["client_closed"]), None), what="the upstream request closed")
    assert entry["chunks_sent"] < 2000 and not entry["completed"]
    dropped = "drop me [[mock tokens=2000 tps=50]]"
    stream = client.responses.create(model=MODEL, input=dropped, stream=True)
    for event in stream:
        if event.type == "response.output_text.delta":
            break
    stream.close()  # not background: the client going away is Stop
    wait_until(lambda: any(e["body"]["messages"][-1]["content"] == dropped and e["client_closed"]
                           for e in gateway.journal()), what="the dropped stream's upstream closed")
    status = client.responses.retrieve(event.item_id.replace("msg_", "resp_")).status
    assert status in ("cancelled", "in_progress")
    wait_until(lambda: client.responses.retrieve(event.item_id.replace("msg_", "resp_")).status == "cancelled",
               what="the dropped stream cancelled")


def test_a_previous_response_that_is_not_the_newest_makes_a_branch(gateway):
    client = sdk(gateway)
    first = client.responses.create(model=MODEL, input="q1 [[mock tokens=4]]")
    second = client.responses.create(model=MODEL, input="q2 [[mock tokens=4]]", previous_response_id=first.id)
    assert second.conversation.id == first.conversation.id
    branch = client.responses.create(model=MODEL, input="q2 again [[mock tokens=4]]", previous_response_id=first.id)
    body = [e for e in gateway.journal() if e["body"]["messages"][-1]["content"] == "q2 again [[mock tokens=4]]"]
    assert [msg["content"] for msg in body[-1]["body"]["messages"]] == [
        "q1 [[mock tokens=4]]", first.output_text, "q2 again [[mock tokens=4]]"]
    history = gateway.cli_json("history", first.conversation.id)["messages"]
    assert (history[2]["content"], history[2]["sibling_index"], history[2]["sibling_count"]) == (
        "q2 again [[mock tokens=4]]", 1, 2)
    assert history[3]["content"] == branch.output_text
    seeded = client.responses.create(model=MODEL, input=[
        {"role": "user", "content": "earlier [[mock tokens=2]]"}, {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "input_text", "text": "and now [[mock tokens=3]]"}]}])
    body = [e for e in gateway.journal() if e["body"]["messages"][-1]["content"] == "and now [[mock tokens=3]]"]
    assert [msg["content"] for msg in body[-1]["body"]["messages"]] == [
        "earlier [[mock tokens=2]]", "an answer", "and now [[mock tokens=3]]"]
    assert seeded.status == "completed"


def raw(stack, path: str, body: bytes, method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{stack.http_port}{path}", data=body, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {stack.token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            data = resp.read()
            if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
                return resp.status, {"events": data.decode()}
            return resp.status, json.loads(data)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bad_requests_get_openais_error_shape_and_change_nothing(gateway):
    client = sdk(gateway)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_" + "f" * 32)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("not-ours")
    with pytest.raises(openai.BadRequestError, match="cannot be sent"):
        client.responses.create(model=MODEL, input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.invalid/x.png"}]}])
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_" + "e" * 32)
    done = client.responses.create(model=MODEL, input="short [[mock tokens=3]]")
    with pytest.raises(openai.BadRequestError, match="past the response's last event"):
        list(client.responses.retrieve(done.id, stream=True, starting_after=10_000))
    for body, words in ((b"{not json", "not JSON"), (b"[1]", "JSON object"), (b'{"input": "x", "colour": 1}',
                        "unknown parameter"), (b'{"input": "x", "temperature": 9}', "temperature"),
                        (b'{"input": "x", "max_output_tokens": 18446744073709551615}', "max_output_tokens"),
                        (b'{"input": ""}', "empty")):
        status, answer = raw(gateway, "/v1/responses", body)
        assert status == 400 and words in answer["error"]["message"], (body, answer)
        assert set(answer["error"]) == {"message", "type", "param", "code"}
    status, answer = raw(gateway, "/v1/responses", b'{"input": "' + b"x" * (9 * 2**20) + b'"}')
    assert status == 413 and "CHATTER_HTTP_MAX_BODY" in answer["error"]["message"]
    assert gateway.query("select count(*) as n from message")[0]["n"] == 2  # only the one good request's


def test_a_gateway_on_a_network_address_is_refused_without_a_user_who_can_sign_in(fresh_stack):
    stack = fresh_stack()
    argv = [sys.executable, "-m", "clients.gateway"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=30,
                          env=stack.env | {"CHATTER_HTTP": f"0.0.0.0:{free_port()}"})
    assert done.returncode == 1 and b"refusing to listen on 0.0.0.0" in done.stderr
    stack.cli("users", "add", "ada")
    assert stack.cli("users", "revoke", "ada").returncode == 0
    done = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=30,
                          env=stack.env | {"CHATTER_HTTP": f"0.0.0.0:{free_port()}"})
    assert done.returncode == 1 and b"no user could sign in" in done.stderr


@BOTH_DATABASES
def test_users_see_only_their_own_sessions_and_tokens_are_stored_hashed(gateway):
    ada, bob = sdk(gateway), sdk(gateway, token=add_user(gateway, "bob"))
    mine = ada.responses.create(model=MODEL, input="ada's secret [[mock tokens=4]]")
    conversation = ada.conversations.create()
    for attempt in (lambda: bob.responses.retrieve(mine.id), lambda: bob.responses.cancel(mine.id),
                    lambda: bob.responses.delete(mine.id), lambda: bob.conversations.retrieve(conversation.id),
                    lambda: bob.conversations.items.list(conversation.id),
                    lambda: bob.responses.create(model=MODEL, input="x", previous_response_id=mine.id),
                    lambda: bob.responses.create(model=MODEL, input="x", conversation=mine.conversation.id),
                    lambda: bob.responses.retrieve("resp_" + "f" * 32)):
        with pytest.raises(openai.NotFoundError) as refused:  # another user's and no one's look the same
            attempt()
        error = refused.value.body  # the same words as for an id no one has: whose it is is not told
        assert error["code"] == "not_found" and error["message"].startswith(("no response 'resp_",
                                                                            "no conversation '"))
    assert ada.responses.retrieve(mine.id).output_text == mine.output_text
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, token="chk_wrong").responses.retrieve(mine.id)
    bare = urllib.request.Request(f"http://127.0.0.1:{gateway.http_port}/v1/responses/{mine.id}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bare, timeout=10)
    assert refused.value.code == 401 and "Bearer" in json.loads(refused.value.read())["error"]["message"]
    listed = gateway.cli_json("users", "list", "--json")
    assert [(u["name"], u["revoked_at"]) for u in listed] == [("ada", None), ("bob", None)]
    assert gateway.cli("users", "revoke", "bob").returncode == 0
    wait_until(lambda: _refused(bob), what="bob's token refused")  # within the gateway's 5 s memory of it
    rows = gateway.query("select name, token_hash from api_user order by name")
    assert [r["name"] for r in rows] == ["ada", "bob"] and rows[0]["token_hash"] == hashlib.sha256(
        gateway.token.encode()).hexdigest()
    files = [p for p in gateway.workdir.rglob("*") if p.is_file()]  # SQLite's file and its log; every process's log
    assert not [p.name for p in files if gateway.token.encode() in p.read_bytes()]  # no token in any of them
    assert not gateway.query("select name from api_user where token_hash = ?", (gateway.token,))


def _refused(client) -> bool:
    try:
        client.responses.retrieve("resp_" + "f" * 32)
    except openai.AuthenticationError:
        return True
    except openai.NotFoundError:
        return False
    return False


def test_the_docs_resume_example_runs_and_gets_the_whole_reply(gateway):
    readme = (REPO / "docs" / "HTTP.md").read_text()
    code = readme.split("## The HTTP face", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("http://127.0.0.1:8080/v1", f"http://127.0.0.1:{gateway.http_port}/v1")
    code = code.replace('api_key="chk_..."', f'api_key="{gateway.token}"')
    code = code.replace('input="hello"', 'input="hello [[mock tokens=200 tps=200]]"')
    scope: dict = {}
    exec(compile(code, "docs/HTTP.md", "exec"), scope)  # noqa: S102 (the docs' own example, as a reader runs it)
    assert scope["text"] == persisted(gateway, scope["rid"]) and len(scope["text"]) > 20


def test_conversations_are_sessions_and_a_deleted_or_unstored_response_is_gone(gateway):
    client = sdk(gateway)
    conversation = client.conversations.create(items=[{"role": "system", "content": "be terse"},
                                                      {"role": "user", "content": "an earlier question"},
                                                      {"role": "assistant", "content": "an earlier answer"}])
    reply = client.responses.create(model=MODEL, input="and now? [[mock tokens=5]]", conversation=conversation.id)
    sent = [e for e in gateway.journal() if e["body"]["messages"][-1]["content"] == "and now? [[mock tokens=5]]"]
    assert [msg["content"] for msg in sent[-1]["body"]["messages"]] == [
        "be terse", "an earlier question", "an earlier answer", "and now? [[mock tokens=5]]"]
    assert client.conversations.retrieve(conversation.id).id == conversation.id
    assert conversation.id in [row["session_id"] for row in gateway.cli_json("sessions")]  # and the other way round
    items = list(client.conversations.items.list(conversation.id, order="asc", limit=2))  # pages of two, followed
    assert [i.content[0].text for i in items] == ["an earlier question", "an earlier answer",
                                                  "and now? [[mock tokens=5]]", reply.output_text]
    inputs = client.responses.input_items.list(reply.id, order="asc")
    assert [i.content[0].text for i in inputs.data] == [msg["content"] for msg in sent[-1]["body"]["messages"]]
    client.responses.delete(reply.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)
    assert len(gateway.cli_json("history", conversation.id)["messages"]) == 3  # the rest of it stays
    assert client.conversations.delete(conversation.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conversation.id)
    unstored = client.responses.create(model=MODEL, input="forget me [[mock tokens=5]]", store=False)
    assert unstored.status == "completed" and unstored.output_text
    wait_until(lambda: not gateway.query("select id from message where id = ?", (unstored.id[5:],)),
               what="the unstored reply deleted")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_chat_completions_persist_each_call_and_continue_a_session_by_its_header(gateway):
    client = sdk(gateway)
    text = "hello chat [[mock tokens=15]]"
    first = client.chat.completions.with_raw_response.create(model=MODEL, messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": text}])
    session = first.headers["X-Chatter-Session"]
    done = first.parse()
    assert done.choices[0].message.content == reply_text(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}], MODEL, 15)
    assert done.usage.completion_tokens == 15 and done.choices[0].finish_reason == "stop"
    assert gateway.cli_json("history", session)["messages"][1]["content"] == done.choices[0].message.content
    chunks = list(client.chat.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": text}, {"role": "assistant", "content": done.choices[0].message.content},
                  {"role": "user", "content": "more [[mock tokens=20]]"}],
        extra_headers={"X-Chatter-Session": session}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 20
    history = gateway.cli_json("history", session)["messages"]
    assert len(history) == 4 and history[-1]["content"] == streamed  # the same session, one call more
    sent = [e for e in gateway.journal() if e["body"]["messages"][-1]["content"] == "more [[mock tokens=20]]"]
    assert [msg["content"] for msg in sent[-1]["body"]["messages"]] == [
        "be brief", text, done.choices[0].message.content, "more [[mock tokens=20]]"]
    assert [m.id for m in client.models.list()] == [MODEL]
    with pytest.raises(openai.BadRequestError, match="not text"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.invalid/x.png"}}]}])
    dropped = "drop the chat [[mock tokens=2000 tps=50]]"
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": dropped}],
                                            stream=True)
    for c in stream:
        if c.choices and c.choices[0].delta.content:
            break
    stream.close()  # a closed connection cancels the upstream request
    wait_until(lambda: any(e["body"]["messages"][-1]["content"] == dropped and e["client_closed"]
                           for e in gateway.journal()), what="the upstream request closed")


FUZZ_VALUES = [None, True, -1, 2**64, 1.5e308, "", "x" * 300, "\u0000", "resp_" + "\u0000", [], {}, [{}],
               [{"role": "user", "content": None}], {"id": 5}]


def test_every_endpoint_answers_bad_input_in_openais_shape_and_never_falls_over(gateway):
    """Each route, each field of a good request replaced by each odd value (and odd ids and queries): every answer
    is a success or OpenAI's error shape with a 4xx status, never a 500, and the gateway goes on serving."""
    good = {"model": MODEL, "input": "fuzz [[mock tokens=2]]", "stream": False}
    done = sdk(gateway).responses.create(**good)
    answers = []
    for field in [*good, "previous_response_id", "conversation", "temperature", "max_output_tokens", "background"]:
        for value in FUZZ_VALUES:
            answers.append(raw(gateway, "/v1/responses", json.dumps(good | {field: value}).encode()))
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "fuzz [[mock tokens=2]]"}]}
    for field in [*chat, "max_tokens", "n", "stream"]:
        for value in FUZZ_VALUES:
            answers.append(raw(gateway, "/v1/chat/completions", json.dumps(chat | {field: value}).encode()))
    for path in ("/v1/responses/%00", "/v1/responses/resp_" + "z" * 70, f"/v1/responses/{done.id}?stream=true&"
                 "starting_after=abc", f"/v1/responses/{done.id}?stream=true&starting_after=-5",
                 "/v1/conversations/" + "q" * 65, "/v1/conversations/x/items?limit=0",
                 f"/v1/responses/{done.id}/input_items?order=sideways", "/v1/nothing"):
        answers.append(raw(gateway, path, b"", method="GET"))
    for path in ("/v1/conversations", "/v1/responses/resp_x/cancel"):
        answers.append(raw(gateway, path, b"\xff\xfe", method="POST"))
    session = done.conversation.id
    for path in ("/chatter/v1/sessions?limit=0", "/chatter/v1/sessions?before=nan", "/chatter/v1/sessions?before=1e400",
                 "/chatter/v1/sessions?before=1&before_id=" + "z" * 65, "/chatter/v1/search?q=%00",
                 "/chatter/v1/search?q=" + "a" * 2000, "/chatter/v1/search?q=x&session=%00",
                 "/chatter/v1/sessions/%00", f"/chatter/v1/sessions/{session}/messages?limit=101",
                 "/chatter/v1/responses/resp_%00/preview", "/chatter/v1/responses/nope/preview"):
        answers.append(raw(gateway, path, b"", method="GET"))
    for field, value in ((f, v) for f in ("title", "system", "model", "max_input_tokens", "temperature",
                                          "max_tokens", "continue_style") for v in FUZZ_VALUES):
        answers.append(raw(gateway, f"/chatter/v1/sessions/{session}", json.dumps({field: value}).encode(),
                           method="PATCH"))
    for action, body in (("branch", {"message_id": "x", "sibling": 0}), ("edit", {"message_id": "1", "text": "x"})):
        for field in body:
            for value in FUZZ_VALUES:
                answers.append(raw(gateway, f"/chatter/v1/sessions/{session}/{action}",
                                   json.dumps(body | {field: value}).encode()))
    statuses = {status for status, _ in answers}
    assert statuses <= {200, 400, 404, 405} and 400 in statuses
    for status, answer in answers:
        if status != 200:
            assert set(answer["error"]) == {"message", "type", "param", "code"}, answer
    assert sdk(gateway).responses.create(**good).status == "completed"  # still serving
    assert "Traceback" not in (gateway.workdir / "gateway.log").read_text()


def test_a_user_past_their_open_streams_gets_429_and_others_do_not(fresh_stack):
    stack = fresh_stack(CHATTER_HTTP_STREAMS_PER_USER="2")
    stack.start("gateway")
    stack.token = add_user(stack, "ada")
    ada, bob = sdk(stack), sdk(stack, token=add_user(stack, "bob"))
    streams = [ada.responses.create(model=MODEL, input=f"long {i} [[mock tokens=2000 tps=50]]", stream=True)
               for i in range(2)]
    try:
        for stream in streams:
            next(iter(stream))  # each open, its first event read
        with pytest.raises(openai.RateLimitError) as refused:
            ada.responses.create(model=MODEL, input="one more [[mock tokens=3]]")
        assert refused.value.response.headers["Retry-After"] == "1"
        assert bob.responses.create(model=MODEL, input="bob's [[mock tokens=3]]").status == "completed"
        assert not [e for e in stack.journal() if "one more" in json.dumps(e["body"])]  # nothing was started
    finally:
        for stream in streams:
            stream.close()
    wait_until(lambda: _creates(ada), what="ada's places back once her streams closed")


def _creates(client) -> bool:
    try:
        return client.responses.create(model=MODEL, input="again [[mock tokens=3]]").status == "completed"
    except openai.RateLimitError:
        return False


def test_a_coordinator_away_is_503_and_the_gateway_carries_on_when_it_is_back(gateway):
    client = sdk(gateway)
    first = client.responses.create(model=MODEL, input="before [[mock tokens=3]]")  # the token is known now
    gateway.kill("coordinator")
    with pytest.raises(openai.InternalServerError) as away:
        client.responses.retrieve(first.id)
    assert away.value.status_code == 503 and away.value.response.headers["Retry-After"] == "1"
    assert "coordinator is not answering" in away.value.message
    gateway.start("coordinator")
    assert client.responses.retrieve(first.id).output_text == first.output_text  # no restart of the gateway
    assert client.responses.create(model=MODEL, input="after [[mock tokens=3]]").status == "completed"
