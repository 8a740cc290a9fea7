"""The coordinator's reads of the database, on a thread of their own, so its loop never waits on a network
database: the loop asks (``ask``), parks the request that needed the answer, and takes the answers
(``take``) when the reader wakes it through an inproc socket that its poller watches.

Peewee keeps a connection per thread, so the reader has its own; one that fails is dropped and a later
read reconnects (a database server that restarted), after a backoff (0.1 s doubling to 5 s) during which
reads are refused at once with the last error. While reads fail, the reader tries the database itself once
each backoff, so that ``health``, what ``chatter status`` shows of it, clears when the database is back
whether or not a read was asked for; ``last_failure`` keeps the time and words of the last failure."""
from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from typing import Callable

import peewee
import zmq

import transport
from services import shell, store

_IDS = itertools.count(1)
DATABASE_DOWN = (peewee.OperationalError, peewee.InterfaceError)  # unreachable, or a dropped connection


class BackingOff(Exception):
    """A read refused without trying: the database failed moments ago and its backoff has not passed."""


class DatabaseReader:
    def __init__(self, ctx: zmq.Context, db, unreachable: str | None = None) -> None:
        """``unreachable``: the database did not answer at the coordinator's start, in these words."""
        self.db = db
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.health: tuple[float | None, str | None] = (None, None)  # (failing since, last error); the loop reads it
        self.last_failure: tuple[float, str] | None = None  # (when, words) of the last failure, kept after recovery
        self._failures, self._retry_at = 0, 0.0
        self.answers: collections.deque = collections.deque()  # (key, value, exception), in order
        address = f"inproc://coordinator-reader-{next(_IDS)}"
        self.wake = ctx.socket(zmq.PAIR)  # the loop's end: readable when answers are waiting
        self.wake.bind(address)
        self._wake_loop = ctx.socket(zmq.PAIR)  # the thread's end; used by the thread alone
        self._wake_loop.connect(address)
        if unreachable is not None:
            self._failing(unreachable)
        self.thread = threading.Thread(target=self._run, name="coordinator-reader", daemon=True)
        self.thread.start()

    def ask(self, key: str, read: Callable[[], object]) -> None:
        self.requests.put((key, read))

    def take(self) -> list[tuple[str, object, Exception | None]]:
        while transport.take_one(self.wake) is not None:
            pass
        out = []
        while self.answers:
            out.append(self.answers.popleft())
        return out

    def _failing(self, words: str) -> None:
        """The database could not be reached before any read: reads are failing, and the reader tries it after
        the first backoff."""
        now = time.time()
        self._failures, self._retry_at = 1, now + store.backoff_s(1)
        self.health, self.last_failure = (now, words), (now, words)

    def _run(self) -> None:
        while True:
            timeout = None if self.health[0] is None else max(0.01, self._retry_at - time.time())
            try:
                item = self.requests.get(timeout=timeout)
            except queue.Empty:  # failing, and nothing asked meanwhile: try the database itself
                self._read(lambda: store.ping(self.db))
                self._wake_loop.send(b"")  # the loop takes the health as it is now
                continue
            if item is None:
                break
            key, read = item
            self.answers.append((key, *self._read(read)))
            self._wake_loop.send(b"")
        self._wake_loop.close(0)
        try:
            self.db.close()
        except Exception:
            pass

    def _read(self, read: Callable[[], object]) -> tuple[object, Exception | None]:
        now = time.time()
        failing_since, last_error = self.health
        if failing_since is not None and now < self._retry_at:
            return None, BackingOff(last_error)
        try:
            value = read()
        except Exception as exc:  # the request that needed it is refused; the loop goes on
            store.reset_connection(self.db)
            if not isinstance(exc, DATABASE_DOWN):  # this read's own trouble: the next one tries at once
                return None, exc
            self._failures += 1
            self._retry_at = now + store.backoff_s(self._failures)
            self.health = (failing_since or now, shell.plain_error(exc))
            self.last_failure = (now, self.health[1])
            return None, exc
        self._failures, self.health = 0, (None, None)
        return value, None

    def close(self) -> None:
        self.requests.put(None)
        self.thread.join(timeout=5)
        self.wake.close(0)
