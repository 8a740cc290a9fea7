"""``shell.Pacer``: a loop that is not busy wakes at most once a period; a busy one never waits; and the paced
selector of the generator's event loop never sleeps when callbacks are ready. A clock of the test's own: no
timing is measured here."""
from __future__ import annotations

import socket

import pytest
import zmq

from services.shell import PacedSelector, Pacer, Urgent


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


@pytest.fixture
def urgent_pair():
    """A receiving and a sending zmq PAIR, and a paced selector with an ``Urgent`` over the receiver; all closed
    after the test."""
    ctx = zmq.Context()
    receiver, sender = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    receiver.bind("inproc://urgent")
    sender.connect("inproc://urgent")
    selectors: list[PacedSelector] = []

    def paced(period_s: float) -> tuple[PacedSelector, Urgent]:
        urgent = Urgent(receiver)
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
