"""Sending and receiving without waiting: the only place that knows how a full or empty zmq queue says so.

A service takes what a socket holds now (``take``), offers a frame that may be refused (``offer``), or
keeps frames in order until the peer has room (``Outbox``). None of them blocks: a peer that is down or
slow never stalls a process's loop.
"""
from __future__ import annotations

import collections

import zmq


def take(sock: zmq.Socket, limit: int, multipart: bool = False) -> list:
    """What is queued on ``sock`` now, up to ``limit`` messages, without waiting. Measured: taking with
    NOBLOCK before yielding is ~4x a message-at-a-time loop (docs/PERFORMANCE.md, "Draining")."""
    recv = sock.recv_multipart if multipart else sock.recv
    out = []
    while len(out) < limit:
        try:
            out.append(recv(zmq.NOBLOCK))
        except zmq.Again:
            break
    return out


def take_one(sock: zmq.Socket) -> bytes | None:
    """The next frame queued on ``sock``, or None when there is none now."""
    try:
        return sock.recv(zmq.NOBLOCK)
    except zmq.Again:
        return None


def offer(sock: zmq.Socket, frame: bytes | list[bytes]) -> bool:
    """Send now, or not at all: False when the peer's queue is full or no peer is connected (a PUSH socket
    would otherwise block). A list is one multipart message."""
    try:
        if isinstance(frame, list):
            sock.send_multipart(frame, zmq.NOBLOCK)
        else:
            sock.send(frame, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False


class Outbox:
    """Frames for one socket, sent in order as the peer takes them: what it has no room for waits here, and
    goes first at the next ``flush``. With ``limit``, the oldest are dropped past it and counted
    (``dropped``): the caller's protocol must resend what they carried."""

    def __init__(self, sock: zmq.Socket, limit: int | None = None) -> None:
        self.sock, self.limit = sock, limit
        self.held: collections.deque = collections.deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.held)

    def put(self, frame: bytes | list[bytes]) -> None:
        """Queue a frame (a list: one multipart message) and send what the peer has room for."""
        self.held.append(frame)
        if self.limit is not None and len(self.held) > self.limit:
            self.held.popleft()
            self.dropped += 1
        self.flush()

    def flush(self) -> bool:
        """Send what waits, in order, until the peer is full; True when nothing waits."""
        while self.held:
            if not offer(self.sock, self.held[0]):
                return False
            self.held.popleft()
        return True
