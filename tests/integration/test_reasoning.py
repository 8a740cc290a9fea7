"""Reasoning models: the thinking streams, is stored and shows apart from the answer, in all three forms servers
send it (``reasoning_content``, ``reasoning``, inline ``<think>``), and is never a stall. Real processes, real
sockets, a real database, and the mock's deterministic thinking as the truth."""
from __future__ import annotations

import json
import signal

import pytest

from services.coordinator.prompt import prompt_hash
from services.mock_llm.script import inline_thinking, reasoning_text, reasoning_tokens, reply_text, reply_tokens
from tests.integration.stack import BOTH_DATABASES, wait_until

MODEL = "mock-1"
STALL_MS = "2000"

pytestmark = BOTH_DATABASES


def prompt_of(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def quick_stalls(tmp_path_factory, request, database):
    """A stack whose stall limit (2 s) is shorter than the thinking of these tests (3 s)."""
    from tests.integration.conftest import _stack
    yield from _stack(tmp_path_factory, request, database(), CHATTER_STALL_MS=STALL_MS)


def thinking_of(stack, generation_id: str) -> int:
    """Characters of thinking the coordinator holds of a generation under way (0 when none, or ended)."""
    active = json.loads(stack.cli("status", "--json").stdout)["active"]
    return next((g["reasoning_length"] for g in active if g["generation_id"] == generation_id), 0)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "think_tags"])
def test_three_seconds_of_thinking_complete_with_a_two_second_stall_limit(quick_stalls, field):
    """60 tokens at 20 tok/s think for 3 s, longer than the stall limit: progress, not a stall. The thinking and
    the answer each equal the mock's, in the client, in a watcher attached mid-thought, and in the database."""
    stack = quick_stalls
    text = f"think hard, {field} [[mock tokens=20 reasoning_tokens=60 tps=20 reasoning_field={field}]]"
    send = stack.spawn_cli("send", text, "--json")
    try:
        session_id = wait_until(lambda: _streaming_session(stack), what="the reply to start")
        snap_gen = wait_until(lambda: _active_generation(stack), what="a generation")
        wait_until(lambda: thinking_of(stack, snap_gen) > 0, what="some thinking")
        watched = json.loads(stack.cli("watch", session_id, "--once", "--json").stdout)  # attached mid-thought
        out = json.loads(send.communicate(timeout=60)[0])
    finally:
        if send.poll() is None:
            send.kill()
            send.wait()
    thought, answer = reasoning_text(prompt_of(text), MODEL, 60), reply_text(prompt_of(text), MODEL, 20)
    assert out["status"] == "completed", out["error"]
    assert (out["reasoning"], out["content"]) == (thought, answer)
    assert (watched["reasoning"], watched["content"]) == (thought, answer)
    row = stack.db_message(out["message_id"])
    assert (row["reasoning"], row["content"], row["status"]) == (thought, answer, "completed")
    # stats: the usage's reasoning tokens (the mock reports them), how long it thought, and the first token of
    # either kind as TTFT: the thinking's, long before the answer's
    assert (out["reasoning_tokens"], out["reasoning_tokens_source"]) == (60, "server")
    assert out["tokens"] == 80 and out["tokens_source"] == "server"
    assert out["thinking_ms"] is not None and out["ttft_ms"] < out["thinking_ms"]
    history = json.loads(stack.cli("history", out["session_id"], "--json").stdout)
    assert history["messages"][-1]["reasoning"] == thought


def _streaming_session(stack) -> str | None:
    rows = json.loads(stack.cli("sessions", "--json").stdout)
    return next((row["session_id"] for row in rows if row["status"] == "streaming"), None)


def _active_generation(stack) -> str | None:
    active = json.loads(stack.cli("status", "--json").stdout)["active"]
    return active[0]["generation_id"] if active else None


def test_a_think_tag_that_does_not_open_the_reply_stays_in_the_answer(stack):
    text = "tags later [[mock tokens=12 reasoning_tokens=5 reasoning_field=think_tags think_after=3 tps=500]]"
    out = stack.cli_json("send", text)
    content = inline_thinking(reply_tokens(prompt_of(text), MODEL, 12), reasoning_tokens(prompt_of(text), MODEL, 5), 3)
    assert out["status"] == "completed" and out["content"] == content and "<think>" in content
    assert out["reasoning"] == "" and out["reasoning_tokens"] is None and out["thinking_ms"] is None
    assert stack.db_message(out["message_id"])["content"] == content


def test_think_tags_off_keeps_the_tags_in_the_answer(fresh_stack):
    stack = fresh_stack(CHATTER_THINK_TAGS="off")
    text = "tags off [[mock tokens=8 reasoning_tokens=4 reasoning_field=think_tags tps=500]]"
    out = stack.cli_json("send", text)
    content = inline_thinking(reply_tokens(prompt_of(text), MODEL, 8), reasoning_tokens(prompt_of(text), MODEL, 4))
    assert (out["content"], out["reasoning"]) == (content, "")


def test_a_cancel_mid_thought_keeps_the_thinking_so_far_and_no_answer(stack):
    text = "cancel me while thinking [[mock tokens=20 reasoning_tokens=400 tps=40]]"
    send = stack.spawn_cli("send", text, "--json")
    try:
        gen_id = wait_until(lambda: _active_generation(stack), what="a generation")
        wait_until(lambda: thinking_of(stack, gen_id) > 20, what="some thinking")
        send.send_signal(signal.SIGINT)  # Ctrl+C: cancel at what this client has shown
        out = json.loads(send.communicate(timeout=30)[0])
    finally:
        if send.poll() is None:
            send.kill()
            send.wait()
    thought = reasoning_text(prompt_of(text), MODEL, 400)
    assert out["status"] == "cancelled" and out["content"] == ""
    assert out["reasoning"] and len(out["reasoning"]) < len(thought) and thought.startswith(out["reasoning"])
    row = stack.wait_db_status(out["message_id"], ("cancelled",))
    assert (row["reasoning"], row["content"]) == (out["reasoning"], "")
    assert out["thinking_ms"] is not None and out["reasoning_tokens"] > 0
    assert out["reasoning_tokens_source"] == "estimated"  # the server never reported usage for it


def test_the_next_prompt_leaves_earlier_thinking_out_and_the_preview_says_so(stack):
    first_text = "first, think [[mock tokens=10 reasoning_tokens=60 tps=500]]"
    first = stack.cli_json("send", first_text)
    second = stack.cli_json("send", "and again [[mock tokens=5 tps=500]]", "--session", first["session_id"])
    assert second["status"] == "completed"
    body = next(e["body"] for e in stack.journal() if e["body"]["messages"][-1]["content"].startswith("and again"))
    assistant = [msg for msg in body["messages"] if msg["role"] == "assistant"]
    assert assistant == [{"role": "assistant", "content": first["content"]}]  # the answer alone
    params = {k: v for k, v in body.items() if k not in ("model", "messages", "stream", "stream_options")}
    assert prompt_hash(body["messages"], body["model"], params) == second["prompt_hash"]
    preview = stack.cli("preview", second["message_id"])
    assert preview.returncode == 0
    assert "thinking of 1 earlier replies is left out" in preview.stderr.decode()
    assert reasoning_text(prompt_of(first_text), MODEL, 60) not in preview.stdout.decode()
    history = stack.cli("history", first["session_id"]).stdout.decode()
    assert "▸ thought (" in history and first["reasoning"] not in history  # folded to a line
    full = stack.cli("history", first["session_id"], "--show-thinking").stdout.decode()
    assert first["reasoning"] in full


def test_a_setting_keeps_earlier_thinking_in_the_prompt(fresh_stack):
    stack = fresh_stack(CHATTER_PROMPT_THINKING="keep", CHATTER_INCLUDE_USAGE="0")
    first = stack.cli_json("send", "think and keep it [[mock tokens=6 reasoning_tokens=7 tps=500]]")
    assert (first["reasoning_tokens_source"], first["tokens_source"]) == ("estimated", "estimated")
    second = stack.cli_json("send", "next [[mock tokens=3 tps=500]]", "--session", first["session_id"])
    body = next(e["body"] for e in stack.journal() if e["body"]["messages"][-1]["content"].startswith("next"))
    kept = f"<think>{first['reasoning']}</think>{first['content']}"
    assert [msg["content"] for msg in body["messages"] if msg["role"] == "assistant"] == [kept]
    preview = stack.cli_json("preview", second["message_id"])
    assert preview["thinking_left_out"] == 0 and kept in preview["preview"]


def test_plain_output_keeps_stdout_for_the_answer(stack):
    text = "plain [[mock tokens=6 reasoning_tokens=5 tps=500]]"
    done = stack.cli("send", text)
    assert done.returncode == 0
    assert done.stdout.decode() == reply_text(prompt_of(text), MODEL, 6) + "\n"
    err = done.stderr.decode()
    assert "Thinking…" in err and "Thought for" in err and "thought" in err.splitlines()[-1]
    shown = stack.cli("send", text + " again", "--show-thinking")
    assert reasoning_text(prompt_of(text + " again"), MODEL, 5) in shown.stderr.decode()


def whitespace_thinking(tokens: int = 6) -> str:
    """A message whose reply begins with a think block of whitespace alone, as a model with thinking turned off
    sends it: the mock's one thinking token is a line break for it."""
    for i in range(10_000):
        text = f"thinking off {i} [[mock tokens={tokens} reasoning_tokens=1 reasoning_field=think_tags tps=500]]"
        if not "".join(reasoning_tokens(prompt_of(text), MODEL, 1)).strip():
            return text
    raise AssertionError("no such message in 10,000")


def test_a_think_block_of_whitespace_alone_shows_no_thinking_in_send_watch_or_history(stack):
    text = whitespace_thinking()
    sent = stack.cli("send", text, "--json")
    out = json.loads(sent.stdout)
    assert out["status"] == "completed" and out["reasoning"] and not out["reasoning"].strip()
    assert out["thinking_ms"] is None and out["reasoning_tokens"] is None  # no thought in the stats either
    assert out["content"] == reply_text(prompt_of(text), MODEL, 6)
    for args, done in ((("send",), sent), *((args, stack.cli(*args)) for args in (
            ("watch", out["session_id"], "--once"), ("history", out["session_id"])))):
        shown = (done.stdout + done.stderr).decode()
        assert done.returncode == 0 and "Thinking" not in shown and "Thought" not in shown, (args, shown)
        assert "▸ thought" not in shown and "| thought" not in shown, (args, shown)
