"""What a failed transaction leads to: hold and back off, or find the one bad operation and drop it."""
from __future__ import annotations

import sqlite3

import peewee
import pytest

from services.persister.failures import BACKOFF_MAX_S, BATCH, ONE_BY_ONE, DatabaseGone, Retry, backoff_s

DISK_FULL = peewee.OperationalError("database or disk is full")
BAD_VALUE = OverflowError("Python int too large to convert to SQLite INTEGER")


def test_a_database_failure_holds_the_batch_and_backs_off_until_it_applies():
    retry, ops = Retry(), ["create", "append", "finalize"]
    assert retry.failed(ops, DISK_FULL, "database or disk is full", now=100.0) is None
    assert retry.holding and retry.mode == BATCH and retry.next_ops() == ops
    assert (retry.retry_at, retry.failing_since, retry.last_error) == (100.1, 100.0, "database or disk is full")
    retry.failed(retry.next_ops(), DISK_FULL, "database or disk is full", now=100.1)
    assert retry.retry_at == pytest.approx(100.3) and retry.failing_since == 100.0
    assert retry.next_ops() == ops  # held in order, never twice
    retry.applied(retry.next_ops())
    assert not retry.holding and (retry.failing_since, retry.last_error, retry.failures) == (None, None, 0)


def test_backoff_doubles_to_a_bound():
    assert [backoff_s(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert backoff_s(50) == BACKOFF_MAX_S


@pytest.mark.parametrize("exc", [DatabaseGone("the file was deleted"), peewee.InterfaceError("connection closed"),
                                 sqlite3.OperationalError("disk I/O error"), peewee.OperationalError("locked")])
def test_failures_of_the_database_itself_never_reject_an_operation(exc):
    retry = Retry()
    retry.failed(["a"], exc, str(exc), now=0.0)
    assert retry.mode == BATCH and retry.retry_at > 0
    assert retry.failed(retry.next_ops(), exc, str(exc), now=1.0) is None and retry.next_ops() == ["a"]


def test_an_operation_error_is_looked_for_one_by_one_and_only_the_bad_one_is_dropped():
    retry = Retry()
    good1, bad, good2 = ["good1"], ["bad"], ["good2"]  # distinct objects, as decoded operations are
    assert retry.failed([good1, bad, good2], BAD_VALUE, "too large", now=5.0) is None
    assert retry.mode == ONE_BY_ONE and retry.retry_at == 5.0  # at once: no backoff for a value error
    assert retry.next_ops() == [good1]
    retry.applied([good1])
    assert retry.next_ops() == [bad]
    assert retry.failed([bad], BAD_VALUE, "too large", now=5.1) is bad
    assert retry.next_ops() == [good2]
    retry.applied([good2])
    assert not retry.holding and retry.mode == BATCH and retry.failing_since is None


def test_a_database_failure_while_looking_one_by_one_backs_off_and_rejects_nothing():
    retry = Retry()
    retry.failed([["a"], ["b"]], BAD_VALUE, "too large", now=0.0)
    first = retry.next_ops()
    assert retry.failed(first, DISK_FULL, "database or disk is full", now=0.0) is None
    assert retry.mode == ONE_BY_ONE and retry.retry_at > 0 and retry.next_ops() == first


def test_equal_operations_are_held_apart():
    retry, a, b = Retry(), ["same"], ["same"]
    retry.failed([a, b], DISK_FULL, "full", now=0.0)
    retry.applied([a])
    assert retry.next_ops() == [b] and retry.next_ops()[0] is b
