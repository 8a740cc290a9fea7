"""What the persister does when a transaction fails: pure rules, no database and no clock.

- A failure of the database itself (a full disk, an I/O error, a lost connection, a deleted file) fails
  every operation alike: the batch is held, nothing is acked, and it is tried again with backoff. When
  the database comes back, every held operation is applied.
- A failure that may belong to one operation (a value the database refuses, a bug) is found out by trying
  the held operations one transaction each. One that fails alone is dropped, counted and answered with
  ``PersistRejected``, so it never poisons the operations batched with it, nor any later batch.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import peewee

from services.store import BACKOFF_MAX_S, backoff_s  # noqa: F401 (BACKOFF_MAX_S: part of these rules)

BATCH, ONE_BY_ONE = "batch", "one_by_one"

# Errors of one operation's values; anything else is taken to be the database's own failure.
OPERATION_ERRORS = (peewee.IntegrityError, peewee.DataError, sqlite3.IntegrityError, sqlite3.DataError,
                    OverflowError, ValueError, TypeError, KeyError, AttributeError, UnicodeError)


class DatabaseGone(Exception):
    """The database file was deleted or replaced under a running persister."""


def is_operation_error(exc: BaseException) -> bool:
    return isinstance(exc, OPERATION_ERRORS) and not isinstance(exc, DatabaseGone)


@dataclass
class Retry:
    """The operations of a failed transaction, held until they are applied (or rejected one by one)."""

    ops: list = field(default_factory=list)
    mode: str = BATCH
    failures: int = 0  # in a row, for the backoff
    retry_at: float = 0.0
    failing_since: float | None = None
    last_error: str | None = None

    @property
    def holding(self) -> bool:
        return bool(self.ops)

    def failed(self, ops: list, exc: BaseException, reason: str, now: float):
        """A transaction of ``ops`` (new ones, or what ``next_ops`` gave) failed. Returns the operation to
        reject when one failed alone with an operation's error; else holds them all: a database failure
        backs off, an operation's error in a batch is looked for one operation at a time, at once."""
        if self.mode == ONE_BY_ONE and len(ops) == 1 and is_operation_error(exc):
            self.applied(ops)
            return ops[0]
        self.ops = list(ops) + _without(self.ops, ops)
        self.last_error = reason
        if self.failing_since is None:
            self.failing_since = now
        if is_operation_error(exc):
            self.mode, self.retry_at = ONE_BY_ONE, now
            return None
        self.failures += 1
        self.retry_at = now + backoff_s(self.failures)
        return None

    def next_ops(self) -> list:
        """What to try now: the whole held batch, or its first operation alone."""
        return self.ops[:1] if self.mode == ONE_BY_ONE else list(self.ops)

    def applied(self, ops: list) -> None:
        """``ops`` committed: they leave the hold; once it is empty, the database is healthy again."""
        self.ops = _without(self.ops, ops)
        self.failures = 0
        if not self.ops:
            self.mode, self.failing_since, self.last_error = BATCH, None, None


def _without(ops: list, gone: list) -> list:
    """``ops`` less the very objects in ``gone`` (operations are values; equal ones may both be held)."""
    ids = {id(op) for op in gone}
    return [op for op in ops if id(op) not in ids]
