"""What every process's shell shares: start-up (private files, logging, the collector), stop signals, taking
a channel's frames as messages (bad ones dropped, counted and logged alike), errors in plain words, refusing to
start with a bad setting, and telling of a refused handshake with the coordinator. How a loop paces its
wake-ups is ``pacing.py``; how a socket is sent to and read without waiting is ``transport``."""
from __future__ import annotations

import gc
import os
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


def freeze_startup_heap() -> None:
    """Once a process has built what it keeps for its life (modules, sockets, clients), and before its loop:
    the collector stops walking those objects at every full collection (``gc.freeze``), and collects the
    young generation every ``GC_YOUNG_THRESHOLD`` allocations. Reference counting still frees all but
    cycles at once; cycles are still found, less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(stop: Callable[[], None], loop=None) -> None:
    """SIGTERM and SIGINT call ``stop``: through ``loop`` (an asyncio loop) when given, else as a plain handler."""
    for sig in STOP_SIGNALS:
        if loop is not None:
            loop.add_signal_handler(sig, stop)
        else:
            signal.signal(sig, lambda _signum, _frame: stop())


async def stop_signalled() -> None:
    """Returns at SIGTERM or SIGINT: how an asyncio process (the mock LLM, the gateway) waits to stop."""
    import asyncio
    stop = asyncio.Event()
    on_stop_signals(stop.set, asyncio.get_running_loop())
    await stop.wait()


def decode_bundle(payload: bytes, expect: tuple) -> tuple[list, list[codec.FrameError]]:
    """A frame of a point-to-point channel as the messages it carries (itself, or a bundle's items), and
    the errors of what was dropped: a bad frame, or each bad item of a bundle alone."""
    try:
        return m.unbundle(codec.decode(payload, expect + (m.Bundle,)), expect)
    except codec.FrameError as err:
        return [], [err]


class BadFrames:
    """The frames a process dropped: counted (``total``, which status shows) and logged the same way in
    every process, with the channel, what was wrong and the total so far; with ``counters``, the total is kept
    in it too, as ``bad_frames_dropped``."""

    def __init__(self, log, counters: dict | None = None) -> None:
        self.log, self.total, self.counters = log, 0, counters

    def drop(self, channel: str, err: codec.FrameError) -> None:
        self.total += 1
        if self.counters is not None:
            self.counters["bad_frames_dropped"] = self.total
        self.log.warning("bad_frame_dropped", channel=channel, kind=err.kind, detail=err.detail[:200],
                         total=self.total)


def take_messages(sock, limit: int, expect: tuple, channel: str, bad: BadFrames) -> list[m.Message]:
    """What a point-to-point channel (gen-events, persist, persist-acks) holds now, up to ``limit`` frames, as
    the messages they carry (bundles opened); what cannot be read is dropped, counted and logged."""
    out: list[m.Message] = []
    for payload in transport.take(sock, limit):
        msgs, errors = decode_bundle(payload, expect)
        out.extend(msgs)
        for err in errors:
            bad.drop(channel, err)
    return out


def decode_published(frame: bytes, expect: tuple, channel: str, bad: BadFrames) -> m.Message | None:
    """A frame of a PUB channel (topic, then payload) as its message, or None when it was dropped."""
    try:
        return codec.decode(transport.payload_of(frame), expect)
    except codec.FrameError as err:
        bad.drop(channel, err)
        return None


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
