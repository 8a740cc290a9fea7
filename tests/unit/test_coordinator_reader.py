"""The coordinator's database reader on its thread, against a real SQLite file: answers come back in order,
and a failing database is refused at once during its backoff, then tried again."""
from __future__ import annotations

import time

import zmq

from services import store
from services.coordinator.reader import BackingOff, DatabaseReader


def answers(reader, count):
    out = []
    deadline = time.monotonic() + 5
    while len(out) < count and time.monotonic() < deadline:
        reader.wake.poll(100)
        out += reader.take()
    return out


def test_reads_answer_in_order_and_a_failure_backs_off(tmp_path):
    db = store.open_database(f"sqlite:///{tmp_path / 'chatter.db'}")
    ctx = zmq.Context()
    reader = DatabaseReader(ctx, db)
    calls = []

    def failing():
        calls.append("failing")
        raise store.peewee.OperationalError("connection refused")

    try:
        reader.ask("a", lambda: ("one", 1))
        reader.ask("b", failing)
        reader.ask("c", lambda: calls.append("skipped") or ("three", 3))
        got = answers(reader, 3)
        assert [key for key, _, _ in got] == ["a", "b", "c"]
        assert got[0][1:] == (("one", 1), None)
        assert str(got[1][2]) == "connection refused"
        assert isinstance(got[2][2], BackingOff) and str(got[2][2]) == "connection refused"
        assert calls == ["failing"]  # refused without trying, inside the backoff
        failing_since, error = reader.health
        assert failing_since is not None and error == "connection refused"
        time.sleep(store.backoff_s(1) + 0.05)
        reader.ask("d", lambda: ("four", 4))
        assert answers(reader, 1) == [("d", ("four", 4), None)]
        assert reader.health == (None, None)

        def refused_value():
            raise store.peewee.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")

        reader.ask("e", refused_value)  # this read's own trouble, not the database's: no backoff
        reader.ask("f", lambda: ("six", 6))
        got = answers(reader, 2)
        assert isinstance(got[0][2], store.peewee.DataError) and got[1] == ("f", ("six", 6), None)
        assert reader.health == (None, None)
    finally:
        reader.close()
        ctx.term()
        db.close()


def test_a_prefix_is_found_by_the_index_range_whatever_the_number_of_sessions(tmp_path):
    db = store.open_database(f"sqlite:///{tmp_path / 'chatter.db'}")
    try:
        assert store.sessions_with_prefix("ab") == (0, [])  # no tables yet: nothing stored, no error
        store.migrate(db)
        ids = ["ab12" + "0" * 28, "ab34" + "0" * 28, "abff" + "0" * 28, "ac00" + "0" * 28, "b" * 32]
        for sid in ids:
            store.Session.create(id=sid, title="t", created_at=1.0, updated_at=1.0)
        assert store.sessions_with_prefix("ab", 10) == (3, ids[:3])
        assert store.sessions_with_prefix("ab", 2) == (3, ids[:2])  # counted whole, two of them shown
        assert store.sessions_with_prefix("abf") == (1, [ids[2]]) and store.sessions_with_prefix("ac") == (1, [ids[3]])
        assert store.sessions_with_prefix("AB") == (0, []) and store.sessions_with_prefix("a%") == (0, [])
        assert store.sessions_with_prefix("c") == (0, [])
    finally:
        db.close()
