"""``pacing.Pacer``: a loop that is not busy wakes at most once a period; a busy one never waits; and the paced
selector of the generator's event loop never sleeps when callbacks are ready. A clock of the test's own: no
timing is measured here."""
from __future__ import annotations

import socket

import pytest
import zmq

from services.pacing import PacedSelector, Pacer, WakeOnMessage


class Clock:
    """Wall time and the loop's CPU time, both the test's own: ``work`` advances both, ``sleep`` only the first."""

    def __init__(self) -> None:
        self.now = 100.0
        self.cpu_s = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def cpu(self) -> float:
        return self.cpu_s

    def work(self, seconds: float) -> None:
        self.now += seconds
        self.cpu_s += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds

    def pacer(self, period_s: float, **kw) -> Pacer:
        return Pacer(period_s, self, self.sleep, cpu_clock=self.cpu, **kw)


def test_a_loop_that_woke_recently_sleeps_out_the_rest_of_its_period():
    clock = Clock()
    pacer = clock.pacer(0.005)
    assert pacer.pace() == 0.0  # never woke: no wait
    pacer.woke()
    clock.now += 0.002  # a short turn, waiting on the sockets: no CPU
    assert round(pacer.pace(), 6) == 0.003
    assert clock.slept == [0.003]


def test_a_busy_loop_never_waits():
    clock = Clock()
    pacer = clock.pacer(0.005)
    pacer.woke()
    clock.now += 0.005  # its turn took the whole period
    assert pacer.pace() == 0.0
    clock.now += 1.0
    assert pacer.pace() == 0.0 and clock.slept == []


def run_loop(clock: Clock, pacer: Pacer, busy_share: float, turns: int) -> list[float]:
    """A loop whose turns work ``busy_share`` of the time between its wake-ups (at the pacer's period); returns
    the periods it slept."""
    clock.slept.clear()
    for _ in range(turns):
        pacer.woke()
        clock.work(busy_share * pacer.period())
        pacer.pace()
    return clock.slept


@pytest.mark.parametrize("busy_share, period_ms", [(0.0, 20.0), (0.02, 20.0), (0.1, 10.0), (0.5, 2.0)])
def test_the_period_is_long_enough_for_a_wakes_worth_of_work_at_the_loops_rate(busy_share, period_ms):
    """An idle or lightly loaded loop wakes once in the longest period; a busier one sooner, so that each wake-up
    carries about ``work_s`` of work and the busy one adds little latency."""
    clock = Clock()
    pacer = clock.pacer(0.020, work_s=0.001)
    run_loop(clock, pacer, busy_share, 200)  # the moving average settles
    assert pacer.period() == pytest.approx(period_ms / 1000, rel=0.02)
    slept = run_loop(clock, pacer, busy_share, 10)
    assert slept and all(s == pytest.approx(period_ms / 1000 * (1 - busy_share), rel=0.03) for s in slept)


def test_the_period_follows_the_load_down_and_back_up():
    clock = Clock()
    pacer = clock.pacer(0.020, work_s=0.001)
    run_loop(clock, pacer, 0.5, 200)
    assert pacer.period() < 0.0025
    run_loop(clock, pacer, 0.0, 200)  # the load went away
    assert pacer.period() == pytest.approx(0.020)


def test_while_a_first_token_is_awaited_the_loop_never_waits():
    clock = Clock()
    awaited = [True]
    pacer = clock.pacer(0.020, hurry=lambda: awaited[0])
    assert run_loop(clock, pacer, 0.0, 5) == []
    awaited[0] = False
    assert run_loop(clock, pacer, 0.0, 5) == [0.02] * 5


def test_a_period_of_zero_never_waits():
    clock = Clock()
    pacer = clock.pacer(0.0)
    for _ in range(3):
        pacer.woke()
        assert pacer.pace() == 0.0
    assert clock.slept == []


def test_the_paced_selector_waits_only_where_the_loop_would_wait_and_counts_the_sleep_in_its_timeout():
    clock = Clock()
    selector = PacedSelector(0.005, clock.pacer(0.005))
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


@pytest.fixture
def urgent_pair():
    """A receiving and a sending zmq PAIR, and a paced selector with an ``WakeOnMessage`` over the receiver; all closed
    after the test."""
    ctx = zmq.Context()
    receiver, sender = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    receiver.bind("inproc://urgent")
    sender.connect("inproc://urgent")
    selectors: list[PacedSelector] = []

    def paced(period_s: float) -> tuple[PacedSelector, WakeOnMessage]:
        urgent = WakeOnMessage(receiver)
        selectors.append(PacedSelector(period_s, urgent=urgent))
        return selectors[-1], urgent

    yield receiver, sender, paced
    for selector in selectors:
        selector.close()
    receiver.close(0)
    sender.close(0)
    ctx.term()


def test_a_message_on_an_urgent_socket_ends_the_sleep_and_its_descriptor_is_reported_ready(urgent_pair):
    """zmq's descriptor is edge-triggered, and the sleep's poll takes its signal: the selector must report it
    itself, or the loop's reader would never run for the cancel that woke it."""
    receiver, sender, paced = urgent_pair
    selector, urgent = paced(60.0)
    selector.register(receiver.FD, 1)
    selector.pacer.woke()  # it woke just now: the next select sleeps out up to 60 s, unless woken
    sender.send(b"cancel")
    events = selector.select(None)
    assert urgent.ready == [receiver.FD]
    assert [key.fd for key, _ in events] == [receiver.FD]
    assert receiver.recv(zmq.NOBLOCK) == b"cancel"


def test_an_urgent_sleep_with_nothing_arriving_ends_not_ready_and_reports_nothing(urgent_pair):
    receiver, _, paced = urgent_pair
    selector, urgent = paced(0.002)
    selector.register(receiver.FD, 1)
    receiver.getsockopt(zmq.EVENTS)  # the connection's own signal, taken: the descriptor is quiet
    selector.pacer.woke()
    assert selector.select(0.01) == [] and urgent.ready == []


def test_a_paced_select_after_its_urgent_socket_closed_sleeps_plainly(urgent_pair):
    """A loop's last turns (asyncio's shutdown) run after the sockets are closed: no poll of a closed socket."""
    receiver, _, paced = urgent_pair
    selector, urgent = paced(0.002)
    receiver.close(0)
    selector.pacer.woke()
    assert selector.select(0.01) == [] and urgent.ready == []
