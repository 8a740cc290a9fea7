"""``bench/fuzz.py``: 100,000 fuzzed frames into each socket the coordinator receives on (``tools/fuzz.py``), in a
private stack; reports how fast they were taken, that every one was counted, that a send still completes
exactly, and the coordinator's memory before and after. Section g of ``bench/RESULTS.md`` (``make bench``, or
``python bench/run.py --only g``); alone: ``python bench/fuzz.py [--frames N]``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.api import Client  # noqa: E402
from services.mock_llm.script import reply_text  # noqa: E402
from tools import fuzz  # noqa: E402
from tools.spawn import LocalStack  # noqa: E402

SEED = 1


def bench_fuzz(frames_per_socket: int = 100_000) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="chatter-bench-g-"))
    stack = LocalStack(workdir, CHATTER_ADOPT_GRACE_MS="0")
    try:
        stack.start()
        pids = stack.pids()
        coordinator = psutil.Process(pids["coordinator"])
        with Client(run_dir=str(stack.run_dir), rpc_timeout_ms=30_000) as client:
            before = client.status().counters
            rss_before = coordinator.memory_info().rss
            cpu_before = coordinator.cpu_times()
            sent = fuzz.run(stack, SEED, frames_per_socket)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                counters = client.status().counters
                if counters["bad_frames_dropped"] - before["bad_frames_dropped"] >= sent["bad_frames_expected"]:
                    break
                time.sleep(0.5)
            taken_s = time.monotonic() - deadline + 300 + sent["send_s"]
            cpu_after = coordinator.cpu_times()
            text = "after the fuzz [[mock tokens=25]]"
            session_id = client.new_session()
            client.subscribe(session_id)
            started = client.send(session_id, text, "bench-fuzz")
            view = client.follow(session_id, started.generation_id)
            exact = view.status == "completed" and view.text == reply_text([{"role": "user", "content": text}],
                                                                           "mock-1", 25)
        cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        return {
            "frames_per_socket": frames_per_socket, "frames": sent["frames"],
            "bad_frames_expected": sent["bad_frames_expected"],
            "bad_frames_counted": counters["bad_frames_dropped"] - before["bad_frames_dropped"],
            "late_deltas_dropped": counters["late_deltas_dropped"] - before["late_deltas_dropped"],
            "seconds": round(taken_s, 1), "frames_per_s": round(sent["frames"] / taken_s),
            "coordinator_cpu_us_per_frame": round(cpu_s / sent["frames"] * 1e6, 1),
            "coordinator_rss_mb": [round(rss_before / 2**20, 1), round(coordinator.memory_info().rss / 2**20, 1)],
            "all_alive": all(psutil.pid_exists(pid) for pid in pids.values()) and len(stack.pids()) == len(pids),
            "send_after_exact": exact,
        }
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000, help="frames per socket (default 100000)")
    print(json.dumps(bench_fuzz(parser.parse_args().frames), indent=2))


if __name__ == "__main__":
    main()
