"""Chatter's own endpoints (/chatter/v1, docs/HTTP.md) through the real ``openai`` SDK's plain HTTP methods against
real processes: a user's sessions listed, paged, searched, renamed, set up and deleted, never another user's;
Regenerate, Continue and Edit started and followed like any response; the < 2/3 > arrows; and a reply's prompt
exactly as the mock received it."""
from __future__ import annotations

import openai
import pytest

from tests.integration.stack import BOTH_DATABASES, wait_until
from tests.integration.test_gateway import MODEL, add_user, gateway, joined, persisted, sdk  # noqa: F401

BASE = "/chatter/v1"


def own(stack, token: str | None = None) -> openai.OpenAI:
    """The SDK pointed at the gateway's root, for Chatter's own paths (``client.get(path, cast_to=object)``)."""
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.http_port}", api_key=token or stack.token,
                         max_retries=0)


def listed(client, limit: int = 20) -> list[dict]:
    """Every session of the list, page by page by its ``next``."""
    rows, query = [], {"limit": limit}
    while True:
        got = client.get(f"{BASE}/sessions", cast_to=object, options={"params": query})
        rows += got["data"]
        if not got["has_more"]:
            return rows
        query = {"limit": limit, **got["next"]}


def found(client, words: str) -> list[dict]:
    return client.get(f"{BASE}/search", cast_to=object, options={"params": {"q": words}})["data"]


@BOTH_DATABASES
def test_a_users_sessions_are_listed_searched_renamed_set_up_and_deleted_and_no_one_elses(gateway):
    ada, bob = sdk(gateway), sdk(gateway, token=add_user(gateway, "bob"))
    ada_own, bob_own = own(gateway), own(gateway, bob.api_key)
    mine = [ada.responses.create(model=MODEL, input=f"zebra number {i} [[mock tokens=3]]") for i in range(3)]
    theirs = bob.responses.create(model=MODEL, input="zebra of bob's [[mock tokens=3]]")
    sessions = [r.conversation.id for r in mine]
    assert [row["id"] for row in listed(ada_own, limit=2)] == sessions[::-1]  # newest first, paged by next
    assert [row["id"] for row in listed(bob_own)] == [theirs.conversation.id]
    assert listed(ada_own)[0]["title"] == "zebra number 2 [[mock tokens=3]]"

    hits = found(ada_own, "zebra")
    assert sorted(hit["session_id"] for hit in hits) == sorted(sessions)  # bob's zebra is not ada's to find
    assert all(any(part["match"] and part["text"].lower() == "zebra" for part in hit["snippet"]) for hit in hits)
    assert [hit["session_id"] for hit in found(bob_own, "zebra")] == [theirs.conversation.id]

    target = sessions[0]
    changed = ada_own.patch(f"{BASE}/sessions/{target}", cast_to=object,
                            body={"title": "Zoo notes", "system": "be terse", "temperature": 0.25})
    assert (changed["title"], changed["system"], changed["temperature"]) == ("Zoo notes", "be terse", 0.25)
    assert changed["context"]["history_tokens"] > 0 and changed["max_tokens"] is None
    again = ada_own.get(f"{BASE}/sessions/{target}", cast_to=object)
    assert again == changed  # the session's values now, read back
    ada.responses.create(model=MODEL, input="after the change [[mock tokens=2]]", conversation=target)
    sent = [e for e in gateway.journal() if e["body"]["messages"][-1]["content"].startswith("after the change")][-1]
    assert sent["body"]["temperature"] == 0.25 and sent["body"]["messages"][0] == {"role": "system",
                                                                                   "content": "be terse"}
    assert "Zoo notes" in [row["title"] for row in listed(ada_own)]

    for attempt in (lambda: bob_own.get(f"{BASE}/sessions/{target}", cast_to=object),
                    lambda: bob_own.patch(f"{BASE}/sessions/{target}", cast_to=object, body={"title": "mine"}),
                    lambda: bob_own.delete(f"{BASE}/sessions/{target}", cast_to=object),
                    lambda: bob_own.get(f"{BASE}/sessions/{target}/messages", cast_to=object),
                    lambda: bob_own.post(f"{BASE}/sessions/{target}/regenerate", cast_to=object),
                    lambda: bob_own.get(f"{BASE}/responses/{mine[0].id}/preview", cast_to=object),
                    lambda: bob_own.get(f"{BASE}/search", cast_to=object,
                                        options={"params": {"q": "zebra", "session": target}})):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert ada_own.get(f"{BASE}/sessions/{target}", cast_to=object)["title"] == "Zoo notes"  # bob changed nothing

    assert ada_own.delete(f"{BASE}/sessions/{target}", cast_to=object)["deleted"] is True
    assert target not in [row["id"] for row in listed(ada_own)]
    assert target not in [hit["session_id"] for hit in found(ada_own, "zebra")]
    assert not gateway.query("select id from message where session_id = ?", (target,))
    with pytest.raises(openai.NotFoundError):
        ada_own.get(f"{BASE}/sessions/{target}", cast_to=object)
    for bad in ({"q": ""}, {"q": "x", "limit": "0"}, {"q": "x", "limit": "many"}):
        with pytest.raises(openai.BadRequestError):
            ada_own.get(f"{BASE}/search", cast_to=object, options={"params": bad})
    for bad in ({"colour": "red"}, {"title": 5}, {"max_input_tokens": -1}, {"max_input_tokens": 2**63},
                {"temperature": 9}):
        with pytest.raises(openai.BadRequestError):
            ada_own.patch(f"{BASE}/sessions/{sessions[1]}", cast_to=object, body=bad)


def follow(client, response: dict) -> str:
    """A started reply (Regenerate, Continue, Edit) streamed to its end, as the page follows one."""
    return joined(client.responses.retrieve(response["id"], stream=True))


def messages(client, session_id: str) -> list[dict]:
    return client.get(f"{BASE}/sessions/{session_id}/messages", cast_to=object,
                      options={"params": {"limit": 100}})["data"]


def test_regenerate_continue_edit_the_arrows_and_the_prompt_as_the_model_received_it(gateway):
    client, mine = sdk(gateway), own(gateway)
    first = client.responses.create(model=MODEL, input="q1 [[mock tokens=5]]")
    session = first.conversation.id
    regenerated = mine.post(f"{BASE}/sessions/{session}/regenerate", cast_to=object)
    assert regenerated["id"] != first.id and regenerated["background"] is True
    assert follow(client, regenerated) == persisted(gateway, regenerated["id"])
    shown = messages(mine, session)
    assert [(m["role"], m["sibling_index"], m["sibling_count"]) for m in shown] == [("user", 0, 1),
                                                                                 ("assistant", 1, 2)]
    assert shown[1]["response_id"] == regenerated["id"] and shown[1]["stats"]["tokens"] == 5
    back = mine.post(f"{BASE}/sessions/{session}/branch", cast_to=object,
                     body={"message_id": shown[1]["id"], "sibling": 0})
    assert back["leaf_id"] == first.id.removeprefix("resp_")
    assert [m["content"] for m in messages(mine, session)] == ["q1 [[mock tokens=5]]", first.output_text]

    edited = mine.post(f"{BASE}/sessions/{session}/edit", cast_to=object,
                       body={"message_id": shown[0]["id"], "text": "q1, again [[mock tokens=4]]"})
    follow(client, edited)
    shown = messages(mine, session)
    assert [(m["content"], m["sibling_index"], m["sibling_count"]) for m in shown][0] == (
        "q1, again [[mock tokens=4]]", 1, 2)
    assert shown[1]["content"] == persisted(gateway, edited["id"])

    long = client.responses.create(model=MODEL, input="go on [[mock tokens=400 tps=40]]", conversation=session,
                                   background=True)
    wait_until(lambda: len(gateway.db_message(long.id.removeprefix("resp_")).get("content") or "") > 40
               or len(client.responses.retrieve(long.id).output_text) > 40, what="some text")
    cut = client.responses.cancel(long.id).output_text
    assert mine.patch(f"{BASE}/sessions/{session}", cast_to=object,
                      body={"continue_style": "vllm"})["continue_style"] == "vllm"  # the mock continues as vLLM
    continued = mine.post(f"{BASE}/sessions/{session}/continue", cast_to=object)
    assert continued["id"] == long.id  # the same reply goes on
    whole = follow(client, continued)
    assert whole.startswith(cut) and len(whole) > len(cut) and whole == persisted(gateway, long.id)

    preview = mine.get(f"{BASE}/responses/{long.id}/preview", cast_to=object)
    received = [e for e in gateway.journal()
                if any(str(msg["content"]).startswith("go on") for msg in e["body"]["messages"])][-1]
    assert preview["messages"] == received["body"]["messages"]  # byte for byte what the model received (the
    assert preview["messages"][-1]["role"] == "assistant"  # continuation's prompt: it ends with the cut reply)
    assert preview["prompt_hash"] == gateway.db_message(long.id.removeprefix("resp_"))["prompt_hash"]
    assert preview["exact"] is True
    for bad in ({"message_id": shown[0]["id"], "sibling": 7}, {"message_id": "nope", "sibling": 0},
                {"message_id": shown[0]["id"], "sibling": -1}, {"message_id": 3, "sibling": 0}):
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)):
            mine.post(f"{BASE}/sessions/{session}/branch", cast_to=object, body=bad)
    with pytest.raises(openai.BadRequestError):
        mine.post(f"{BASE}/sessions/{session}/edit", cast_to=object, body={"message_id": shown[0]["id"], "text": ""})
