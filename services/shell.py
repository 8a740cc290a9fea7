"""What every process's shell shares: start-up (private files, logging), stop signals, decoding one
channel's frames and bundles, errors in plain words, refusing to start with a bad setting, and telling of a
refused handshake with the coordinator."""
from __future__ import annotations

import gc
import os
import selectors
import signal
import time
from typing import Callable

import zmq

from protocol import codec, messages as m
import transport
from transport import curve
from services import logs, store


def start(process: str):
    """Every file a Chatter process creates is its user's alone (0600, directories 0700); returns the log."""
    os.umask(0o077)
    return logs.configure(process)


# Tracked objects allocated (net) between two collections of the youngest generation; Python's default is
# 700. Measured (docs/PERFORMANCE.md, "The collector"): at 1000 streams the default spent ~9% of the
# generator's CPU in the collector and stopped every stream for ~100 ms at each full collection.
GC_YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Once a process has built what it keeps for its life (modules, sockets, clients), and before its loop:
    the collector stops walking those objects at every full collection (``gc.freeze``), and collects the
    young generation every ``GC_YOUNG_THRESHOLD`` allocations. Reference counting still frees all but
    cycles at once; cycles are still found, less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def on_stop_signals(stop: Callable[[], None]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop())


def drain(sock, limit: int, multipart: bool = False) -> list:
    """What is queued on ``sock`` now, up to ``limit`` messages, without waiting. Measured: draining with
    NOBLOCK before yielding is ~4x a message-at-a-time loop."""
    recv = sock.recv_multipart if multipart else sock.recv
    out = []
    while len(out) < limit:
        try:
            out.append(recv(zmq.NOBLOCK))
        except zmq.Again:
            break
    return out


def decode_bundle(payload: bytes, expect: tuple) -> tuple[list, list[codec.FrameError]]:
    """A frame of a point-to-point channel as the messages it carries (itself, or a bundle's items), and
    the errors of what was dropped: a bad frame, or each bad item of a bundle alone."""
    try:
        return m.unbundle(codec.decode(payload, expect + (m.Bundle,)), expect)
    except codec.FrameError as err:
        return [], [err]


def log_bad_frame(log, channel: str, err: codec.FrameError, total: int) -> None:
    """A dropped frame, counted by its process (``total``), logged the same way everywhere."""
    log.warning("bad_frame_dropped", channel=channel, kind=err.kind, detail=err.detail[:200], total=total)


def plain_error(exc: BaseException) -> str:
    """An exception in words for a log or a reply: its message (never a repr of a library object), redacted."""
    words = " ".join(str(exc).split()) or type(exc).__name__
    return logs.redact(words)[:500]


def main(process: str, make: Callable[[], object]) -> None:
    """Build a process's shell with ``make`` and run it. A setting it cannot run with (a run directory, an
    endpoint, a database URL, one held by another process) is one line on stderr and exit 1, never a
    traceback: a bad setting never leaves half a stack running."""
    try:
        proc = make()
    except (transport.SetupError, store.DatabaseUrlError) as exc:
        raise SystemExit(f"chatter {process}: {exc}") from None
    proc.run()


class RefusalWatch:
    """Refused handshakes on one tcp channel (a key not authorized, CURVE on one side only), counted and logged
    instead of silent: on the coordinator's side, a peer it let not in; on a process's, the coordinator that
    refused it. A refused peer tries again ten times a second, so at most one line a second is logged.
    ``monitor`` is None over ipc, which has no handshake to refuse."""

    def __init__(self, log, sock: zmq.Socket, channel: transport.Channel) -> None:
        self.log, self.sock, self.channel = log, sock, channel.name
        self.address = transport.endpoint(channel)
        self.monitor = curve.watch(sock) if self.address.startswith("tcp://") else None
        self.refused, self.logged_at = 0, 0.0

    def check(self) -> None:
        if self.monitor is None:
            return
        while (words := curve.refusal(self.monitor)) is not None:
            self.refused += 1
            if time.monotonic() - self.logged_at >= 1.0:
                self.logged_at = time.monotonic()
                self.log.error("handshake_refused", channel=self.channel, endpoint=self.address, reason=words,
                               refused=self.refused)

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(0)


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
        ``sleep`` may end early: ``Urgent.sleep``). Returns the seconds slept."""
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


class Urgent:
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

    def __init__(self, period_s: float, pacer: Pacer | None = None, urgent: Urgent | None = None,
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
