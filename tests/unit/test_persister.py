"""The persister's rules, pure: what operations write and ack, with no database (``services/persister/core.py``)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from protocol import messages as m
from services import store
from services.persister.core import (ClearLog, InsertChunks, InsertMessage, NotInMemory, PersisterCore, StoredMessage,
                                     Supersede, UpsertSession, WriteFinal)


@pytest.fixture
def persister() -> PersisterCore:
    p = PersisterCore()
    p.load([], {}, [None, None])
    return p


def create(message_id="a1", role="assistant", content="", status="streaming", **kw):
    return m.CreateMessage(message_id, "s1", "title", None, role, content, status, 1.0, "g1", **kw)


def writes(plan, kind):
    return [w for w in plan.writes if isinstance(w, kind)]


def chunk_rows(plan):
    return [row for w in writes(plan, InsertChunks) for row in w.rows]


def test_appends_are_idempotent_by_offset(persister):
    plan = persister.plan([create(), m.Append("a1", 0, "hello "), m.Append("a1", 0, "hello "),
                           m.Append("a1", 3, "lo world"), m.Append("a1", 20, "gap")])
    assert plan.acks == {"a1": (11, False, 0)}
    assert chunk_rows(plan) == [(1, "a1", 0, "hello ", False), (2, "a1", 6, "world", False)]
    assert plan.reply_text_bytes == 11
    plan = persister.plan([create(), m.Append("a1", 6, "world"), m.Append("a1", 11, "!")])
    assert plan.acks == {"a1": (12, False, 0)} and chunk_rows(plan) == [(3, "a1", 11, "!", False)]
    assert writes(plan, InsertMessage) == [] and len(writes(plan, UpsertSession)) == 1  # a resent create


def test_nothing_is_acked_for_a_message_whose_row_does_not_exist(persister):
    # an ack means applied: acking these would tell the coordinator that the create had been applied, and
    # it would never resend it (a full disk lost completed replies that way)
    plan = persister.plan([m.Append("nope", 0, "x"), m.Finalize("nope", "completed", 1, "h", {}, None)])
    assert plan.acks == {} and plan.writes == []
    plan = persister.plan([create("nope"), m.Append("nope", 0, "x")])
    assert plan.acks == {"nope": (1, False, 0)}


def test_finalize_folds_the_text_into_the_row_and_can_cut_a_cancelled_reply(persister):
    persister.plan([create(), m.Append("a1", 0, "hello world")])
    plan = persister.plan([m.Finalize("a1", "cancelled", 5, "h", {"tokens": 1}, None)])
    assert plan.acks == {"a1": (5, True, 0)}
    assert writes(plan, WriteFinal) == [WriteFinal("a1", "cancelled", "hello", {"tokens": 1}, None, "h")]
    plan = persister.plan([m.Append("a1", 5, "late"), m.Finalize("a1", "completed", 9, "h", {}, None)])
    assert plan.acks == {"a1": (5, True, 0)} and plan.writes == []


def test_finalize_waits_for_missing_text(persister):
    persister.plan([create(), m.Append("a1", 0, "abc")])
    plan = persister.plan([m.Finalize("a1", "completed", 6, "h", {}, None)])
    assert plan.acks == {"a1": (3, False, 0)} and plan.writes == []


def test_orphans_except_the_live_ones_become_interrupted_with_their_text(persister):
    persister.plan([create("a1"), create("a2"), m.Append("a1", 0, "partial")])
    plan = persister.plan([m.InterruptOrphans("restart", ["a2"], "c1.1")])
    assert plan.answers == [m.OrphansInterrupted(1, "c1.1")] and plan.interrupted == 1
    (final,) = writes(plan, WriteFinal)
    assert (final.message_id, final.status, final.content) == ("a1", "interrupted", "partial")
    assert "restart" in final.error
    assert "a2" in persister.open


def test_creates_are_idempotent_and_supersede_follows_the_create_it_names(persister):
    plan = persister.plan([create("u1", "user", "hi", "completed"), create("a1"),
                           create("u1", "user", "hi", "completed"), create("a2", supersedes=["a1"])])
    assert [w.op.message_id for w in writes(plan, InsertMessage)] == ["u1", "a1", "a2"]
    kinds = [type(w).__name__ for w in plan.writes]
    assert kinds.index("Supersede") > [i for i, k in enumerate(kinds) if k == "InsertMessage"][1]
    assert writes(plan, Supersede) == [Supersede(["a1"])]
    assert plan.acks == {"u1": (2, True, 0), "a1": (0, False, 0), "a2": (0, False, 0)}


def test_the_chunk_log_turns_to_its_other_table_and_empties_one_only_once_nothing_streaming_is_in_it():
    persister = PersisterCore(rotate_rows=2)
    persister.load([], {}, [None, None])
    plan = persister.plan([create("a1"), create("a2"), m.Append("a1", 0, "one "), m.Append("a2", 0, "uno ")])
    assert [w.table for w in writes(plan, InsertChunks)] == [0] and writes(plan, ClearLog) == []
    plan = persister.plan([m.Append("a1", 4, "two "), m.Append("a2", 4, "dos ")])
    assert [w.table for w in writes(plan, InsertChunks)] == [1]  # table 0 held two rows: the rows go on in 1
    assert writes(plan, ClearLog) == []  # a1 and a2 have rows in table 0 and stream on
    plan = persister.plan([m.Finalize("a1", "completed", 8, "h", {}, None), create("a3"), m.Append("a3", 0, "x")])
    assert writes(plan, ClearLog) == []  # a2 still streams with a row in table 0
    plan = persister.plan([m.Finalize("a2", "completed", 8, "h", {}, None)])
    assert writes(plan, ClearLog) == [ClearLog(0)]  # a3's rows are all in table 1
    assert writes(plan, WriteFinal)[0].content == "uno dos "
    plan = persister.plan([m.Append("a3", 1, "y")])
    assert [w.table for w in writes(plan, InsertChunks)] == [0] and writes(plan, ClearLog) == []  # 1 held three


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["create", "append", "final", "restart"]), st.integers(0, 5)),
                max_size=60), st.integers(1, 4))
def test_the_chunk_logs_tables_never_lose_a_streaming_messages_text(steps, rotate_rows):
    """Against a database of two tables that applies each plan's writes: an emptied table never held a row of a
    streaming message, every streaming message's text reads back from the tables, and a persister restarted from
    the tables goes on in the table the last row is in."""
    tables: tuple[list, list] = ([], [])
    p = PersisterCore(rotate_rows)
    p.load([], {}, [None, None])
    lengths: dict[str, int] = {}
    made = 0
    for kind, n in steps:
        streaming = sorted(p.open)
        message_id = streaming[n % len(streaming)] if streaming else None
        if kind == "create":  # a message id is never made twice
            made += 1
            ops = [create(f"a{made}")]
        elif kind == "append" and message_id:
            ops = [m.Append(message_id, lengths.get(message_id, 0), "ab")]
        elif kind == "final" and message_id:
            ops = [m.Finalize(message_id, "completed", lengths.get(message_id, 0), "h", {}, None)]
        elif kind == "restart":
            streaming = [i for i in p.open]
            log = sorted(tables[0] + tables[1])
            texts = {i: (min(r[0] for r in log if r[1] == i), [r[3] for r in log if r[1] == i], [])
                     for i in streaming if any(r[1] == i for r in log)}
            ids = [(min(t)[0], max(t)[0]) if t else None for t in tables]
            half = next(h for h, t in enumerate(tables) if log[-1] in t) if log else 0  # where the last row is
            p = PersisterCore(rotate_rows)
            p.load(streaming, texts, ids)
            assert p.table == half
            continue
        else:
            continue
        plan = p.plan(ops)
        for w in plan.writes:
            if isinstance(w, InsertChunks):
                tables[w.table].extend(w.rows)
                for row in w.rows:
                    lengths[row[1]] = row[2] + len(row[3])
                    assert all(row[0] > r[0] for t in tables for r in t if r is not row)
            elif isinstance(w, ClearLog):
                assert not any(r[1] in p.open for r in tables[w.table])
                tables[w.table].clear()
        for message_id, stored in p.open.items():
            assert "".join(r[3] for r in sorted(tables[0] + tables[1]) if r[1] == message_id) == stored.text(False)


def test_a_restarted_persister_reads_streaming_text_back_and_goes_on():
    again = PersisterCore()
    again.load(["a1", "a2", "a3"], {"a1": (1, ["hello ", "wor"], []), "a2": (2, ["x"], [])}, [(1, 3), None])
    plan = again.plan([m.Append("a1", 0, "hello world")])  # the coordinator resends from its ack
    assert plan.acks == {"a1": (11, False, 0)} and chunk_rows(plan) == [(4, "a1", 9, "ld", False)]
    assert again.first_chunk == {"a1": 1, "a2": 2} and again.open["a3"].lengths == [0, 0]
    plan = again.plan([m.Finalize("a1", "completed", 11, "h", {}, None)])
    assert plan.acks == {"a1": (11, True, 0)} and writes(plan, WriteFinal)[0].content == "hello world"


def test_messages_memory_does_not_hold_are_looked_up(persister):
    assert persister.unknown([m.Append("old", 0, "x"), create("a1"), m.InterruptOrphans("r", [], "c1.1")]) == {"old", "a1"}
    persister.take_stored([StoredMessage("old", False, 7)])  # "a1" has no row yet
    plan = persister.plan([m.Append("old", 7, "late"), m.Finalize("old", "completed", 7, "h", {}, None)])
    assert plan.acks == {"old": (7, True, 0)} and plan.writes == []
    with pytest.raises(NotInMemory):  # memory behind the database: the transaction fails, the next reloads
        persister.take_stored([StoredMessage("lost", True, 3)])
    persister.drop_memory()
    assert not persister.loaded and persister.open == {} and persister.finalized == {}


def test_a_message_whose_operation_was_rejected_ends_as_error_with_its_text(persister):
    persister.plan([create(), m.Append("a1", 0, "partial")])
    plan = persister.mark_error("a1", "could not be stored: integer out of range")
    assert writes(plan, WriteFinal) == [WriteFinal("a1", "error", "partial", {},
                                                   "could not be stored: integer out of range", None)]
    assert persister.mark_error("nope", "x").writes == []


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 12)), max_size=60))
def test_any_resends_and_overlaps_keep_the_durable_text_a_prefix_of_the_reply(appends):
    reply = "the quick brown fox jumps over the lazy dog, twice over"
    p = PersisterCore()
    p.load([], {}, [None, None])
    p.plan([create()])
    durable = ""
    for offset, size in appends:
        plan = p.plan([m.Append("a1", offset, reply[offset:offset + size])])
        durable += "".join(row[3] for row in chunk_rows(plan))
        assert reply.startswith(durable) and plan.acks["a1"] == (len(durable), False, 0)
    assert p.open["a1"].text(False) == durable


# what ``migrate`` adds to a database of a version before search (``services/store/search.py``)
SEARCH_ADDED = ("+message_fts", "+trigger message_fts_insert", "+trigger message_fts_delete",
                "+trigger message_fts_update")


def test_a_commits_appends_are_one_packed_row_and_read_back_as_appends_beside_an_earlier_versions_plain_rows():
    """``insert_chunks`` writes a commit's appends as one row of the log (msgpack and zlib, under the last one's
    id); every reader gives them back as appends, in order, with the plain rows of an earlier version before them,
    and a table that lacks the packed column of this version gains it in ``migrate``."""
    db = store.open_database("sqlite:///:memory:")
    try:
        db.create_tables(store.MODELS)
        for table in ("chunk", "chunk_b"):
            db.execute_sql(f'ALTER TABLE "{table}" DROP COLUMN "packed"')  # the log as the version before made it
        assert set(store.migrate(db)) == {"chunk.packed", "chunk_b.packed", *SEARCH_ADDED} and store.migrate(db) == []
        store.Session.create(id="s1", title="", created_at=1.0, updated_at=1.0)
        for i, (message_id, status) in enumerate([("a1", "streaming"), ("a2", "completed"), ("a3", "streaming")]):
            store.Message.create(id=message_id, session="s1", position=i, role="assistant", status=status,
                                 created_at=1.0, updated_at=1.0)
        db.execute_sql('INSERT INTO "chunk" ("id", "message_id", "offset", "text", "thinking") '
                       "VALUES (3, 'a1', 0, 'Hel', 0)")  # an earlier version's plain row
        appends = [(4, "a1", 3, "lo", False), (5, "a2", 0, "done", False), (6, "a3", 0, "hmm ", True),
                   (7, "a1", 5, " wörld 🙂" * 40, False), (8, "a3", 0, "Yes", False)]
        with db.atomic():
            store.insert_chunks(db, appends[:2], 0)
            store.insert_chunks(db, appends[2:], 0)
            store.insert_chunks(db, [], 0)  # nothing to write: no row
        rows = db.execute_sql('SELECT "id", "message_id", "offset", "text", "packed" FROM "chunk" ORDER BY "id"')
        rows = rows.fetchall()
        assert [(r[0], r[1], r[2], r[3], r[4] is None) for r in rows] == [
            (3, "a1", 0, "Hel", True), (5, "", 0, "", False), (8, "", 0, "", False)]
        assert len(rows[2][4]) < sum(len(text.encode()) for _, _, _, text, _ in appends[2:])  # compressed
        assert [e for row in db.execute_sql('SELECT * FROM "chunk" ORDER BY "id"').fetchall()
                for e in store.log_entries(row)] == [(3, "a1", 0, "Hel", False), *appends]
        assert store.streamed_texts("a1") == ("Hello" + " wörld 🙂" * 40, "")
        assert store.streamed_texts("a3") == ("Yes", "hmm ")
        assert store.streaming_chunks() == {"a1": (3, ["Hel", "lo", " wörld 🙂" * 40], []),
                                            "a3": (6, ["Yes"], ["hmm "])}  # a2 is final: not read back
        assert store.chunk_log_ids() == [(3, 8), None]
        with db.atomic():
            store.insert_chunks(db, [(9, "a3", 3, "!", False), (10, "a3", 4, "?", False)], 1)
            store.clear_chunks(db, 0)
        assert store.chunk_log_ids() == [None, (9, 10)]  # a packed first row: its first append's id
    finally:
        db.close()


_MESSAGE_IDS = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),  # the coordinator's: 16 bytes in a packed row
    st.text(alphabet="0123456789abcdefABCDEF ", min_size=31, max_size=33),  # near it: kept as they are
    st.text(max_size=64))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**63 - 1), _MESSAGE_IDS, st.integers(0, 2**63 - 1), st.text(max_size=80),
                          st.booleans()), min_size=1, max_size=40),
       st.booleans())
def test_a_packed_row_gives_back_exactly_its_appends(rows, consecutive):
    """Any appends, packed as columns and unpacked, are the same appends: ids that follow each other (stored as
    the first) or not, message ids that are 32 lowercase hex digits (stored as 16 bytes) or anything else."""
    if consecutive:
        rows = [(min(rows[0][0], 2**62) + i, *row[1:]) for i, row in enumerate(rows)]
    packed = store._pack_entries(rows)
    assert packed[:1] == store._COLUMNS
    assert store.log_entries((rows[-1][0], "", 0, "", False, packed)) == rows
    assert store.log_entries((rows[-1][0], "", 0, "", False, memoryview(packed))) == rows  # as a driver may hand it


def test_a_packed_row_of_the_first_version_is_read_as_it_was_and_columns_are_smaller():
    """A row packed by the version before (the appends as tuples, zlib's header first) still reads; the same
    appends as columns, with the coordinator's 32-digit message ids, take a tenth less room or more (on a load
    test's log a quarter: docs/PERFORMANCE.md)."""
    import random
    import zlib

    import msgspec

    rng = random.Random(7)
    rows = [(100 + i, "0192f3a4b5c6" + "".join(rng.choice("0123456789abcdef") for _ in range(20)), 40 * i,
             " ".join(rng.choice(["the", "stream", "token", "café", "数据"]) for _ in range(6)), i % 7 == 0)
            for i in range(50)]
    first_version = zlib.compress(msgspec.msgpack.encode(rows), 1)
    assert store.log_entries((149, "", 0, "", False, first_version)) == rows
    assert len(store._pack_entries(rows)) < 0.9 * len(first_version)


def test_migrate_drops_the_chunk_indexes_of_earlier_versions():
    db = store.open_database("sqlite:///:memory:")
    try:
        db.create_tables(store.MODELS)
        db.execute_sql('CREATE UNIQUE INDEX "chunk_message_id_offset" ON "chunk" ("message_id", "offset")')
        db.execute_sql('CREATE INDEX "chunk_message_id" ON "chunk" ("message_id")')
        assert set(store.migrate(db)) == {"-index chunk_message_id_offset", "-index chunk_message_id", *SEARCH_ADDED}
        assert db.get_indexes("chunk") == [] and store.migrate(db) == []
    finally:
        db.close()


def test_a_new_sqlite_file_has_small_pages_and_an_earlier_file_keeps_its_own(tmp_path):
    def pragma(db, name):
        return db.execute_sql(f"PRAGMA {name}").fetchone()[0]

    db = store.open_database(f"sqlite:///{tmp_path}/new.db")
    try:
        store.migrate(db)
        assert pragma(db, "page_size") == store.SQLITE_PAGE_SIZE == 1024 and pragma(db, "journal_mode") == "wal"
        assert pragma(db, "wal_autocheckpoint") == store.SQLITE_WAL_PAGES
    finally:
        db.close()
    import sqlite3  # a file an earlier version made: SQLite's 4 KB pages, in WAL mode, with a row
    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("PRAGMA journal_mode=wal")
    old.execute("CREATE TABLE session (id VARCHAR(64) PRIMARY KEY, title TEXT, system TEXT, max_input_tokens INTEGER,"
                " created_at REAL, updated_at REAL)")
    old.execute("INSERT INTO session VALUES ('s1', 'kept', NULL, NULL, 1.0, 1.0)")
    old.commit()
    old.close()
    db = store.open_database(f"sqlite:///{tmp_path}/old.db")
    try:
        assert "session.model" in store.migrate(db)
        assert pragma(db, "page_size") == 4096 and store.Session.get_by_id("s1").title == "kept"
    finally:
        db.close()


def test_a_saved_session_is_an_upsert_of_its_row_answered_when_applied(persister):
    save = m.SaveSession("s9", "", "be brief", 4000, 2.0)
    assert persister.unknown([save]) == set()  # no message to look up
    plan = persister.plan([save])
    assert [w.op for w in writes(plan, UpsertSession)] == [save] and plan.answers == [m.SessionSaved("s9", 2.0)]
    assert plan.acks == {} and writes(plan, InsertMessage) == []


def test_a_messages_durable_text_is_read_right_as_the_log_moves_on_and_in_another_database():
    """``streamed_texts`` reads each row of the log once (``store._LOG_INDEX``): rows written after a read are read
    too, an emptied table's rows are forgotten, and a database opened next, whose row ids are the same, is read as
    it is."""
    for text in ("first", "second"):  # two databases, one after the other, with the same row ids
        db = store.open_database("sqlite:///:memory:")
        try:
            store.migrate(db)
            store.Session.create(id="s1", title="", created_at=1.0, updated_at=1.0)
            store.Message.create(id="a1", session="s1", position=0, role="assistant", status="streaming",
                                 created_at=1.0, updated_at=1.0)
            with db.atomic():
                store.insert_chunks(db, [(1, "a1", 0, text, False)], 0)
                store.insert_chunks(db, [(2, "a1", len(text), "+", False), (3, "b9", 0, "other", False)], 1)
            assert store.streamed_texts("a1") == (text + "+", "")
            with db.atomic():
                store.insert_chunks(db, [(4, "a1", 0, "thought", True)], 1)  # written after a read: read too
            assert store.streamed_texts("a1") == (text + "+", "thought")
            with db.atomic():
                store.clear_chunks(db, 0)  # (the persister never empties a table a streaming message is in)
            assert store.streamed_texts("a1") == ("", "thought")
            assert set(store._LOG_INDEX) == {("chunk_b", 3), ("chunk_b", 4)}  # the emptied table's row forgotten
        finally:
            db.close()


def test_a_database_directory_made_meanwhile_by_another_process_is_no_error(tmp_path, monkeypatch):
    """``make run`` starts the coordinator and the persister together, and both make data/ if it is missing: the
    one that comes second found it made between its look and its mkdir ("File exists" stopped the persister)."""
    import os
    import stat
    from services.store import database
    directory = tmp_path / "data"
    directory.mkdir()
    real_isdir, looks = os.path.isdir, []

    def isdir(path) -> bool:  # the first look at data/ comes before the other process made it
        if path == str(directory) and not looks:
            looks.append(path)
            return False
        return real_isdir(path)

    monkeypatch.setattr(database.os.path, "isdir", isdir)
    database._private_sqlite_file(str(directory / "chatter.db"), "sqlite:///data/chatter.db")
    assert (directory / "chatter.db").exists()
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
