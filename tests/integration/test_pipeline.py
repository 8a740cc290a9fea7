"""One generation end to end through real processes, real sockets, a real database (SQLite and PostgreSQL)
and the mock LLM."""
from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import time

import msgpack
import zmq

from protocol import codec, messages as m
from services.coordinator.prompt import prompt_hash
from services.mock_llm.script import reply_text, reply_tokens
from tests.integration.stack import BOTH_DATABASES

MODEL = "mock-1"

pytestmark = BOTH_DATABASES  # the whole pipeline, on SQLite and on a real PostgreSQL server


def expected(text: str, tokens: int) -> str:
    return reply_text([{"role": "user", "content": text}], MODEL, tokens)


def journal_for(stack, needle: str) -> list[dict]:
    return [e for e in stack.journal() if needle in json.dumps(e["body"], ensure_ascii=False)]


def test_send_text_equals_mock_equals_database(stack):
    text = "tell me about actors [[mock tokens=60]]"
    out = stack.cli_json("send", text)
    assert out["status"] == "completed", out
    assert out["content"] == expected(text, 60)
    row = stack.db_message(out["message_id"])
    assert row["content"] == out["content"] and row["status"] == "completed"
    assert row["length"] == len(out["content"])
    assert row["content_hash"] == hashlib.sha256(out["content"].encode()).hexdigest()
    assert out["tokens"] == 60 and out["tokens_source"] == "server"  # usage came from the mock
    assert out["ttft_ms"] > 0 and out["duration_ms"] > 0 and out["tok_per_s"] > 0
    stats = json.loads(row["stats"])
    assert stats["ttft_ms"] == out["ttft_ms"] and stats["queue_wait_ms"] is not None


def test_send_streams_to_stdout_and_stats_to_stderr(stack):
    text = "stream it [[mock tokens=25]]"
    done = stack.cli("send", text)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == expected(text, 25) + "\n"
    assert b"25 tokens (server)" in done.stderr and b"TTFT" in done.stderr


def test_cancel_mid_stream_keeps_exactly_what_the_client_printed(stack):
    text = "a long story please [[mock tokens=400 tps=40]]"
    proc = stack.spawn_cli("send", text)
    printed = b""
    deadline = time.monotonic() + 20
    while len(printed) < 40 and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            printed += os.read(proc.stdout.fileno(), 4096)
    assert len(printed) >= 40, "the reply never started streaming"
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=20)
    printed += rest
    assert proc.returncode == 130, err
    shown = printed.decode()
    assert shown.endswith("\n")
    shown = shown[:-1]  # the line end the CLI adds after the reply
    assert b"cancelled" in err
    assert shown and expected(text, 400).startswith(shown)
    entry = journal_for(stack, "a long story please")[-1]
    assert entry["client_closed"] and not entry["completed"]
    assert entry["chunks_sent"] < 400  # the upstream stream really stopped, long before its end
    rows = [r for r in _assistant_rows(stack) if r["status"] == "cancelled"]
    assert rows and rows[-1]["content"] == shown  # nothing rendered after the cancel, nothing lost before it


def _assistant_rows(stack) -> list[dict]:
    return stack.query("select * from message where role = 'assistant' order by created_at")


def test_preview_and_hash_equal_what_the_mock_received(stack):
    out = stack.cli_json("send", "preview me [[mock tokens=5]]")
    first = stack.cli_json("send", "and again [[mock tokens=5]]", "--session", out["session_id"])
    preview = stack.cli_json("preview", first["message_id"])
    body = journal_for(stack, "and again")[-1]["body"]
    assert body["messages"] == preview["messages"]
    assert [msg["role"] for msg in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == out["content"]
    params = {k: v for k, v in body.items() if k not in ("messages", "model", "stream", "stream_options")}
    assert prompt_hash(body["messages"], body["model"], params) == preview["prompt_hash"] == first["prompt_hash"]
    text = stack.cli("preview", first["message_id"]).stdout.decode()
    for msg in body["messages"]:
        assert f"[{msg['role']}]\n{msg['content']}\n" in text


def test_system_prompt_reaches_the_model(stack):
    out = stack.cli_json("send", "who are you [[mock tokens=3]]", "--system", "You are a pirate.")
    body = journal_for(stack, "who are you")[-1]["body"]
    assert body["messages"][0] == {"role": "system", "content": "You are a pirate."}
    assert out["status"] == "completed"


def test_503_before_first_token_is_retried_then_succeeds(stack):
    text = "flaky upstream [[mock tokens=10 fail_status=503 fail_times=2 retry_after=0.1]]"
    out = stack.cli_json("send", text)
    assert out["status"] == "completed", out
    assert out["content"] == expected(text, 10)
    attempts = journal_for(stack, "flaky upstream")
    assert [a["status"] for a in attempts] == [503, 503, 200]
    assert attempts[1]["received_at"] - attempts[0]["received_at"] >= 0.1  # Retry-After was honoured


def test_persistent_error_ends_as_error_with_a_readable_reason(stack):
    out = stack.cli_json("send", "always down [[mock fail_status=503 retry_after=0.3]]")
    assert out["status"] == "error"
    assert "503" in out["error"] and "attempts" in out["error"]
    assert len(journal_for(stack, "always down")) >= 2
    out = stack.cli_json("send", "bad request [[mock fail_status=400]]")
    assert out["status"] == "error" and "400" in out["error"]
    assert len(journal_for(stack, "bad request")) == 1  # a 400 is not retried


def test_disconnect_mid_stream_is_error_and_keeps_the_partial_text(stack):
    text = "drop me [[mock tokens=50 drop_after=7]]"
    out = stack.cli_json("send", text)
    assert out["status"] == "error" and "disconnected" in out["error"]
    assert out["content"] == "".join(reply_tokens([{"role": "user", "content": text}], MODEL, 50)[:7])
    assert stack.db_message(out["message_id"])["content"] == out["content"]


def test_stream_without_finish_reason_is_error_never_completed(stack):
    text = "no ending [[mock tokens=12 no_finish]]"
    out = stack.cli_json("send", text)
    assert out["status"] == "error" and "truncated" in out["error"]
    assert out["content"] == expected(text, 12)


def test_malformed_chunk_is_error_with_partial_text(stack):
    text = "garbled [[mock tokens=20 malformed_after=4]]"
    out = stack.cli_json("send", text)
    assert out["status"] == "error" and "malformed" in out["error"]
    assert out["content"] == "".join(reply_tokens([{"role": "user", "content": text}], MODEL, 20)[:4])


def test_bad_input_gets_a_clear_error_and_crashes_nothing(stack):
    done = stack.cli("send", "hi", "--session", "no-such-session")
    assert done.returncode == 1 and b"unknown session" in done.stderr
    done = stack.cli("send", "x" * 100_001)
    assert done.returncode == 1 and b"limit" in done.stderr
    ctx, sock = stack.raw_socket(zmq.DEALER, "rpc")
    try:
        sock.send(b"\xc1 not msgpack")
        sock.send(msgpack.packb([codec.PROTOCOL_VERSION, [999, 7]]))  # unknown type, readable request id
        sock.send(msgpack.packb([codec.PROTOCOL_VERSION, [m.Send.TYPE, 8, 42]]))  # ill-typed session id
        replies = []
        while sock.poll(3000) and len(replies) < 2:
            replies.append(codec.decode(sock.recv(), (m.Reply,)))
        assert [(r.req_id, r.ok) for r in replies] == [(7, False), (8, False)]
        assert "unknown_type" in replies[0].error and "bad_field" in replies[1].error
    finally:
        sock.close()
        ctx.term()
    ctx, sock = stack.raw_socket(zmq.PUSH, "gen-events")
    try:
        sock.send(b"garbage")
        sock.send(m.GenDelta("no-such-generation", 1, "late", 1, 0.0).encode())
    finally:
        sock.close()
        ctx.term()
    time.sleep(0.3)
    status = stack.cli_json("status")
    assert status["counters"]["bad_frames_dropped"] >= 4
    ctx, sock = stack.raw_socket(zmq.PUSH, "persist-acks")
    try:  # a bundle with two bad items (not msgpack, trailing bytes) and a good one: each bad one counted alone
        sock.send(m.Bundle([b"\xc1junk", m.OrphansInterrupted(1, "s").encode() + b"x",
                            m.PersistAck("no-such-message", 3, False).encode()]).encode())
    finally:
        sock.close()
        ctx.term()
    time.sleep(0.3)
    bad_before, status = status["counters"]["bad_frames_dropped"], stack.cli_json("status")
    assert status["counters"]["bad_frames_dropped"] - bad_before == 2
    assert status["counters"]["late_deltas_dropped"] >= 1
    assert stack.cli_json("send", "still alive [[mock tokens=3]]")["status"] == "completed"


def test_history_shows_the_persisted_messages(stack):
    first = stack.cli_json("send", "first turn [[mock tokens=4]]")
    second = stack.cli_json("send", "second turn [[mock tokens=6]]", "--session", first["session_id"])
    history = stack.cli_json("history", first["session_id"])
    assert [(h["role"], h["status"]) for h in history["messages"]] == [
        ("user", "completed"), ("assistant", "completed"), ("user", "completed"), ("assistant", "completed")]
    assert history["messages"][3]["content"] == second["content"]
    for h in history["messages"]:
        assert stack.db_message(h["message_id"])["content"] == h["content"]
    assert history["title"] == "first turn [[mock tokens=4]]"


def settled_persister_totals(stack) -> dict:
    """The persister's totals once they stop moving: they are sent a few times a second, after commits."""
    totals = stack.cli_json("status").get("persister")
    for _ in range(25):
        time.sleep(0.4)
        again = stack.cli_json("status").get("persister")
        if again == totals:
            break
        totals = again
    return totals or {"commits": 0, "reply_text_bytes": 0}


def test_status_reports_the_persisters_totals(stack):
    before = settled_persister_totals(stack)  # earlier tests' last totals may still be on their way
    out = stack.cli_json("send", "count my bytes [[mock tokens=12]]")
    written = 2 * len(out["content"].encode())  # once as checkpoints, once in the final row
    deadline = time.monotonic() + 5  # the persister sends its totals a few times a second
    while time.monotonic() < deadline:
        now = stack.cli_json("status")["persister"]
        if now.get("reply_text_bytes", 0) - before["reply_text_bytes"] >= written:
            break
        time.sleep(0.1)
    assert now["reply_text_bytes"] - before["reply_text_bytes"] == written  # nothing else ran in between
    assert now["commits"] > before["commits"] and now["failed_batches"] == 0 and now["pid"] > 0
    text = stack.cli("status").stdout.decode()
    assert f"{now['reply_text_bytes']} reply text bytes written" in text


def test_a_prompt_is_stored_once_by_reference_and_preview_rebuilds_it_after_a_restart(fresh_stack):
    """The reply's row holds no copy of its prompt, only its reference; a restarted coordinator reads the session
    back and builds the prompt again from its rows: the same messages as the mock received, the hash checked."""
    stack = fresh_stack()
    out = stack.cli_json("send", "first, with a system prompt [[mock tokens=8]]", "--system", "be brief")
    second = stack.cli_json("send", "second [[mock tokens=8]]", "--session", out["session_id"])
    row = stack.db_message(second["message_id"])
    assert row["prompt_messages"] is None and row["preview"] is None and row["dropped_message_ids"] is None
    ref = json.loads(row["prompt_ref"])
    assert ref["system"] == "be brief" and ref["dropped"] == 0 and len(row["prompt_ref"]) < 200
    stack.kill("coordinator")
    stack.start("coordinator")
    preview = stack.cli_json("preview", second["message_id"])
    body = journal_for(stack, "second [[mock")[-1]["body"]
    assert preview["messages"] == body["messages"] and preview["exact"] is True and preview["problem"] is None
    assert [msg["role"] for msg in body["messages"]] == ["system", "user", "assistant", "user"]
    assert preview["prompt_hash"] == second["prompt_hash"]
    text = stack.cli("preview", second["message_id"]).stdout.decode()
    assert "[system]\nbe brief\n" in text and f"[assistant]\n{out['content']}\n" in text


def test_tool_call_deltas_are_kept_shown_and_sent_back_in_the_next_prompt(stack):
    """A model that calls a function streams tool_calls deltas: the reply keeps the call's id, name and whole
    arguments (send --json, watch, history, the database), says finish_reason tool_calls, and the next prompt
    carries the call back as OpenAI's API takes it; preview rebuilds that prompt exactly."""
    from services.mock_llm.script import tool_call_arguments
    text = "what is the weather? [[mock tokens=4 tool_call=get_weather]]"
    out = stack.cli_json("send", text)
    arguments = tool_call_arguments([{"role": "user", "content": text}], "mock-1")
    assert out["status"] == "completed" and out["finish_reason"] == "tool_calls"
    (call,) = out["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": arguments} and len(arguments) > 20
    watched = stack.cli_json("watch", out["session_id"], "--once")
    assert watched["tool_calls"] == out["tool_calls"]
    history = stack.cli_json("history", out["session_id"])
    assert history["messages"][1]["tool_calls"] == out["tool_calls"]
    assert "→ get_weather(" + arguments + ")" in stack.cli("history", out["session_id"]).stdout.decode()
    stored = stack.db_message(out["message_id"])["tool_calls"]
    assert (json.loads(stored) if isinstance(stored, str) else stored) == out["tool_calls"]
    second = stack.cli_json("send", "and tomorrow? [[mock tokens=5]]", "--session", out["session_id"])
    body = journal_for(stack, "and tomorrow?")[-1]["body"]
    assert body["messages"][1] == {"role": "assistant", "content": out["content"], "tool_calls": out["tool_calls"]}
    preview = stack.cli_json("preview", second["message_id"])
    assert preview["messages"] == body["messages"] and preview["exact"] is True
