"""The persister's apply rules against a real (in-memory) SQLite database."""
from __future__ import annotations

import pytest
import structlog

from protocol import messages as m
from services import store
from services.persister.apply import Persister


@pytest.fixture
def persister():
    db = store.open_database("sqlite:///:memory:")
    db.create_tables(store.MODELS)
    yield Persister(structlog.get_logger(), db)
    db.close()


def create(message_id="a1", role="assistant", content="", status="streaming"):
    return m.CreateMessage(message_id, "s1", "title", None, role, content, status, 1.0, "g1")


def test_appends_are_idempotent_by_offset(persister):
    acks, _ = persister.apply_batch([create(), m.Append("a1", 0, "hello "), m.Append("a1", 0, "hello "),
                                     m.Append("a1", 3, "lo world"), m.Append("a1", 20, "gap")])
    assert acks["a1"] == (11, False)
    assert store.streamed_text("a1") == "hello world"
    acks, _ = persister.apply_batch([create(), m.Append("a1", 6, "world"), m.Append("a1", 11, "!")])
    assert acks["a1"] == (12, False) and store.streamed_text("a1") == "hello world!"


def test_nothing_is_acked_for_a_message_whose_row_does_not_exist(persister):
    # an ack means applied: acking these would tell the coordinator that the create had been applied, and
    # it would never resend it (a full disk lost completed replies that way)
    acks, _ = persister.apply_batch([m.Append("nope", 0, "x"), m.Finalize("nope", "completed", 1, "h", {}, None)])
    assert acks == {}
    acks, _ = persister.apply_batch([create("nope"), m.Append("nope", 0, "x")])
    assert acks == {"nope": (1, False)}


def test_a_message_whose_operation_was_rejected_ends_as_error_with_its_text(persister):
    persister.apply_batch([create(), m.Append("a1", 0, "partial")])
    persister.forget()  # as after the failed transaction that found the bad operation
    persister.mark_error("a1", "could not be stored: integer out of range")
    row = store.Message.get_by_id("a1")
    assert (row.status, row.content, row.error) == ("error", "partial", "could not be stored: integer out of range")
    persister.mark_error("nope", "x")  # no row: nothing to mark, and no error


def test_finalize_folds_chunks_into_content_and_can_cut_a_cancelled_reply(persister):
    persister.apply_batch([create(), m.Append("a1", 0, "hello world")])
    acks, _ = persister.apply_batch([m.Finalize("a1", "cancelled", 5, "h", {"tokens": 1}, None)])
    assert acks["a1"] == (5, True)
    row = store.Message.get_by_id("a1")
    assert (row.content, row.status, row.length, row.stats) == ("hello", "cancelled", 5, {"tokens": 1})
    acks, _ = persister.apply_batch([m.Append("a1", 5, "late"), m.Finalize("a1", "completed", 9, "h", {}, None)])
    assert acks["a1"] == (5, True) and store.Message.get_by_id("a1").content == "hello"


def test_finalize_waits_for_missing_text(persister):
    persister.apply_batch([create(), m.Append("a1", 0, "abc")])
    acks, _ = persister.apply_batch([m.Finalize("a1", "completed", 6, "h", {}, None)])
    assert acks["a1"] == (3, False) and store.Message.get_by_id("a1").status == "streaming"


def test_orphans_except_the_live_ones_become_interrupted(persister):
    persister.apply_batch([create("a1"), create("a2"), m.Append("a1", 0, "partial")])
    _, answers = persister.apply_batch([m.InterruptOrphans("restart", ["a2"])])
    assert answers == [m.OrphansInterrupted(1)]
    row = store.Message.get_by_id("a1")
    assert (row.status, row.content) == ("interrupted", "partial") and "restart" in row.error
    assert store.Message.get_by_id("a2").status == "streaming"


def test_creates_are_idempotent_and_positions_follow_order(persister):
    persister.apply_batch([create("u1", "user", "hi", "completed"), create("a1"), create("u1", "user", "hi", "completed")])
    rows = list(store.Message.select().order_by(store.Message.position))
    assert [(r.id, r.position) for r in rows] == [("u1", 0), ("a1", 1)]


def test_the_chunk_log_is_cut_only_before_every_streaming_message(persister, monkeypatch):
    import services.persister.apply as module
    monkeypatch.setattr(module, "TRUNCATE_EVERY_ROWS", 2)
    persister.apply_batch([create("a1"), create("a2"), m.Append("a1", 0, "one "), m.Append("a2", 0, "uno ")])
    persister.apply_batch([m.Append("a1", 4, "two "), m.Append("a2", 4, "dos ")])
    persister.apply_batch([m.Finalize("a1", "completed", 8, "h", {}, None), m.Append("a2", 8, "tres")])
    # a1 is final: the log's front is cut up to a2's first row (the second), and not one row further
    assert [c.id for c in store.Chunk.select().order_by(store.Chunk.id)] == [2, 3, 4, 5]
    assert store.streamed_text("a2") == "uno dos tres" and store.Message.get_by_id("a1").content == "one two "
    persister.apply_batch([m.Finalize("a2", "completed", 12, "h", {}, None)])
    assert store.Chunk.select().count() == 0  # both final: the whole log goes
    assert store.Message.get_by_id("a2").content == "uno dos tres"


def test_a_restarted_persister_reads_streaming_text_back_and_goes_on(persister):
    persister.apply_batch([create("a1"), create("a2"), m.Append("a1", 0, "hello "), m.Append("a2", 0, "x"),
                           m.Append("a1", 6, "wor")])
    again = Persister(structlog.get_logger(), persister.db)
    acks, _ = again.apply_batch([m.Append("a1", 0, "hello world")])  # the coordinator resends from its ack
    assert acks["a1"] == (11, False) and store.streamed_text("a1") == "hello world"
    assert again.first_chunk == {"a1": 1, "a2": 2}  # known again, so the log is never cut before them
    acks, _ = again.apply_batch([m.Finalize("a1", "completed", 11, "h", {}, None)])
    assert acks["a1"] == (11, True) and store.Message.get_by_id("a1").content == "hello world"
    assert again.next_chunk_id == 5


def test_migrate_drops_the_chunk_indexes_of_earlier_versions():
    db = store.open_database("sqlite:///:memory:")
    try:
        db.create_tables(store.MODELS)
        db.execute_sql('CREATE UNIQUE INDEX "chunk_message_id_offset" ON "chunk" ("message_id", "offset")')
        db.execute_sql('CREATE INDEX "chunk_message_id" ON "chunk" ("message_id")')
        assert set(store.migrate(db)) == {"-index chunk_message_id_offset", "-index chunk_message_id"}
        assert db.get_indexes("chunk") == [] and store.migrate(db) == []
    finally:
        db.close()


def test_memory_behind_the_database_fails_the_batch_and_the_next_one_reloads(persister):
    persister.apply_batch([create("a1"), m.Append("a1", 0, "kept")])
    persister.open.pop("a1")  # as if memory had lost it
    with pytest.raises(RuntimeError, match="not in memory"):
        persister.apply_batch([m.Append("a1", 4, " more")])
    persister.forget()  # what the loop does after a failed batch
    acks, _ = persister.apply_batch([m.Append("a1", 4, " more")])
    assert acks["a1"] == (9, False) and store.streamed_text("a1") == "kept more"
