"""How a process's loop wakes: at most once a period while it is not busy (``Pacer``), at once for a message
that must not wait (``WakeOnMessage``), and inside an asyncio loop (``PacedSelector``). The period and why:
docs/PERFORMANCE.md, "Low load: the cost is the wake-up"."""
from __future__ import annotations

import selectors
import time
from typing import Callable

import zmq


# A paced wake-up should carry this much of the loop's work: a wake-up itself costs ~150-200 µs of CPU on this
# project's machine (docs/PERFORMANCE.md, "A period that follows the load"), so a wake with less is mostly
# overhead, and one with more gains little from waiting longer.
WAKE_WORK_S = 0.001
BUSY_WEIGHT = 0.1  # each pace's share in the busy estimate: it follows the load within ~10 wake-ups


class Pacer:
    """At most one wake-up of a loop per period while it is not busy: a loop that slept comes back after the
    rest of its period, so whatever arrived meanwhile (deltas of many streams, a reply's acks) is taken in one
    wake-up rather than one each. The period follows the load: long enough for ``work_s`` of the loop's work
    to arrive at its recent rate (the share of time its thread spends on the CPU), and at most ``period_s``
    (CHATTER_WAKE_MS). So a lightly loaded loop wakes rarely, and a busy one, whose wake-ups already carry
    much, is hardly paced at all and adds no latency. Each message waits at most the period longer, per
    process (docs/PERFORMANCE.md, "Wake-ups: a loop paced at low load"). While ``hurry`` says so (a reply
    waits for its first token), the loop does not wait at all: a first token is never paced."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, hurry: Callable[[], bool] | None = None,
                 cpu_clock: Callable[[], float] = time.thread_time, work_s: float = WAKE_WORK_S) -> None:
        self.period_s, self.work_s = period_s, work_s
        self.woke_at = float("-inf")
        self.clock, self.sleep, self.cpu_clock = clock, sleep, cpu_clock
        self.hurry = hurry
        self.busy = 0.0  # the share of wall time the loop's thread is on the CPU (a moving average)
        self.paced_at: float | None = None
        self.cpu_at = 0.0

    def period(self) -> float:
        """How long the loop's wake-ups are apart at most, now."""
        return min(self.period_s, self.work_s / self.busy) if self.busy > 0 else self.period_s

    def pace(self) -> float:
        """Before a loop waits for its sockets: sleep out the rest of the period since the last wake-up (a
        ``sleep`` may end early: ``WakeOnMessage.sleep``). Returns the seconds slept."""
        start, cpu = self.clock(), self.cpu_clock()
        if self.paced_at is not None and start > self.paced_at:
            sample = min(1.0, (cpu - self.cpu_at) / (start - self.paced_at))
            self.busy += BUSY_WEIGHT * (sample - self.busy)
        self.paced_at, self.cpu_at = start, cpu
        rest = self.woke_at + self.period() - start
        if rest <= 0 or (self.hurry is not None and self.hurry()):
            return 0.0
        self.sleep(rest)
        return self.clock() - start

    def woke(self) -> None:
        self.woke_at = self.clock()


class WakeOnMessage:
    """What ends a pacer's sleep at once: a message on one of these zmq sockets (a client's request in the
    coordinator, a cancel or a new job in the generator), so that pacing never delays a stop or a new reply
    (docs/PERFORMANCE.md, "A stop is never paced"). ``ready`` holds the descriptors of the sockets the last
    sleep ended for."""

    def __init__(self, *socks: zmq.Socket) -> None:
        self.socks = socks
        self.fds = {id(sock): sock.FD for sock in socks}
        self.poller = zmq.Poller()
        for sock in socks:
            self.poller.register(sock, zmq.POLLIN)
        self.ready: list[int] = []

    def sleep(self, seconds: float) -> None:
        if any(sock.closed for sock in self.socks):  # shutting down (a loop's last turns): a plain sleep
            self.ready = []
            time.sleep(seconds)
            return
        ready = self.poller.poll(round(seconds * 1000))
        self.ready = [self.fds[id(sock)] for sock, _ in ready if id(sock) in self.fds]


class PacedSelector(selectors.DefaultSelector):
    """An event loop's selector with a ``Pacer``: a select that would wait sleeps out the period first (one
    that must not wait, because callbacks are ready, never does). With ``urgent``, a message on one of its
    sockets ends the sleep, and that socket's descriptor is reported ready: zmq's descriptor is
    edge-triggered, and the sleep's poll has taken its signal."""

    def __init__(self, period_s: float, pacer: Pacer | None = None, urgent: WakeOnMessage | None = None,
                 hurry: Callable[[], bool] | None = None) -> None:
        super().__init__()
        self.pacer = pacer or Pacer(period_s, sleep=urgent.sleep if urgent else time.sleep, hurry=hurry)
        self.urgent = urgent

    def select(self, timeout=None):
        ready: list[int] = []
        if timeout is None or timeout > 0:
            if self.urgent is not None:
                self.urgent.ready = []
            slept = self.pacer.pace()
            if self.urgent is not None:
                ready = self.urgent.ready
            if timeout is not None:
                timeout = max(0.0, timeout - slept)
        events = super().select(0 if ready else timeout)
        for fd in ready:
            key = self.get_map().get(fd)
            if key is not None and not any(k is key for k, _ in events):
                events.append((key, selectors.EVENT_READ))
        self.pacer.woke()
        return events
