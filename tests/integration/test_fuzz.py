"""Fuzzed frames into every socket the coordinator receives on, seeded and bounded in time (``tools/fuzz.py``):
10,000 a socket (rpc as a DEALER, gen-events and persist-acks as PUSH), frames over the size limit, and a
subscriber to everything that never reads. Afterwards every process is alive, a send completes with its exact
text, the counters account for every frame, and the coordinator's memory is bounded."""
from __future__ import annotations


import psutil

from services.mock_llm.script import reply_text
from tests.integration.stack import wait_until
from tools import fuzz

FRAMES_PER_SOCKET = 10_000
SEED = 20261202


def test_fuzzed_frames_into_every_bound_socket_break_nothing_and_are_all_counted(fresh_stack):
    stack = fresh_stack(CHATTER_ADOPT_GRACE_MS="0")  # past its adoption window: unknown deltas are late at once
    pids = stack.pids()
    coordinator = psutil.Process(pids["coordinator"])
    before = stack.cli_json("status")["counters"]
    rss_before = coordinator.memory_info().rss
    sent = fuzz.run(stack, SEED, FRAMES_PER_SOCKET)
    bad = sent["bad_frames_expected"]

    def counted() -> dict | None:
        counters = stack.cli_json("status")["counters"]
        return counters if counters["bad_frames_dropped"] - before["bad_frames_dropped"] >= bad else None

    counters = wait_until(counted, timeout=60, what=f"{bad} bad frames counted")
    assert sent["frames"] >= 3 * FRAMES_PER_SOCKET
    assert counters["bad_frames_dropped"] - before["bad_frames_dropped"] == bad > FRAMES_PER_SOCKET
    assert counters["late_deltas_dropped"] > before["late_deltas_dropped"]  # deltas for unknown generations
    assert all(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
               for pid in pids.values()), stack.pids()
    text = "after the fuzz [[mock tokens=25]]"
    out = stack.cli_json("send", text)
    assert out["status"] == "completed"
    assert out["content"] == reply_text([{"role": "user", "content": text}], "mock-1", 25)
    assert stack.db_message(out["message_id"])["content"] == out["content"]
    assert coordinator.memory_info().rss - rss_before < 64 * 2**20  # bounded: no frame is kept
    for name in ("coordinator", "persister", "generator"):
        assert "Traceback" not in stack.log(name), stack.log(name)[-3000:]
