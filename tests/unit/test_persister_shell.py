"""The persister's shell against a real SQLite file and a real socket: a batch with one operation that can
never be applied commits everything else, and that one is dropped alone, answered, and its reply marked."""
from __future__ import annotations

import os

import pytest
import zmq

from protocol import codec, messages as m
import transport
from services import store
from services.persister.shell import PersisterShell


@pytest.fixture
def persister(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATTER_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("CHATTER_DATABASE_URL", f"sqlite:///{tmp_path / 'data' / 'chatter.db'}")
    umask = os.umask(0)
    os.umask(umask)
    shell = PersisterShell()
    assert shell.open_database()  # as ``run`` does first
    ctx = zmq.Context()
    acks = ctx.socket(zmq.PULL)  # what the coordinator would hear
    acks.bind(transport.endpoint(transport.PERSIST_ACKS))
    yield shell, acks
    acks.close(0)
    ctx.term()
    shell.ops_in.close(0)
    shell.acks_out.close(0)
    shell.ctx.term()
    shell.db.close()
    shell.lock.release()
    os.umask(umask)  # the shell made this process's files private; the rest of the suite keeps its own


def heard(acks) -> list[m.Message]:
    out = []
    while acks.poll(500):
        msgs, errors = m.unbundle(codec.decode(acks.recv()), m.PERSIST_ACKS)
        assert errors == []
        out += msgs
    return out


def create(message_id: str, **kw) -> m.CreateMessage:
    return m.CreateMessage(message_id, "s1", "title", None, "assistant", "", "streaming", 1.0, "g-" + message_id, **kw)


def settle(shell) -> None:
    """Try again what is held, as the loop does once each backoff has passed."""
    for _ in range(20):
        if not shell.retry.holding:
            return
        shell.commit(shell.retry.next_ops())
    raise AssertionError("the held operations never settled")


def test_one_operation_that_cannot_be_stored_is_dropped_alone(persister):
    shell, acks = persister
    unsortable = {1: "one", "two": 2}  # JSON with sorted keys cannot hold both kinds of key: a TypeError
    shell.commit([create("a1"), m.Append("a1", 0, "abc"), create("bad", params=unsortable), create("a2"),
                  m.Append("a2", 0, "xyz")])
    assert shell.retry.holding and shell.failed_batches == 1  # the batch failed whole, nothing acked yet
    settle(shell)
    assert shell.ops_rejected == 1
    assert store.streamed_texts("a1")[0] == "abc" and store.streamed_texts("a2")[0] == "xyz"
    assert store.Message.get_or_none(store.Message.id == "bad") is None
    answers = heard(acks)
    (rejected,) = [a for a in answers if isinstance(a, m.PersistRejected)]
    assert rejected.message_id == "bad" and "not supported" in rejected.reason
    assert {a.message_id: a.length for a in answers if isinstance(a, m.PersistAck)} == {"a1": 3, "a2": 3}
    shell.commit([m.Append("a1", 3, "def")])  # later batches are not poisoned
    assert not shell.retry.holding and store.streamed_texts("a1")[0] == "abcdef"


def test_a_finalize_that_cannot_be_stored_marks_its_reply_error_keeping_its_text(persister):
    shell, acks = persister
    shell.commit([create("a1"), m.Append("a1", 0, "partial")])
    shell.commit([m.Finalize("a1", "completed", 7, "h", {1: "x", "y": 2}, None)])
    settle(shell)
    row = store.Message.get_by_id("a1")
    assert (row.status, row.content) == ("error", "partial") and row.error.startswith("could not be stored:")
    assert any(isinstance(a, m.PersistRejected) and a.message_id == "a1" for a in heard(acks))


def test_failures_reach_the_coordinator_at_once_with_the_databases_words(persister, monkeypatch):
    shell, acks = persister
    heard(acks)
    shell.check_database_file = lambda: (_ for _ in ()).throw(store.peewee.OperationalError("disk I/O error"))
    shell.commit([create("a1")])
    (stats,) = [a for a in heard(acks) if isinstance(a, m.PersisterStats)]
    assert stats.failed_batches == 1 and stats.last_error == "disk I/O error" and stats.failing_since
    assert shell.retry.holding and shell.retry.mode == "batch"  # the database's failure: backoff, no rejection
    del shell.check_database_file
    settle(shell)
    assert store.Message.get_or_none(store.Message.id == "a1") is not None and shell.ops_rejected == 0


def test_a_deleted_database_file_is_never_committed_to(persister):
    shell, acks = persister
    shell.commit([create("a1")])
    os.unlink(shell.db.database)
    shell.commit([create("a2")])
    assert shell.retry.holding and "deleted or replaced" in shell.retry.last_error
    assert not [a for a in heard(acks) if isinstance(a, m.PersistAck) and a.message_id == "a2"]


def test_an_idle_persister_finds_its_database_gone_and_back(persister):
    shell, acks = persister
    heard(acks)
    shell.probe()
    assert shell.probe_failing_since is None
    real_ping = store.ping
    store.ping = lambda db: (_ for _ in ()).throw(store.peewee.OperationalError("connection refused"))
    try:
        shell.probe()
        shell.send_stats()
    finally:
        store.ping = real_ping
    (stats,) = [a for a in heard(acks) if isinstance(a, m.PersisterStats)]
    assert stats.failing_since and stats.last_error == "connection refused" and stats.failed_batches == 0
    shell.probe()
    shell.send_stats()
    (stats,) = [a for a in heard(acks) if isinstance(a, m.PersisterStats)]
    assert (stats.failing_since, stats.last_error) == (None, None)


def test_an_idle_persister_never_reopens_a_deleted_database_file(persister):
    shell, acks = persister
    path = shell.db.database
    os.unlink(path)
    shell.probe()
    assert "deleted or replaced" in shell.probe_error and not os.path.exists(path)


class Unreachable:
    """A coordinator's end that takes nothing: a PUSH socket with no peer (refused, or not there) would block."""

    def send(self, frame, flags=0):
        assert flags & zmq.NOBLOCK, "a blocking send to the coordinator"
        raise zmq.Again()


def test_a_coordinator_that_cannot_be_reached_never_blocks_the_persister(persister, monkeypatch):
    shell, acks = persister
    heard(acks)
    real = shell.acks_out
    monkeypatch.setattr(shell, "acks_out", Unreachable())
    shell.say_hello()
    shell.commit([create("a1")])  # applied; its ack cannot go out, and the coordinator will resend the op
    assert not shell.hello_sent and shell.frames_dropped >= 2
    assert store.Message.get_or_none(store.Message.id == "a1") is not None
    monkeypatch.setattr(shell, "acks_out", real)
    shell.stats_sent_at = 0.0
    shell.heartbeat(idle=True)  # the coordinator is back: the hello goes again, with the count
    answers = heard(acks)
    assert shell.hello_sent and any(isinstance(a, m.PersisterHello) for a in answers)
    (stats,) = [a for a in answers if isinstance(a, m.PersisterStats)]
    assert stats.frames_dropped == shell.frames_dropped >= 2


def test_a_batch_of_new_messages_takes_positions_in_order_and_each_session_its_last_settings(persister):
    """Creates go in a few statements a batch (``store.create_messages``): what they write is what one create at
    a time wrote, in a session that has rows already and in new ones, interleaved, and a Supersede between."""
    shell, acks = persister

    def msg(message_id, session_id, at, role="user", **kw):
        return m.CreateMessage(message_id, session_id, f"{session_id} at {at}", f"system {at}", role, "text",
                               "completed", at, None, **kw)

    shell.commit([msg("u1", "s1", 1.0), msg("a1", "s1", 2.0, role="assistant")])
    shell.commit([msg("u2", "s1", 3.0), msg("x1", "s2", 4.0), msg("a2", "s1", 5.0, session_max_input_tokens=900),
                  msg("x2", "s2", 6.0, supersedes=["x1"]), msg("x3", "s2", 7.0), msg("u1", "s1", 8.0)])
    assert not shell.retry.holding
    positions = {row.id: (row.session_id, row.position) for row in store.Message.select()}
    assert positions == {"u1": ("s1", 0), "a1": ("s1", 1), "u2": ("s1", 2), "a2": ("s1", 3),
                         "x1": ("s2", 0), "x2": ("s2", 1), "x3": ("s2", 2)}
    assert store.Message.get_by_id("x1").superseded and not store.Message.get_by_id("x3").superseded
    s1, s2 = store.Session.get_by_id("s1"), store.Session.get_by_id("s2")
    # a resent create (u1) still brings its settings, as it always did; created_at is the first ever
    assert (s1.title, s1.system, s1.max_input_tokens, s1.created_at, s1.updated_at) == (
        "s1 at 8.0", "system 8.0", None, 1.0, 8.0)
    assert (s2.title, s2.system, s2.created_at, s2.updated_at) == ("s2 at 7.0", "system 7.0", 4.0, 7.0)
    assert {a.message_id for a in heard(acks) if isinstance(a, m.PersistAck)} == {
        "u1", "a1", "u2", "x1", "a2", "x2", "x3"}
    prompt = [{"role": "user", "content": "hi"}]
    shell.commit([m.CreateMessage("a3", "s2", "t", None, "assistant", "", "streaming", 9.0, "g-a3", prompt, "ph",
                                  "preview", "model-x", {"temperature": 0.5}, "req-1", None, 70, ["x1"],
                                  "model-y", {"params": {"temperature": 0.5}, "stream": False})])
    row = store.Message.get_by_id("a3")
    assert (row.session_id, row.position, row.role, row.content, row.reasoning, row.length, row.status,
            row.generation_id, row.prompt_messages, row.prompt_hash, row.preview, row.model, row.params,
            row.content_hash, row.stats, row.error, row.superseded, row.client_request_id, row.dropped_message_ids,
            row.created_at, row.updated_at) == (
        "s2", 3, "assistant", "", "", 0, "streaming", "g-a3", prompt, "ph", "preview", "model-x",
        {"temperature": 0.5}, None, None, None, False, "req-1", ["x1"], 9.0, 9.0)
    s2 = store.Session.get_by_id("s2")
    assert (s2.max_input_tokens, s2.model, s2.settings) == (70, "model-y", {"params": {"temperature": 0.5},
                                                                            "stream": False})
    assert (s1.model, s1.settings) == (None, None)


def test_the_chunk_rows_written_in_bulk_are_the_chunk_tables_columns_in_order():
    """The chunk log's rows come from the core as tuples, written by a hand-built INSERT of these columns: a
    column added to or moved in the model must be changed there too. (Messages and sessions take their
    columns from the models, and a column without a value fails their first write.)"""
    assert store._CHUNK_COLUMNS == tuple(f.column_name for f in store.Chunk._meta.sorted_fields)
