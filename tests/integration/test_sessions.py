"""Resumable streams through real processes: slow subscribers, watchers, switching, regenerate,
the context budget, idempotent sends, the stall watchdog and a coordinator restart."""
from __future__ import annotations

import json
import os
import select
import subprocess
import time

from services.mock_llm.script import reply_text, reply_tokens
from tests.integration.stack import BOTH_DATABASES
from tests.integration.test_failures import start_send, wait_for_chunks, wait_journal

pytestmark = BOTH_DATABASES

MODEL = "mock-1"


def expected(text: str, tokens: int, history: list[dict] | None = None) -> str:
    return reply_text((history or []) + [{"role": "user", "content": text}], MODEL, tokens)


def read_until(proc: subprocess.Popen, needle: bytes, timeout: float = 20) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while needle not in got and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            got += chunk
    assert needle in got, f"never saw {needle!r} in {got[-500:]!r}"
    return got


def test_a_slow_subscriber_loses_messages_to_the_hwm_and_still_ends_exact(fresh_stack):
    stack = fresh_stack(CHATTER_STREAM_HWM="4", CHATTER_FLUSH_MS="0")
    text = "flood me [[mock tokens=4000 tps=4000 ttft_ms=300]]"
    client = stack.client()
    slow = type(client)(run_dir=str(stack.run_dir), stream_hwm=1)
    try:
        session_id = client.new_session()
        slow.subscribe(session_id)
        client.subscribe(session_id)
        sent = client.send(session_id, text, "req-flood")
        view = slow.follow(session_id, sent.generation_id, on_text=lambda _text, _view: time.sleep(0.005))
        fast = client.follow(session_id, sent.generation_id, attach=True)
    finally:
        slow.close()
        client.close()
    assert view.gaps >= 1 and slow.snapshots >= 1, "PUB never dropped: the test proved nothing"
    assert view.status == fast.status == "completed"
    assert view.text == fast.text == expected(text, 4000)
    assert stack.db_message(sent.message_id)["content"] == view.text


def test_watchers_attaching_mid_stream_see_exactly_what_the_sender_sees(stack):
    text = "watch this [[mock tokens=150 tps=50]]"
    session_id = stack.cli_json("send", "warm up [[mock tokens=2]]")["session_id"]
    sender = stack.spawn_cli("send", text, "--session", session_id, "--json")
    watchers = []
    for delay in (0.5, 0.6, 1.2):
        time.sleep(delay)
        watchers.append(stack.spawn_cli("watch", session_id, "--once", "--json"))
    sent = json.loads(sender.communicate(timeout=30)[0])
    seen = [json.loads(w.communicate(timeout=30)[0]) for w in watchers]
    assert sent["status"] == "completed"
    assert sent["content"] == expected(text, 150, [{"role": "user", "content": "warm up [[mock tokens=2]]"},
                                                   {"role": "assistant", "content": expected(
                                                       "warm up [[mock tokens=2]]", 2)}])
    for out in seen:
        assert (out["generation_id"], out["content"], out["status"]) == (
            sent["generation_id"], sent["content"], "completed")
        assert out["tokens"] == sent["tokens"] and out["message_id"] == sent["message_id"]
    assert stack.db_message(sent["message_id"])["content"] == sent["content"]


def test_leaving_a_session_mid_stream_does_not_stop_it_and_coming_back_shows_it(stack):
    client = stack.client()
    try:
        session_a = client.new_session()
        client.subscribe(session_a)
        text = "keep going [[mock tokens=120 tps=60]]"
        sent = client.send(session_a, text, "req-a")
        client.follow(session_a, sent.generation_id, interrupt=lambda: "detach")  # leave at once
        client.unsubscribe(session_a)
        session_b = client.new_session()
        client.subscribe(session_b)
        other = client.send(session_b, "meanwhile [[mock tokens=5]]", "req-b")
        assert client.follow(session_b, other.generation_id).status == "completed"
        client.unsubscribe(session_b)
        client.subscribe(session_a)  # back: snapshot, then live or final
        back = client.follow(session_a, sent.generation_id, attach=True)
    finally:
        client.close()
    assert back.status == "completed" and back.text == expected(text, 120)
    assert stack.db_message(sent.message_id)["content"] == back.text


def test_chat_switches_away_mid_reply_and_back_to_the_finished_reply(stack):
    text = "long tale [[mock tokens=120 tps=40]]"
    chat = subprocess.Popen([*stack.cli_argv(), "chat"], env=stack.env, cwd=stack.cwd, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        session_a = None
        deadline = time.monotonic() + 20
        err = b""
        while session_a is None and time.monotonic() < deadline:
            err += os.read(chat.stderr.fileno(), 4096)
            if b"session " in err and b" \xe2\x80\x94" in err:
                session_a = err.split(b"session ", 1)[1].split(b" ", 1)[0].decode()
        chat.stdin.write(f"{text}\n".encode())
        chat.stdin.flush()
        full = expected(text, 120)
        read_until(chat, full[:15].encode())
        chat.stdin.write(b"/new\nsomething else [[mock tokens=4]]\n")
        chat.stdin.flush()
        read_until(chat, expected("something else [[mock tokens=4]]", 4).encode())
        chat.stdin.write(f"/switch {session_a[:8]}\n".encode())
        chat.stdin.flush()
        out = read_until(chat, full.encode())  # the whole reply, live or final
        chat.stdin.close()
        chat.wait(timeout=10)
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.wait()
    assert chat.returncode == 0
    history = stack.cli_json("history", session_a)["messages"]
    assert [(h["role"], h["status"]) for h in history] == [("user", "completed"), ("assistant", "completed")]
    assert history[1]["content"] == full and full.encode() in out


def test_a_piped_chat_whose_input_ends_mid_reply_leaves_it_streaming_and_exits_0(stack):
    """The input's end while a reply streams (no command pending) leaves the reply going on in its session."""
    text = "until the input ends [[mock tokens=300 tps=30]]"
    chat = subprocess.Popen([*stack.cli_argv(), "chat"], env=stack.env, cwd=stack.cwd, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        chat.stdin.write(f"{text}\n".encode())
        chat.stdin.flush()
        read_until(chat, expected(text, 300)[:15].encode())
        chat.stdin.close()  # the end of the input, mid-reply
        err = chat.stderr.read()
        chat.wait(timeout=20)
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.wait()
    assert chat.returncode == 0, err.decode()[-2000:]
    assert b"the reply goes on in session" in err and b"Traceback" not in err


def test_regenerate_during_streaming_keeps_every_reply_as_a_sibling_and_later_prompts_follow_the_last(stack):
    first = stack.cli_json("send", "q1 [[mock tokens=100 tps=50]]")
    session_id = first["session_id"]
    regen = stack.spawn_cli("regenerate", session_id, "--json")  # a sibling of the completed reply...
    wait_journal(stack, "q1", lambda e: e["chunks_sent"] >= 1 and e["attempt"] == 2)
    final = stack.cli_json("regenerate", session_id)  # ...and this one cancels the streaming one
    cancelled = json.loads(regen.communicate(timeout=20)[0])
    assert cancelled["status"] == "cancelled" and final["status"] == "completed"
    history = stack.cli_json("history", session_id)["messages"]
    assert [(h["role"], h["status"], h["sibling_index"], h["sibling_count"]) for h in history] == [
        ("user", "completed", 0, 1), ("assistant", "completed", 2, 3)]
    assert final["content"] == history[1]["content"]
    tree = stack.cli_json("branches", session_id)["nodes"]
    assert [(n["role"], n["status"], n["parent_id"]) for n in tree] == [
        ("user", "completed", ""), ("assistant", "completed", history[0]["message_id"]),
        ("assistant", "cancelled", history[0]["message_id"]), ("assistant", "completed", history[0]["message_id"])]
    after = stack.cli_json("send", "q2 [[mock tokens=3]]", "--session", session_id)
    body = [e for e in stack.journal() if "q2" in json.dumps(e["body"])][-1]["body"]
    assert body["messages"] == [{"role": "user", "content": "q1 [[mock tokens=100 tps=50]]"},
                                {"role": "assistant", "content": final["content"]},
                                {"role": "user", "content": "q2 [[mock tokens=3]]"}]
    assert after["status"] == "completed"


def test_a_long_history_is_trimmed_to_the_budget_and_the_preview_says_what_was_left_out(stack):
    out = stack.cli_json("send", "turn 0 [[mock tokens=40]]", "--max-input-tokens", "400")
    session_id = out["session_id"]
    for i in range(1, 8):
        stack.cli_json("send", f"turn {i} [[mock tokens=40]]", "--session", session_id)
    last = stack.cli_json("send", "the newest [[mock tokens=3]]", "--session", session_id)
    preview = stack.cli_json("preview", last["message_id"])
    body = [e for e in stack.journal() if "the newest" in json.dumps(e["body"])][-1]["body"]
    assert body["messages"] == preview["messages"]  # exactly what the preview shows
    assert preview["dropped_message_ids"] and len(preview["dropped_message_ids"]) % 2 == 0
    history = stack.cli_json("history", session_id)["messages"]
    assert preview["dropped_message_ids"] == [h["message_id"] for h in history[:len(preview["dropped_message_ids"])]]
    assert body["messages"][-1]["content"] == "the newest [[mock tokens=3]]"
    stats = json.loads(stack.db_message(last["message_id"])["stats"])
    assert stats["prompt_tokens"] <= stats["max_input_tokens"] == 400 and stats["dropped_messages"] > 0
    shown = stack.cli("preview", last["message_id"])
    assert b"left out" in shown.stderr
    status = stack.cli_json("status", "--session", session_id)
    assert status["context"]["history_tokens"] > 400 and status["context"]["max_input_tokens"] == 400


def test_a_duplicate_request_id_runs_one_generation_even_across_a_restart(fresh_stack):
    stack = fresh_stack()
    client = stack.client()
    try:
        session_id = client.new_session()
        client.subscribe(session_id)
        first = client.send(session_id, "only once [[mock tokens=20]]", "req-dup")
        again = client.send(session_id, "only once [[mock tokens=20]]", "req-dup")
        assert again.generation_id == first.generation_id
        client.follow(session_id, first.generation_id)
    finally:
        client.close()
    stack.kill("coordinator")
    stack.start("coordinator")
    with stack.client() as client:
        third = client.send(session_id, "only once [[mock tokens=20]]", "req-dup")
    assert third.message_id == first.message_id
    assert len([e for e in stack.journal() if "only once" in json.dumps(e["body"])]) == 1


def test_a_stalled_upstream_ends_as_error_within_the_watchdog_time(fresh_stack):
    stack = fresh_stack(CHATTER_STALL_MS="1500")
    out = stack.cli_json("send", "hang [[mock tokens=30 stall_after=3 stall_ms=60000]]")
    # the mock stalls for 60 s: only the watchdog (1.5 s here) ends it as "stalled" first
    assert out["status"] == "error" and "stalled" in out["error"]
    text = "hang [[mock tokens=30 stall_after=3 stall_ms=60000]]"
    assert out["content"] == "".join(reply_tokens([{"role": "user", "content": text}], MODEL, 30)[:3])
    entry = wait_journal(stack, "hang", lambda e: e["client_closed"], timeout=5)
    assert entry["chunks_sent"] == 3


def test_a_coordinator_restarted_mid_generation_gives_a_clear_outcome(fresh_stack):
    """With its generator dead too, nobody can carry the reply on: a watcher gets ``interrupted``, never a hang
    (with the generator alive the reply goes on: test_failures.py)."""
    stack = fresh_stack()
    client, session_id, sent = start_send(stack, "interrupted tale [[mock tokens=400 tps=40]]")
    client.close()
    watcher = stack.spawn_cli("watch", session_id, "--once", "--json")
    wait_for_chunks(stack, sent.message_id, 30)
    stack.kill("generator")
    stack.kill("coordinator")
    durable = stack.settled_durable_text(sent.message_id)  # what the persister held, committed
    stack.start("coordinator")
    out, err = watcher.communicate(timeout=30)  # never a hang
    outcome = json.loads(out)
    assert outcome["status"] == "interrupted" and watcher.returncode == 1, err
    row = stack.wait_db_status(sent.message_id, ("interrupted",))
    assert row["content"] == durable == outcome["content"] and len(durable) >= 30


def test_a_send_retried_after_a_timeout_starts_one_generation(fresh_stack):
    import signal
    import threading
    stack = fresh_stack()
    client = type(stack.client())(run_dir=str(stack.run_dir), rpc_timeout_ms=600)
    coordinator = stack.procs["coordinator"]
    try:
        session_id = client.new_session()
        client.subscribe(session_id)
        coordinator.send_signal(signal.SIGSTOP)  # the first attempt times out unanswered...
        threading.Timer(0.9, coordinator.send_signal, (signal.SIGCONT,)).start()
        sent = client.send(session_id, "retried [[mock tokens=10]]", "req-retry")  # ...the retry is answered
        view = client.follow(session_id, sent.generation_id)
    finally:
        coordinator.send_signal(signal.SIGCONT)
        client.close()
    assert client.rpc_timeouts >= 1, "the first attempt was answered: no retry was tested"
    assert view.status == "completed"
    assert len([e for e in stack.journal() if "retried" in json.dumps(e["body"])]) == 1
    history = stack.cli_json("history", session_id)["messages"]
    assert [h["role"] for h in history] == ["user", "assistant"]


def test_an_upstream_silent_past_the_read_timeout_ends_as_error_keeping_its_text(fresh_stack):
    stack = fresh_stack(CHATTER_UPSTREAM_TIMEOUT_MS="1500", CHATTER_RETRY_DEADLINE_MS="1000",
                        CHATTER_FIRST_TOKEN_MS="2500")
    text = "quiet [[mock tokens=30 stall_after=3 stall_ms=60000]]"
    out = stack.cli_json("send", text)
    # the generator's own read deadline, not the coordinator's 30 s watchdog, ends it
    assert out["status"] == "error" and "sent nothing for 1.5 s after" in out["error"], out["error"]
    assert "CHATTER_UPSTREAM_TIMEOUT_MS" in out["error"]
    assert out["content"] == "".join(reply_tokens([{"role": "user", "content": text}], MODEL, 30)[:3])
    entry = wait_journal(stack, "quiet", lambda e: e["client_closed"], timeout=5)
    assert entry["chunks_sent"] == 3
    # silent before its first token: the server's queue, waited for up to its own limit and never retried
    # (a new request would queue again at the back)
    out = stack.cli_json("send", "mute [[mock tokens=30 stall_after=0 stall_ms=60000]]")
    assert out["status"] == "error" and "no first token" in out["error"], out["error"]
    assert "CHATTER_FIRST_TOKEN_MS" in out["error"] and "2.5 s" in out["error"]
    assert len([e for e in stack.journal() if "mute" in json.dumps(e["body"])]) == 1


def test_database_reads_run_off_the_loop_while_replies_stream(fresh_stack):
    """Sessions not in memory are read by the coordinator's reader thread; the requests that need them wait,
    the streams do not. With a cache of 2, most of these sessions must come back from the database while
    replies stream: every read answers right, and every stream ends exact."""
    stack = fresh_stack(CHATTER_MAX_CACHED_SESSIONS="2")
    stored = [stack.cli_json("send", f"stored {i} [[mock tokens=8]]") for i in range(6)]
    texts = [f"streaming {i} [[mock tokens=120 tps=60]]" for i in range(8)]

    def read_while_streaming():
        for _ in range(3):
            for out in stored:
                history = stack.cli_json("history", out["session_id"][:12])  # prefix resolution, then a read
                assert history["session_id"] == out["session_id"]
                assert history["messages"][1]["content"] == out["content"]
            listed = {s["session_id"] for s in stack.cli_json("sessions", "--limit", "100")}
            assert {out["session_id"] for out in stored} <= listed

    outs = stack.send_all(texts, meanwhile=read_while_streaming, timeout=60)
    assert [o["status"] for o in outs] == ["completed"] * len(texts)
    assert [o["content"] for o in outs] == [expected(text, 120) for text in texts]


def test_a_sessions_settings_outlive_a_coordinator_restart_and_its_leaving_memory(fresh_stack):
    """What ``/config`` set (model, temperature, max_tokens, stream) is saved with the session's row at once:
    a session read back after a restart of the coordinator, or after it left the cache
    (CHATTER_MAX_CACHED_SESSIONS), sends its next reply as configured."""
    stack = fresh_stack(CHATTER_MAX_CACHED_SESSIONS="1")
    settings = {"model": "mock-2", "temperature": 0.25, "max_tokens": 40, "stream": False}

    def reply_as_configured(client, session_id: str, text: str) -> None:
        sent = client.send(session_id, f"{text} [[mock tokens=6]]", os.urandom(8).hex())
        body = wait_journal(stack, text, lambda e: e["completed"])["body"]
        assert {key: body.get(key) for key in settings} == settings
        stack.wait_db_status(sent.message_id, ("completed",))

    with stack.client() as client:
        kept = client.new_session()
        client.configure(kept, model="mock-2", params={"temperature": 0.25, "max_tokens": 40, "stream": False})
        reply_as_configured(client, kept, "while cached")
        other = client.new_session()  # the cache holds one session: this one's message pushes ``kept`` out
        sent = client.send(other, "another session [[mock tokens=3]]", "other-1")
        stack.wait_db_status(sent.message_id, ("completed",))
        reads = client.status().counters["database_reads"]
        deadline = time.monotonic() + 10
        while client.status().counters["database_reads"] == reads:  # no read yet: ``kept`` may still be cached
            client.history(kept)
            assert time.monotonic() < deadline, "the session never left memory"
            time.sleep(0.3)
        reply_as_configured(client, kept, "after leaving memory")
    stack.kill("coordinator")
    stack.start("coordinator")
    with stack.client() as client:
        reply_as_configured(client, kept, "after a restart")
