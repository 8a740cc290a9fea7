"""How long a thread woken by a zmq message waits for the interpreter's lock while another thread runs Python,
at a given switch interval (the generator's stopper thread against its busy event loop:
services/generator/__main__.py, SWITCH_INTERVAL_S). A sender thread sends 100 timestamps 20 ms apart to a
receiver thread while the main thread computes; each hop waits for the lock once, so the figure is two waits.

    python bench/switch_interval.py [SECONDS ...]     (default: 0.005 0.001, each twice, alternating)
"""
from __future__ import annotations

import sys
import threading
import time

import zmq


def measure(interval: float, messages: int = 100) -> list[float]:
    sys.setswitchinterval(interval)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://switch")
    latencies: list[float] = []

    def receive() -> None:
        while (sent := pull.recv_pyobj()) is not None:
            latencies.append((time.perf_counter() - sent) * 1000)

    def send() -> None:
        push = ctx.socket(zmq.PUSH)
        push.connect("inproc://switch")
        for _ in range(messages):
            time.sleep(0.02)
            push.send_pyobj(time.perf_counter())
        push.send_pyobj(None)
        push.close()

    receiver = threading.Thread(target=receive)
    receiver.start()
    threading.Thread(target=send).start()
    while receiver.is_alive():  # the busy loop: pure Python, never blocking
        sum(i * i for i in range(2000))
    pull.close()
    ctx.term()
    return sorted(latencies)


def main() -> None:
    intervals = [float(a) for a in sys.argv[1:]] or [0.005, 0.001, 0.005, 0.001]
    default = sys.getswitchinterval()
    for interval in intervals:
        lat = measure(interval)
        print(f"switch interval {interval * 1000:g} ms: p50 {lat[len(lat) // 2]:.2f} ms, "
              f"p99 {lat[int(len(lat) * 0.99)]:.2f} ms, max {lat[-1]:.2f} ms")
    sys.setswitchinterval(default)


if __name__ == "__main__":
    main()
