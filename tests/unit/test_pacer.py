"""``shell.Pacer``: a loop that is not busy wakes at most once a period; a busy one never waits; and the paced
selector of the generator's event loop never sleeps when callbacks are ready. A clock of the test's own: no
timing is measured here."""
from __future__ import annotations

import socket

from services.shell import PacedSelector, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_a_loop_that_woke_recently_sleeps_out_the_rest_of_its_period():
    clock = Clock()
    pacer = Pacer(0.005, clock, clock.sleep)
    assert pacer.pace() == 0.0  # never woke: no wait
    pacer.woke()
    clock.now += 0.002  # a short turn
    assert round(pacer.pace(), 6) == 0.003
    assert clock.slept == [0.003]


def test_a_busy_loop_never_waits():
    clock = Clock()
    pacer = Pacer(0.005, clock, clock.sleep)
    pacer.woke()
    clock.now += 0.005  # its turn took the whole period
    assert pacer.pace() == 0.0
    clock.now += 1.0
    assert pacer.pace() == 0.0 and clock.slept == []


def test_a_period_of_zero_never_waits():
    clock = Clock()
    pacer = Pacer(0.0, clock, clock.sleep)
    for _ in range(3):
        pacer.woke()
        assert pacer.pace() == 0.0
    assert clock.slept == []


def test_the_paced_selector_waits_only_where_the_loop_would_wait_and_counts_the_sleep_in_its_timeout():
    clock = Clock()
    selector = PacedSelector(0.005, Pacer(0.005, clock, clock.sleep))
    left, right = socket.socketpair()
    try:
        selector.register(left, 1)  # EVENT_READ
        selector.pacer.woke()
        assert selector.select(0) == [] and clock.slept == []  # callbacks ready: no sleep
        right.send(b"x")
        selector.pacer.woke()
        events = selector.select(10.0)  # nothing ready before: it sleeps out the period, then sees the data
        assert clock.slept == [0.005] and [key.fileobj for key, _ in events] == [left]
    finally:
        selector.close()
        left.close()
        right.close()
