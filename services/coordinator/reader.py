"""The coordinator's reads of the database, on a thread of their own, so its loop never waits on a network
database: the loop asks (``ask``), parks the request that needed the answer, and takes the answers
(``take``) when the reader wakes it through an inproc socket that its poller watches.

Peewee keeps a connection per thread, so the reader has its own; one that fails is dropped and the next
read reconnects (a database server that restarted)."""
from __future__ import annotations

import collections
import itertools
import queue
import threading
from typing import Callable

import zmq

from services import store

_IDS = itertools.count(1)


class DatabaseReader:
    def __init__(self, ctx: zmq.Context, db) -> None:
        self.db = db
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.answers: collections.deque = collections.deque()  # (key, value, exception), in order
        address = f"inproc://coordinator-reader-{next(_IDS)}"
        self.wake = ctx.socket(zmq.PAIR)  # the loop's end: readable when answers are waiting
        self.wake.bind(address)
        self._wake_loop = ctx.socket(zmq.PAIR)  # the thread's end; used by the thread alone
        self._wake_loop.connect(address)
        self.thread = threading.Thread(target=self._run, name="coordinator-reader", daemon=True)
        self.thread.start()

    def ask(self, key: str, read: Callable[[], object]) -> None:
        self.requests.put((key, read))

    def take(self) -> list[tuple[str, object, Exception | None]]:
        while True:
            try:
                self.wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        out = []
        while self.answers:
            out.append(self.answers.popleft())
        return out

    def _run(self) -> None:
        while True:
            item = self.requests.get()
            if item is None:
                break
            key, read = item
            try:
                self.answers.append((key, read(), None))
            except Exception as exc:  # the request that needed it is refused; the loop goes on
                store.reset_connection(self.db)
                self.answers.append((key, None, exc))
            self._wake_loop.send(b"")
        self._wake_loop.close(0)
        try:
            self.db.close()
        except Exception:
            pass

    def close(self) -> None:
        self.requests.put(None)
        self.thread.join(timeout=5)
        self.wake.close(0)
