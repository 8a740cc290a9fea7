"""Frames that always fit, against real processes: a session whose text passes the 4 MiB frame reads whole in
``history`` and ``watch``, a list of sessions over a frame comes page by page, a 5 MB upstream event streams as
deltas that fit, and a prompt too large for its frames is refused in one line. Each of these killed the
coordinator once (``FrameTooLarge`` in its shell), and the same request killed it again after its restart."""
from __future__ import annotations

import json
import sqlite3

import pytest

from protocol import codec
from services.mock_llm.script import reply_text
from tests.integration.stack import Stack

MODEL = "mock-1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("large"), CHATTER_MAX_TEXT_CHARS="419430")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def expected(text: str, tokens: int) -> str:
    return reply_text([{"role": "user", "content": text}], MODEL, tokens)


def utf8(text: str) -> int:
    return len(text.encode())


def still_up(stack) -> dict:
    status = stack.cli_json("status")
    assert status["counters"]["frames_too_large"] == 0  # nothing was built too large, nothing failed alone
    return status


def test_a_reply_of_one_5_mb_upstream_event_streams_and_reads_whole(stack):
    """One SSE event of 5.5 MB (a server that sends a whole reply at once): the generator takes it apart into
    deltas that fit, and the session's history and a late watcher read all of it."""
    text = "one event [[mock tokens=1200000 chunk_tokens=1200000 tps=100000]]"
    sent = stack.cli_json("send", text, timeout=180)
    want = expected(text, 1_200_000)
    assert utf8(want) > 5_000_000
    assert (sent["status"], sent["content"] == want) == ("completed", True)
    history = stack.cli_json("history", sent["session_id"], timeout=120)
    assert [msg["content"] == want for msg in history["messages"] if msg["role"] == "assistant"] == [True]
    watched = stack.cli_json("watch", sent["session_id"], "--once", timeout=120)
    assert watched["content"] == want and watched["status"] == "completed"
    assert stack.db_message(sent["message_id"])["content"] == want
    still_up(stack)


def test_five_replies_of_a_megabyte_read_whole_in_history_and_watch(stack):
    """A long-context afternoon: five replies of ~1.1 MB each, 5.5 MB in one session, over a frame."""
    sent = stack.cli_json("send", "turn 0 [[mock tokens=250000 chunk_tokens=500 tps=1000000]]", timeout=120)
    session_id, wants = sent["session_id"], [sent["content"]]
    for turn in range(1, 5):
        more = stack.cli_json("send", f"turn {turn} [[mock tokens=250000 chunk_tokens=500 tps=1000000]]",
                              "--session", session_id, timeout=120)
        assert more["status"] == "completed"
        wants.append(more["content"])
    assert sum(map(utf8, wants)) > codec.MAX_FRAME_BYTES
    history = stack.cli_json("history", session_id, timeout=120)
    replies = [msg["content"] for msg in history["messages"] if msg["role"] == "assistant"]
    assert len(replies) == 5 and replies == wants
    assert [msg["content"][:6] for msg in history["messages"] if msg["role"] == "user"] == [f"turn {i}" for i in range(5)]
    watched = stack.cli_json("watch", session_id, "--once", timeout=120)
    assert watched["content"] == wants[-1]
    plain = stack.cli("history", session_id, timeout=120)  # the rendered history too, not only --json
    assert plain.returncode == 0 and wants[-1][-200:] in plain.stdout.decode()
    still_up(stack)


def test_a_list_of_sessions_over_a_frame_comes_page_by_page(stack):
    """20,000 sessions with titles of 60 emoji: their list is ~6 MB, read whole, newest first, each once."""
    count = 20_000
    title = "🙂" * 60
    with sqlite3.connect(stack.db_path) as conn:  # seeded beside the persister: the rows a long use leaves
        conn.executemany("INSERT INTO session (id, title, system, created_at, updated_at) VALUES (?, ?, NULL, ?, ?)",
                         [(f"{i:032x}", title, 1.0, 1000.0 + i // 3) for i in range(count)])
    listed = stack.cli_json("sessions", "--limit", str(count + 100), timeout=120)
    seeded = [row for row in listed if row["title"] == title]
    assert len(seeded) == count and len({row["session_id"] for row in seeded}) == count
    assert utf8(json.dumps(seeded, ensure_ascii=False)) > codec.MAX_FRAME_BYTES
    keys = [(row["last_activity"], row["session_id"]) for row in listed]
    assert keys == sorted(keys, reverse=True)
    some = stack.cli_json("sessions", "--limit", "4500", timeout=60)
    assert [row["session_id"] for row in some] == [row["session_id"] for row in listed[:4500]]
    # a prefix that matches thousands says how many, and shows some
    ambiguous = stack.cli("history", "0000000000000000000000000000")
    assert ambiguous.returncode != 0
    words = ambiguous.stderr.decode()
    assert f"matches {count} sessions (00000000000000000000000000000000, " in words and "…" in words, words
    still_up(stack)


def test_a_prompt_over_a_frame_is_sent_whole_and_preview_rebuilds_it(stack):
    """Three messages of 1.6 MiB of emoji with a budget that lets them in (a long conversation with a 1M-token
    model): the prompt is ~4.8 MiB, over a frame. Its job goes to the generator in pieces, the server receives all
    of it, the reply is stored with a reference and not a copy, and preview builds the exact prompt again."""
    first = stack.cli_json("send", "-", "--max-input-tokens", "8000000", timeout=120,
                           input=("🙂" * 419_429 + "1").encode())  # from standard input: an argument holds 128 KiB
    session_id = first["session_id"]
    for n in (2, 3):
        out = stack.cli_json("send", "-", "--session", session_id, timeout=120,
                             input=("数" * 419_420 + f" turn {n}").encode())
        assert out["status"] == "completed", out
    body = stack.journal()[-1]["body"]
    sent = sum(utf8(msg["content"]) for msg in body["messages"])
    assert sent > codec.MAX_FRAME_BYTES and len(body["messages"]) == 5
    preview = stack.cli_json("preview", out["message_id"], timeout=120)
    assert preview["messages"] == body["messages"] and preview["exact"] is True
    assert preview["prompt_hash"] == out["prompt_hash"]
    row = stack.db_message(out["message_id"])
    assert row["prompt_messages"] is None and row["preview"] is None and len(row["prompt_ref"]) < 200
    still_up(stack)
