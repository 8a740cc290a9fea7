"""The issue's acceptance run, as a new user would do it: 20 sends in a row in one session, every
third cancelled with SIGINT mid-stream; each ends in the right status, and ``chatter history``
shows exactly the text each client printed."""
from __future__ import annotations

import os
import select
import signal
import time


def run_send(stack, args, cancel_after_chars: int | None):
    proc = stack.spawn_cli("send", *args)
    printed = b""
    if cancel_after_chars is not None:
        deadline = time.monotonic() + 20
        while len(printed) < cancel_after_chars and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                printed += chunk
        proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    return proc.returncode, (printed + rest).decode(), err.decode()


def test_twenty_sends_some_cancelled_history_matches_what_was_printed(stack):
    session_id = stack.cli_json("send", "start [[mock tokens=3]]")["session_id"]
    printed_by_turn = []
    for i in range(20):
        cancel = i % 3 == 1
        text = f"turn {i} [[mock tokens={300 if cancel else 30} tps={40 if cancel else 300}]]"
        code, out, err = run_send(stack, [text, "--session", session_id], 30 if cancel else None)
        assert out.endswith("\n"), err
        expected_status, expected_code = ("cancelled", 130) if cancel else ("completed", 0)
        assert code == expected_code, err
        assert expected_status in err
        printed_by_turn.append((text, expected_status, out[:-1]))
    history = stack.cli_json("history", session_id)["messages"][2:]  # after the opening turn
    assert len(history) == 40
    for (text, status, shown), user, reply in zip(printed_by_turn, history[::2], history[1::2], strict=True):
        assert user["content"] == text
        assert (reply["status"], reply["content"]) == (status, shown)
        assert stack.db_message(reply["message_id"])["content"] == shown
