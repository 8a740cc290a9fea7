"""Crashes and modes that need a stack of their own: kill -9, restarts, non-streaming, SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime

import pytest

from services.mock_llm.script import reply_text
from tests.integration.stack import BOTH_DATABASES, free_port, wait_until

pytestmark = BOTH_DATABASES

MODEL = "mock-1"


def expected(text: str, tokens: int) -> str:
    return reply_text([{"role": "user", "content": text}], MODEL, tokens)


def start_send(stack, text: str):
    """Start a send whose reply streams slowly; returns its session and generation once text is durable."""
    client = stack.client()
    session_id = client.new_session()
    client.subscribe(session_id)
    sent = client.send(session_id, text, client_request_id=os.urandom(8).hex())
    return client, session_id, sent


def log_time(stack, name: str, event: str) -> float:
    """The wall-clock time of a process's first log line with ``event``."""
    for line in stack.log(name).splitlines():
        if f"event='{event}'" in line:
            stamp = line.split("timestamp='", 1)[1].split("'", 1)[0]
            return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"{name} never logged {event}")


def wait_for_chunks(stack, message_id: str, min_chars: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(len(e[3]) for e in stack.log_entries(message_id)) >= min_chars:
            return
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {min_chars} characters were checkpointed")


def test_generator_killed_mid_stream_ends_as_error_keeping_partial_text(fresh_stack):
    stack = fresh_stack(CHATTER_GENERATOR_DEAD_MS="1500")
    text = "slow and doomed [[mock tokens=400 tps=40]]"
    client, session_id, sent = start_send(stack, text)
    try:
        wait_for_chunks(stack, sent.message_id, 20)
        stack.kill("generator")  # SIGKILL: no goodbye, no cancel
        view = client.follow(session_id, sent.generation_id)
    finally:
        client.close()
    # "generator lost" comes only from the missed-heartbeat check (1.5 s here); without it the stream
    # would end much later as "stalled" (30 s watchdog)
    assert view.status == "error" and "generator lost" in view.final["error"]
    assert view.text and expected(text, 400).startswith(view.text)
    row = stack.wait_db_status(sent.message_id, ("error",))
    assert row["content"] == view.text and "generator lost" in row["error"]


def test_persister_killed_mid_stream_loses_nothing(fresh_stack):
    stack = fresh_stack(CHATTER_PERSIST_RESEND_MS="300")
    text = "survive the persister [[mock tokens=120 tps=60]]"
    client, session_id, sent = start_send(stack, text)
    try:
        wait_for_chunks(stack, sent.message_id, 10)
        stack.kill("persister")
        time.sleep(0.5)  # appends and the finalize pile up unacked meanwhile
        stack.start("persister")
        view = client.follow(session_id, sent.generation_id)
    finally:
        client.close()
    assert view.status == "completed"
    assert view.text == expected(text, 120)
    row = stack.wait_db_status(sent.message_id, ("completed",))
    assert row["content"] == view.text


def test_after_a_crash_orphans_become_interrupted_with_their_text(fresh_stack):
    stack = fresh_stack()
    text = "orphan me [[mock tokens=400 tps=40]]"
    client, session_id, sent = start_send(stack, text)
    try:
        wait_for_chunks(stack, sent.message_id, 20)
        stack.kill("generator")  # the stream itself is gone: nobody can announce it to a new coordinator
        stack.kill("coordinator")
        stack.kill("persister")
        durable = stack.durable_text(sent.message_id)
        stack.start("persister")
        time.sleep(1.0)
        assert stack.db_message(sent.message_id)["status"] == "streaming"  # the persister alone cannot know
        stack.start("coordinator")  # a new coordinator knows no live generation
    finally:
        client.close()
    row = stack.wait_db_status(sent.message_id, ("interrupted",))
    assert row["content"] == durable and len(durable) >= 20
    assert expected(text, 400).startswith(durable)


def test_the_answer_to_a_dead_coordinators_sweep_does_not_end_the_next_ones(fresh_stack):
    """The first coordinator sweeps (its reply still live) while the persister cannot answer, and dies with its
    generator; the persister's socket hands the late answer to the new coordinator inside its adoption window.
    That answer is not the new coordinator's sweep: the reply, whose generation died, still ends interrupted."""
    grace_s = 8.0
    stack = fresh_stack(CHATTER_ADOPT_GRACE_MS=str(int(grace_s * 1000)))
    # the first coordinator's window closes no sooner than its start (its log's clock) and the grace
    ready_at = log_time(stack, "coordinator", "coordinator_ready")
    text = "sweep me [[mock tokens=400 tps=40]]"
    client, session_id, sent = start_send(stack, text)
    client.close()
    wait_for_chunks(stack, sent.message_id, 20)
    persister = stack.procs["persister"]
    persister.send_signal(signal.SIGSTOP)
    try:
        # an order, not a speed: the reply is live and the persister stopped before the first sweep can go out
        assert time.time() < ready_at + grace_s, "the first sweep may have been answered already: nothing tested"
        time.sleep(max(0.0, ready_at + grace_s + 1.0 - time.time()))  # the first sweep went out, and waits unread
        stack.kill("coordinator")
        stack.kill("generator")
        stack.env["CHATTER_ADOPT_GRACE_MS"] = "3000"
        stack.start("coordinator")
    finally:
        persister.send_signal(signal.SIGCONT)
    row = stack.wait_db_status(sent.message_id, ("interrupted",))
    assert row["error"] == "interrupted: coordinator restarted"
    assert row["content"] and expected(text, 400).startswith(row["content"])


def test_a_new_session_and_its_system_prompt_outlive_a_coordinator_killed_before_any_message(fresh_stack):
    """``chatter new`` answered is a session that exists: SIGKILL of the coordinator before its first message
    loses neither the session nor the system prompt set on it since, and the first reply is prompted with it."""
    stack = fresh_stack()
    client = stack.client()
    try:
        session_id = client.new_session(max_input_tokens=5000)
        client.configure(session_id, system="answer like a pirate")
    finally:
        client.close()
    wait_until(lambda: stack.query("select system from session where id = ?", (session_id,)) == [
        {"system": "answer like a pirate"}], what="the saved session")
    stack.kill("coordinator")
    stack.start("coordinator")
    client = stack.client()
    try:
        sent = client.send(session_id, "ahoy [[mock tokens=5]]", os.urandom(8).hex())
        view = client.follow(session_id, sent.generation_id)
        settings = client.configure(session_id)
    finally:
        client.close()
    assert view.status == "completed"
    (entry,) = [e for e in stack.journal() if "ahoy" in json.dumps(e["body"])]
    assert entry["body"]["messages"][0] == {"role": "system", "content": "answer like a pirate"}
    assert settings.max_input_tokens == 5000


def test_non_streaming_mode_gives_the_same_content(fresh_stack):
    stack = fresh_stack(CHATTER_STREAM="false")
    text = "whole please [[mock tokens=30]]"
    out = stack.cli_json("send", text)
    assert out["status"] == "completed", out
    assert out["content"] == expected(text, 30)
    assert stack.db_message(out["message_id"])["content"] == out["content"]
    assert out["tokens"] == 30 and out["tokens_source"] == "server"
    assert stack.journal()[-1]["stream"] is False
    # the reply came whole: no speed and no first token were measured, so none is reported
    assert out["tok_per_s"] is None and out["ttft_ms"] is None and out["duration_ms"] > 0
    assert stack.db_message(out["message_id"])["stats"].count('"streamed": false') == 1


def test_sigterm_stops_every_process_cleanly_leaving_no_socket(fresh_stack):
    stack = fresh_stack()
    assert stack.cli_json("send", "quick [[mock tokens=3]]")["status"] == "completed"
    pids = [p.pid for p in stack.procs.values()]
    codes = stack.stop()
    assert codes == {name: 0 for name in codes}, codes
    assert list(stack.run_dir.iterdir()) == []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, pid


def test_sigterm_mid_stream_closes_the_upstream_request(fresh_stack):
    stack = fresh_stack()
    client, session_id, sent = start_send(stack, "long and interrupted [[mock tokens=400 tps=40]]")
    try:
        wait_for_chunks(stack, sent.message_id, 5)
        stack.kill("generator", signal.SIGTERM)
    finally:
        client.close()
    entry = stack.journal()[-1]
    assert entry["client_closed"] and not entry["completed"]


def test_every_channel_can_run_over_tcp_on_loopback(fresh_stack):
    names = ("RPC", "STREAM", "JOBS", "GEN_EVENTS", "CONTROL", "PERSIST", "PERSIST_ACKS")
    env = {f"CHATTER_ENDPOINT_{n}": f"tcp://127.0.0.1:{free_port()}" for n in names}
    stack = fresh_stack(**env)
    out = stack.cli_json("send", "over tcp [[mock tokens=15]]")
    assert out["status"] == "completed" and out["content"] == expected("over tcp [[mock tokens=15]]", 15)
    assert not any(stack.run_dir.glob("*.sock"))


def wait_journal(stack, needle: str, predicate, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = [e for e in stack.journal() if needle in str(e["body"])]
        if entries and predicate(entries[-1]):
            return entries[-1]
        time.sleep(0.05)
    raise TimeoutError(f"journal never showed it: {entries[-1] if entries else None}")


@pytest.mark.parametrize("env", [{"CHATTER_STREAM_READER": "fed"}, {"CHATTER_STREAM_READER": "iterator"},
                                 {"CHATTER_HTTP_CLIENT": "httpx"}], ids=["fed", "iterator", "httpx"])
def test_each_stream_reader_reads_the_whole_reply_and_a_cancel_during_a_stalled_upstream_closes_it(fresh_stack, env):
    """The fed reader (the default), the client's byte iterator, and the httpx backend (always the iterator): the
    whole reply, and a cancel while the upstream is stalled mid-stream closes the upstream request."""
    stack = fresh_stack(**env)
    text = "read me whole [[mock tokens=120 tps=400]]"
    out = stack.cli_json("send", text)
    assert out["status"] == "completed" and out["content"] == expected(text, 120)
    client, session_id, sent = start_send(stack, "stuck again [[mock tokens=50 stall_after=3 stall_ms=60000]]")
    try:
        wait_journal(stack, "stuck again", lambda e: e["chunks_sent"] == 3)
        client.cancel(session_id, sent.generation_id)
        view = client.follow(session_id, sent.generation_id)
    finally:
        client.close()
    assert view.status == "cancelled" and len(view.text) > 0
    entry = wait_journal(stack, "stuck again", lambda e: e["client_closed"], timeout=3)
    assert entry["chunks_sent"] == 3 and not entry["completed"]


def test_stops_before_and_after_the_first_token_close_each_upstream_request_once_and_retry_none(stack):
    """Twenty replies stopped at once, half waiting for their first token and half streaming: the stopper
    thread and the event loop both act on each cancel, and each request reached the mock once and was closed."""
    texts = [f"stop all {i} [[mock tokens=400 tps=40 ttft_ms={60000 if i % 2 else 50}]]" for i in range(20)]
    retries = stack.cli_json("status")["counters"]["retries"]
    client = stack.client()
    try:
        sends = []
        for text in texts:
            session_id = client.new_session()
            client.subscribe(session_id)
            sends.append((session_id, client.send(session_id, text, client_request_id=os.urandom(8).hex())))
        for text in texts:
            wait_journal(stack, text, lambda e: e["chunks_sent"] >= 2 or "ttft_ms=60000" in text)
        for session_id, sent in sends:
            client.cancel(session_id, sent.generation_id)
        views = [client.follow(session_id, sent.generation_id) for session_id, sent in sends]
    finally:
        client.close()
    assert [view.status for view in views] == ["cancelled"] * 20
    for text in texts:
        entry = wait_journal(stack, text, lambda e: e["client_closed"], timeout=5)
        assert not entry["completed"] and entry["attempt"] == 1
    time.sleep(1.2)  # a retry (0.25 s after its failure) would reach the mock by now, and its count the next heartbeat
    journal = stack.journal()
    assert all(sum(e["body"]["messages"][-1]["content"] == text for e in journal) == 1 for text in texts)
    assert stack.cli_json("status")["counters"]["retries"] == retries


def test_generators_drop_their_streams_when_the_coordinator_dies(fresh_stack):
    stack = fresh_stack(CHATTER_COORDINATOR_SILENT_MS="1500")
    client, session_id, sent = start_send(stack, "lonely [[mock tokens=400 tps=40]]")
    client.close()
    wait_journal(stack, "lonely", lambda e: e["chunks_sent"] >= 3)
    stack.kill("coordinator")
    entry = wait_journal(stack, "lonely", lambda e: e["client_closed"], timeout=8)
    assert not entry["completed"] and entry["chunks_sent"] < 400


def test_a_dead_upstream_ends_as_error_with_a_readable_reason(fresh_stack):
    stack = fresh_stack(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1", CHATTER_RETRY_DEADLINE_MS="1500")
    out = stack.cli_json("send", "anyone there?")
    assert out["status"] == "error" and "unreachable" in out["error"] and "attempts" in out["error"]
    assert "OPENAI_BASE_URL" in out["error"]  # the error names the setting to fix
    deadline = time.monotonic() + 5  # retries reach the coordinator with the next heartbeat
    while stack.cli_json("status")["counters"]["retries"] < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.cli_json("status")["counters"]["retries"] >= 2


def test_a_send_waits_a_bounded_time_for_durability_and_the_reply_is_saved_later(fresh_stack):
    stack = fresh_stack(CHATTER_PERSIST_RESEND_MS="300")
    stack.kill("persister")  # nothing can become durable now
    text = "saved later [[mock tokens=30]]"
    env = stack.env | {"CHATTER_DURABLE_WAIT_MS": "1500"}
    done = subprocess.run([*stack.cli_argv(), "send", text, "--json"], env=env, cwd=stack.cwd, capture_output=True,
                          timeout=60)
    out = json.loads(done.stdout)
    assert done.returncode == 1 and out["status"] == "completed" and out["saved"] is False
    assert out["content"] == expected(text, 30)  # the reply is complete on the client
    assert "not saved yet" in done.stderr.decode() and "persister" in done.stderr.decode()
    gone = wait_until(lambda: not (s := stack.cli_json("status"))["persister_connected"] and s,
                      what="status saying the persister is gone")
    assert gone["unsaved"] >= 1 and gone["oldest_unsaved_ms"] >= 1500
    assert "persister: NOT CONNECTED" in stack.cli("status").stdout.decode()
    stack.start("persister")
    row = stack.wait_db_status(out["message_id"], ("completed",))
    assert row["content"] == out["content"]  # saved once the persister is back


def test_a_coordinator_killed_mid_reply_is_replaced_and_the_reply_goes_on(fresh_stack):
    """SIGKILL of the coordinator mid-reply, a new one started: it adopts the reply from the generator that
    kept streaming, and the sender and a watcher both end with the mock's exact text, as the database does."""
    stack = fresh_stack()
    text = "survive the coordinator [[mock tokens=300 tps=40]]"
    send = stack.spawn_cli("send", text, "--json")
    watch = None
    try:
        session_id = wait_until(lambda: next((row["session_id"] for row in json.loads(
            stack.cli("sessions", "--json").stdout) if row["status"] == "streaming"), None), what="the reply")
        watch = stack.spawn_cli("watch", session_id, "--once", "--json")
        message_id = stack.query("select id from message where session_id = ? and role = 'assistant'",
                                 (session_id,))[0]["id"]
        wait_for_chunks(stack, message_id, 100)
        stack.kill("coordinator")
        time.sleep(0.5)
        stack.start("coordinator")
        sent, watched = (json.loads(proc.communicate(timeout=60)[0]) for proc in (send, watch))
    finally:
        for proc in (send, watch):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sent["status"] == "completed", sent["error"]
    assert sent["content"] == watched["content"] == expected(text, 300)
    row = stack.wait_db_status(message_id, ("completed",))
    assert row["content"] == sent["content"]
    status = stack.cli_json("status")
    assert status["counters"]["generations_adopted"] == 1 and status["counters"]["gaps"] == 0
    assert len(stack.query("select id from message where session_id = ?", (session_id,))) == 2  # no second reply
