"""Continuing a reply, against real processes and the mock in each server's style: ``chatter continue`` after a
length cut, a stop and an interruption; a reply that goes on by itself after its generator is killed or its
upstream fails mid-stream; a server that cannot continue; the continuation's prompt and its idempotence."""
from __future__ import annotations

import json
import os
import subprocess

from services.coordinator.prompt import prompt_hash
from services.mock_llm.script import reply_text
from tests.integration.stack import BOTH_DATABASES, wait_until
from tests.integration.test_sessions import read_until

pytestmark = BOTH_DATABASES

MODEL = "mock-1"


def whole(text: str, tokens: int) -> str:
    return reply_text([{"role": "user", "content": text}], MODEL, tokens)


def continuations(stack) -> list[dict]:
    return [entry for entry in stack.journal() if "continued_from" in entry]


def wait_for_style(stack, style: str, server: str) -> None:
    """The generators tell their server's kind in their heartbeats, after their first /v1/models."""
    def told() -> bool:
        status = json.loads(stack.cli("status", "--json").stdout)
        return status["continue_style"] == style and repr(server) in status["continue_style_why"]
    wait_until(told, what=f"continue style {style} from {server}")


def test_continue_after_a_length_cut_extends_the_same_message_to_the_whole_reply(fresh_stack):
    stack = fresh_stack(CHATTER_CONTINUE_STYLE="vllm")
    text = "count slowly [[mock tokens=36 tps=5]]"
    client = stack.client()
    try:
        session_id = client.new_session()
        client.configure(session_id, params={"max_tokens": 12})
    finally:
        client.close()
    first = stack.cli_json("send", text, "--session", session_id)
    assert first["status"] == "completed" and first["finish_reason"] == "length"
    assert whole(text, 36).startswith(first["content"]) and first["content"] != whole(text, 36)
    # a watcher attached to the continuation sees the one reply growing, from its first character
    second_proc = stack.spawn_cli("continue", session_id, "--json")
    wait_until(lambda: json.loads(stack.cli("status", "--json").stdout)["active"], what="the continuation")
    watch = stack.cli_json("watch", session_id, "--once")
    second = json.loads(second_proc.communicate(timeout=60)[0])
    assert second["message_id"] == watch["message_id"] == first["message_id"]
    assert second["finish_reason"] == "length" and watch["content"] == second["content"]
    assert second["content"].startswith(first["content"]) and len(second["content"]) > len(first["content"])
    third = stack.cli_json("continue", session_id)
    assert third["status"] == "completed" and third["finish_reason"] == "stop"
    assert third["content"] == whole(text, 36)
    assert [seg["from"] for seg in third["segments"]] == [0, len(first["content"]), len(second["content"])]
    assert third["continued"] == 2 and third["tokens"] == sum(seg["tokens"] for seg in third["segments"])
    row = stack.db_message(first["message_id"])
    assert row["content"] == whole(text, 36) and row["status"] == "completed"
    assert len(stack.query("select id from message where role = 'assistant'")) == 1  # one message, grown
    # the request upstream: the reply so far as a trailing assistant message, and vLLM's fields
    body = continuations(stack)[-1]["body"]
    assert body["messages"][-1] == {"role": "assistant", "content": second["content"]}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    history = stack.cli("history", session_id).stdout.decode()
    assert "continued 2×" in history and history.count(whole(text, 36)) == 1
    refused = stack.cli("continue", session_id)
    assert refused.returncode == 1 and b"is completed" in refused.stderr


def test_continue_after_a_stop_goes_on_from_exactly_what_was_kept(fresh_stack):
    stack = fresh_stack(CHATTER_CONTINUE_STYLE="prefix")
    text = "stop me midway [[mock tokens=60 tps=40]]"
    client = stack.client()
    try:
        session_id = client.new_session()
        client.subscribe(session_id)
        sent = client.send(session_id, text, os.urandom(8).hex())
        view = client.follow(session_id, sent.generation_id,
                             interrupt=lambda: "cancel" if stack.durable_text(sent.message_id) else None)
    finally:
        client.close()
    assert view.status == "cancelled" and view.text and whole(text, 60).startswith(view.text)
    out = stack.cli_json("continue", session_id)
    assert out["status"] == "completed" and out["content"] == whole(text, 60)
    assert stack.db_message(sent.message_id)["content"] == whole(text, 60)
    assert stack.cli_json("watch", session_id, "--once")["content"] == whole(text, 60)
    body = continuations(stack)[-1]["body"]
    assert body["messages"][-1] == {"role": "assistant", "content": view.text, "prefix": True}
    # the preview is the request the mock received, and its hash is that request's
    preview = stack.cli_json("preview", sent.message_id)
    params = {k: v for k, v in body.items() if k not in ("messages", "model", "stream", "stream_options")}
    assert preview["messages"] == body["messages"]
    assert prompt_hash(body["messages"], body["model"], params) == preview["prompt_hash"] == out["prompt_hash"]
    assert "[assistant, prefix: true, to be continued]" in stack.cli("preview", sent.message_id).stdout.decode()


def test_continue_after_an_interruption_completes_it_and_one_request_id_makes_one_continuation(fresh_stack):
    stack = fresh_stack(CHATTER_CONTINUE_STYLE="vllm", CHATTER_ADOPT_GRACE_MS="1000")
    text = "interrupt me [[mock tokens=200 tps=40]]"
    client = stack.client()
    try:
        session_id = client.new_session()
        sent = client.send(session_id, text, os.urandom(8).hex())
    finally:
        client.close()
    wait_until(lambda: len(stack.durable_text(sent.message_id)) > 20, what="checkpointed text")
    stack.kill("coordinator")  # both at once: nobody holds the reply any more
    stack.kill("generator")
    stack.start("coordinator", "generator")
    row = stack.wait_db_status(sent.message_id, ("interrupted",))
    assert row["content"] and whole(text, 200).startswith(row["content"])
    client = stack.client()
    try:
        client.subscribe(session_id)
        started = client.continue_reply(session_id, "the-same-id")
        again = client.continue_reply(session_id, "the-same-id")
        assert again.generation_id == started.generation_id
        view = client.follow(session_id, started.generation_id, attach=True)
    finally:
        client.close()
    assert view.status == "completed" and view.text == whole(text, 200)
    assert stack.wait_db_status(sent.message_id, ("completed",))["content"] == whole(text, 200)
    assert stack.cli_json("watch", session_id, "--once")["content"] == whole(text, 200)
    assert len(continuations(stack)) == 1


def test_a_killed_generator_with_a_second_alive_the_reply_completes_exactly(fresh_stack):
    stack = fresh_stack(generators=2, CHATTER_CONTINUE_STYLE="vllm", CHATTER_GENERATOR_DEAD_MS="1500")
    text = "survive a generator [[mock tokens=200 tps=40]]"
    client = stack.client()
    try:
        session_id = client.new_session()
        client.subscribe(session_id)
        sent = client.send(session_id, text, os.urandom(8).hex())
        wait_until(lambda: len(stack.durable_text(sent.message_id)) > 20, what="checkpointed text")
        status = client.status()
        (active,) = status.active
        pid = next(g.pid for g in status.generators if g.generator_id == active.generator_id)
        name = next(key for key, proc_pid in stack.pids().items() if proc_pid == pid)
        stack.kill(name)
        view = client.follow(session_id, sent.generation_id, attach=True)
    finally:
        client.close()
    assert view.status == "completed" and view.text == whole(text, 200)  # no gap, nothing twice
    stats = view.final["stats"]
    assert stats["continued"] == 1 and "generator lost" in stats["continued_after"][0]
    row = stack.wait_db_status(sent.message_id, ("completed",))
    stored = json.loads(row["stats"]) if isinstance(row["stats"], str) else row["stats"]
    assert row["content"] == whole(text, 200) and stored["continued"] == 1


def test_upstream_faults_mid_stream_are_continued_in_each_servers_style(fresh_stack):
    """A disconnect after 20 chunks and a stream cut without a finish reason, the first request of each turn:
    vLLM's style, and llama-server's prefill, whose reply repeats the prefill first (stripped once)."""
    for server, style in (("vllm", "vllm"), ("llamacpp", "prefill")):
        stack = fresh_stack(CHATTER_MOCK_SERVER=server)
        wait_for_style(stack, style, server)
        texts = [f"cut {server} [[mock tokens=60 drop_after=20 fault_times=1]]",
                 f"truncated {server} [[mock tokens=60 no_finish=1 fault_times=1]]"]
        outs = stack.send_all(texts)
        for text, out in zip(texts, outs):
            assert out["status"] == "completed" and out["content"] == whole(text, 60), (server, out)
            assert out["continued"] == 1, out
            assert stack.db_message(out["message_id"])["content"] == whole(text, 60)
        journal = continuations(stack)
        assert len(journal) == 2
        if server == "vllm":
            assert all(entry["body"]["continue_final_message"] is True for entry in journal)
        else:
            assert all("continue_final_message" not in entry["body"] for entry in journal)


def test_a_server_that_cannot_continue_refuses_and_a_fault_still_ends_as_error(fresh_stack):
    stack = fresh_stack(CHATTER_MOCK_SERVER="openai")
    wait_for_style(stack, "none", "openai")
    status = stack.cli("status").stdout.decode()
    assert "continue style: none (auto: the server says it is 'openai' (/v1/models owned_by))" in status
    text = "cut [[mock tokens=60 drop_after=20]]"
    out = stack.cli_json("send", text)
    assert out["status"] == "error" and out["continued"] == 0
    assert out["content"] and whole(text, 60).startswith(out["content"])
    refused = stack.cli("continue", out["session_id"])
    assert refused.returncode == 1 and b"CHATTER_CONTINUE_STYLE" in refused.stderr and not refused.stdout
    assert not continuations(stack)


def test_a_style_the_server_does_not_read_answers_anew_which_is_why_continuing_is_never_faked(fresh_stack):
    """The openai mock treats the trailing assistant message as a finished turn, as OpenAI does: forced to
    prefill, the "continuation" is a new answer glued on, not the reply. So under ``none`` nothing is tried."""
    stack = fresh_stack(CHATTER_MOCK_SERVER="openai", CHATTER_CONTINUE_STYLE="prefill")
    text = "glued [[mock tokens=40 drop_after=10 fault_times=1]]"
    out = stack.cli_json("send", text)
    assert out["status"] == "completed" and out["continued"] == 1
    assert out["content"] != whole(text, 40) and out["content"].startswith(whole(text, 40)[:5])


def test_chat_continue_grows_the_last_reply_to_the_whole_reply(fresh_stack):
    stack = fresh_stack()
    text = "in chat [[mock tokens=30]]"
    chat = subprocess.Popen([*stack.cli_argv(), "chat"], env=stack.env, cwd=stack.cwd, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, prompt = b"", "› ".encode()
        for i, line in enumerate(("/config max_tokens=12 continue_style=vllm", text, "/continue", "/continue")):
            chat.stdin.write(f"{line}\n".encode())  # one at a time: a command typed mid-reply would detach
            chat.stdin.flush()
            while out.count(prompt) < i + 2:  # the next prompt: the line's reply has ended, durable
                out += read_until(chat, prompt)
        assert whole(text, 30).encode() in out  # the third segment shows the reply whole
        chat.stdin.close()
        chat.wait(timeout=20)
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.wait()
    assert chat.returncode == 0 and b"continue style vllm" in out + chat.stderr.read()
    sessions = stack.cli_json("sessions")
    history = stack.cli_json("history", sessions[0]["session_id"] if isinstance(sessions, list)
                             else sessions["sessions"][0]["session_id"])["messages"]
    assert [(h["role"], h["status"]) for h in history] == [("user", "completed"), ("assistant", "completed")]
    assert history[1]["content"] == whole(text, 30) and history[1]["stats"]["continued"] == 2
