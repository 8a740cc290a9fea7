"""Chatter on a real PostgreSQL server that the suite starts itself (tools/pgserver.py): replies persist
with their exact text, a server restart while replies stream loses nothing, a bad URL is one line."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
import pytest

from services import store
from services.mock_llm.script import reply_text
from tests.integration.stack import Stack, wait_until
from tools.spawn import REPO

MODEL = "mock-1"


@pytest.fixture(scope="module")
def postgres(postgres_server):
    return postgres_server()


@pytest.fixture
def pg_stack(postgres, tmp_path):
    with psycopg.connect(postgres.url, autocommit=True) as conn:  # each test starts from an empty database
        conn.execute("DROP TABLE IF EXISTS chunk, chunk_b, message, session CASCADE")
    stack = Stack(tmp_path / "stack", CHATTER_DATABASE_URL=postgres.url, CHATTER_PERSIST_RESEND_MS="500")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def rows(url: str, session_id: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT role, content, status FROM message WHERE session_id = %s ORDER BY position",
                            (session_id,)).fetchall()


def expected(text: str, tokens: int) -> str:
    return reply_text([{"role": "user", "content": text}], MODEL, tokens)


def test_replies_persist_on_postgresql_with_their_exact_text(pg_stack, postgres):
    out = pg_stack.cli_json("send", "on postgres [[mock tokens=60]]")
    assert out["status"] == "completed" and out["content"] == expected("on postgres [[mock tokens=60]]", 60)
    again = pg_stack.cli_json("send", "and again [[mock tokens=20]]", "--session", out["session_id"])
    assert again["status"] == "completed"
    assert rows(postgres.url, out["session_id"]) == [
        ("user", "on postgres [[mock tokens=60]]", "completed"), ("assistant", out["content"], "completed"),
        ("user", "and again [[mock tokens=20]]", "completed"), ("assistant", again["content"], "completed")]
    preview = pg_stack.cli_json("preview", again["message_id"])
    assert preview["prompt_hash"] == again["prompt_hash"]
    assert [s["session_id"] for s in pg_stack.cli_json("sessions")] == [out["session_id"]]
    with psycopg.connect(postgres.url) as conn:  # the chunk log held the streaming text, offsets in order
        log = conn.execute("SELECT * FROM chunk UNION ALL SELECT * FROM chunk_b ORDER BY id").fetchall()
    chunks = [(offset, text) for row in log for _, message_id, offset, text, _ in store.log_entries(row)
              if message_id == out["message_id"]]
    assert "".join(text for _, text in chunks) == out["content"][:sum(len(t) for _, t in chunks)]
    assert [offset for offset, _ in chunks] == sorted(offset for offset, _ in chunks)


def test_a_postgresql_restart_while_replies_stream_loses_nothing(pg_stack, postgres):
    texts = [f"through a restart {i} [[mock tokens=200 tps=50]]" for i in range(20)]

    def restart_mid_stream():
        time.sleep(1.5)  # mid-stream: checkpoints are being written
        postgres.restart("fast")

    logged = len(pg_stack.log("persister"))
    outs = pg_stack.send_all(texts, meanwhile=restart_mid_stream)
    assert [o["status"] for o in outs] == ["completed"] * len(texts)
    assert [o["content"] for o in outs] == [expected(text, 200) for text in texts]
    for text, out in zip(texts, outs):
        assert rows(postgres.url, out["session_id"]) == [("user", text, "completed"),
                                                        ("assistant", out["content"], "completed")]
    # it lost its connection and took a new one: noticed by a batch that failed (and was tried again), or first by the
    # idle persister's check of its database, whichever the restart met (both are logged)
    log = pg_stack.log("persister")[logged:]
    assert "batch_failed" in log or "database_unreachable" in log, log[-3000:]
    status = pg_stack.cli_json("status")["persister"]
    assert status["failing_since"] is None and (status["failed_batches"] >= 1) == ("batch_failed" in log)
    after = pg_stack.cli_json("send", "after the restart [[mock tokens=10]]")
    assert after["status"] == "completed" and rows(postgres.url, after["session_id"])[1][2] == "completed"


def test_while_postgresql_is_away_status_says_so_and_a_reply_ends_unsaved_then_is_saved(pg_stack, postgres):
    first = pg_stack.cli_json("send", "before the outage [[mock tokens=10]]")
    assert first["status"] == "completed"
    postgres.halt("fast")
    try:
        away = wait_until(lambda: (s := pg_stack.cli_json("status"))["database_reachable"] is False and s,
                          what="status saying the database is unreachable")  # the idle persister's own check
        assert away["persister_connected"] and away["unsaved"] == 0 and away["persister"]["last_error"]
        text = "while the database is away [[mock tokens=40]]"
        env = pg_stack.env | {"CHATTER_DURABLE_WAIT_MS": "2000"}
        done = subprocess.run([*pg_stack.cli_argv(), "send", text, "--session", first["session_id"], "--json"],
                              env=env, cwd=pg_stack.cwd, capture_output=True, timeout=60)
        out = json.loads(done.stdout)
        assert done.returncode == 1 and out["status"] == "completed" and out["saved"] is False
        assert out["content"] == expected_in_session(first, text, 40)  # complete on the client
        assert "not saved yet" in done.stderr.decode()
        waiting = pg_stack.cli_json("status")
        assert waiting["unsaved"] >= 1 and waiting["oldest_unsaved_ms"] >= 2000
        assert waiting["persister"]["failed_batches"] >= 1 and waiting["persister_connected"]
        plain = pg_stack.cli("status").stdout.decode()
        assert "database: FAILING" in plain and "not saved yet: " in plain and "persister: connected" in plain
        listing = pg_stack.cli("sessions")  # a read of the coordinator's own: refused, not hung
        assert listing.returncode != 0 and "could not read the database" in listing.stderr.decode()
        assert pg_stack.cli_json("status")["reads_error"]
    finally:
        postgres.pg_ctl_start()
    row = pg_stack.wait_db_status(out["message_id"], ("completed",), timeout=60)  # saved once it is back
    assert row["content"] == out["content"]
    back = wait_until(lambda: (s := pg_stack.cli_json("status"))["database_reachable"] and s["unsaved"] == 0 and s,
                      what="status saying the database is back")
    assert back["persister"]["failing_since"] is None
    sessions = wait_until(lambda: pg_stack.cli("sessions", "--json").returncode == 0 and pg_stack.cli_json("sessions"),
                          what="the sessions list read again")  # the reader reconnected after its backoff
    assert [row["session_id"] for row in sessions] == [first["session_id"]]
    assert pg_stack.cli_json("status")["reads_failing_since"] is None


def expected_in_session(first: dict, text: str, tokens: int) -> str:
    history = [{"role": "user", "content": "before the outage [[mock tokens=10]]"},
               {"role": "assistant", "content": first["content"]}, {"role": "user", "content": text}]
    return reply_text(history, MODEL, tokens)


def test_a_bad_password_is_one_line_naming_the_setting(postgres, tmp_path):
    env = Stack(tmp_path / "bad").env | {"CHATTER_DATABASE_URL": postgres.url.replace("chatter-test-password",
                                                                                      "wrong")}
    done = subprocess.run([sys.executable, "-m", "services.persister"], env=env, cwd=REPO, capture_output=True,
                          timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "CHATTER_DATABASE_URL" in err and "wrong" not in err  # the password is not shown


def test_hammering_the_coordinators_reads_while_200_replies_stream(postgres, tmp_path):
    """The sessions list, prefix resolution and the history of sessions not in memory, asked for as fast as
    4 clients can while 200 replies stream: every answer right, every stream exact. The delivery p99 with and
    without the hammering, in one run, is reported (a figure, not an assertion: the machine is shared)."""
    from tools.hammer import quiet_and_hammered
    stack = Stack(tmp_path / "stack", CHATTER_DATABASE_URL=postgres.new_database("hammer"),
                  CHATTER_MAX_CACHED_SESSIONS="20", CHATTER_GENERATOR_CONCURRENCY="256")
    try:
        stack.start()
        figures = quiet_and_hammered(stack, streams=200, tokens=60, tps=20.0, stored=60)
    finally:
        stack.stop()
    print("hammer figures:", json.dumps(figures))
    (hammered,) = figures["hammered"]
    for report in (figures["quiet"], hammered["report"]):
        assert report["completed"] == 200 and report["mismatches"] == 0 and report["errors"] == 0
    hammer = hammered["hammer"]
    assert hammer["wrong"] == 0 and hammer["refused"] == 0 and hammer["rounds"] >= 20
    assert hammered["database_reads"] >= hammer["rounds"]  # the sessions came from the database, not memory
    assert hammered["delivery_p99_ratio"] is not None


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_earlier_versions_full_indexes_become_partial_ones_that_the_persisters_reads_use(kind, postgres_server,
                                                                                         tmp_path):
    """The message table's status and generation indexes of earlier versions are dropped for partial ones
    (only streaming rows, only rows with a generation), and the lookups by status and generation find their
    rows through them, on both databases. The session table gets the settings columns it lacked."""
    if kind == "postgresql":
        url = postgres_server().url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS chunk, chunk_b, message, session CASCADE")
        explain, no_scan = "EXPLAIN ", "SET enable_seqscan = off"  # an empty table is scanned, index or not
    else:
        url, explain, no_scan = f"sqlite:///{tmp_path / 'chatter.db'}", "EXPLAIN QUERY PLAN ", None
    db = store.open_database(url)
    try:
        db.create_tables(store.MODELS)
        for name in ("message_streaming", "message_generation"):  # the schema as an earlier version made it
            db.execute_sql(f"DROP INDEX {name}")
        db.execute_sql('CREATE INDEX "message_status" ON "message" ("status")')
        db.execute_sql('CREATE INDEX "message_generation_id" ON "message" ("generation_id")')
        for column in ("model", "settings"):  # a session row of before: no settings of its own
            db.execute_sql(f'ALTER TABLE "session" DROP COLUMN "{column}"')
        changes = {c for c in store.migrate(db) if "search" not in c and "fts" not in c}  # the index: test_search
        assert changes == {"-index message_status", "-index message_generation_id", "session.model",
                           "session.settings"}
        assert store.migrate(db) == []
        assert {i.name for i in db.get_indexes("message")} >= {"message_streaming", "message_generation"}
        assert not {i.name for i in db.get_indexes("message")} & {"message_status", "message_generation_id"}
        store.Session.create(id="s1", title="", created_at=1.0, updated_at=1.0)
        for i, (status, generation) in enumerate([("completed", None), ("streaming", "g1"), ("completed", "g2")]):
            store.Message.create(id=f"m{i}", session="s1", position=i, role="assistant", status=status,
                                 generation_id=generation, created_at=1.0, updated_at=1.0)
        assert store.streaming_ids() == ["m1"]
        stored = store.load_session("s1")
        assert (stored["model"], stored["settings"], len(stored["messages"])) == (None, None, 3)
        assert store.session_of_generation("g2")["session_id"] == "s1" and store.session_of_generation("g9") is None
        if no_scan:
            db.execute_sql(no_scan)
        plans = {}
        for name, query in (("message_streaming", store.Message.select(store.Message.id).where(store.IS_STREAMING)),
                            ("message_generation", store.Message.select(store.Message.session).where(
                                store.Message.generation_id == "g2"))):
            sql, params = query.sql()
            plans[name] = " ".join(str(row) for row in db.execute_sql(explain + sql, params).fetchall())
        assert all(name in plan for name, plan in plans.items()), plans
    finally:
        db.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_earlier_versions_chunk_log_loses_its_foreign_key_and_keeps_its_rows(kind, postgres_server, tmp_path):
    """The chunk log of an earlier version referenced its messages; ``migrate`` makes it again without (a child
    table of a foreign key is emptied row by row), with its rows, on both databases. A persister started on it
    reads its streaming text back, writes on after its last row, and empties a table whole."""
    import peewee
    from services.persister.core import PersisterCore
    if kind == "postgresql":
        url = postgres_server().url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS chunk, chunk_b, message, session CASCADE")
    else:
        url = f"sqlite:///{tmp_path / 'chatter.db'}"
    db = store.open_database(url)

    class EarlierChunk(store.BaseModel):  # as earlier versions made the table
        message = peewee.ForeignKeyField(store.Message, column_name="message_id", on_delete="CASCADE", index=False)
        offset = peewee.IntegerField()
        text = peewee.TextField()
        thinking = peewee.BooleanField(default=False)

        class Meta:
            table_name = "chunk"

    try:
        db.create_tables([store.Session, store.Message, EarlierChunk])
        assert db.get_foreign_keys("chunk")
        store.Session.create(id="s1", title="", created_at=1.0, updated_at=1.0)
        store.Message.create(id="a1", session="s1", position=0, role="assistant", status="streaming",
                             created_at=1.0, updated_at=1.0)
        for i, text in enumerate(["hello ", "wor"], start=7):
            EarlierChunk.create(id=i, message="a1", offset=len("hello ") * (i - 7), text=text)
        assert {c for c in store.migrate(db) if "search" not in c and "fts" not in c} == {"chunk: no foreign key"}
        assert store.migrate(db) == [] and not db.get_foreign_keys("chunk") and not db.get_foreign_keys("chunk_b")
        assert store.streaming_chunks() == {"a1": (7, ["hello ", "wor"], [])}
        assert store.chunk_log_ids() == [(7, 8), None]
        core = PersisterCore()
        core.load(store.streaming_ids(), store.streaming_chunks(), store.chunk_log_ids())
        assert core.next_chunk_id == 9 and core.open["a1"].text(False) == "hello wor"
        with db.atomic():
            store.insert_chunks(db, [(9, "a1", 9, "ld", False)], 1)
        assert store.streamed_texts("a1") == ("hello world", "")
        secure = db.execute_sql("PRAGMA secure_delete").fetchone() if kind == "sqlite" else None
        with db.atomic():
            store.clear_chunks(db, 0)
        assert store.chunk_log_ids() == [None, (9, 9)]
        if kind == "sqlite":  # secure_delete is back as it was for everything else
            assert db.execute_sql("PRAGMA secure_delete").fetchone() == secure
    finally:
        db.close()


def test_postgresql_down_at_start_is_waited_for_and_status_is_current_when_it_is_back(postgres, tmp_path):
    """The stack starts while the server is down: the persister waits (naming host, port and error once),
    status says the database is away, a reply streams meanwhile and is saved once the server is up; then
    status clears by itself, with no read asked for, and keeps the time of the last failure."""
    url = postgres.new_database("late")
    stack = Stack(tmp_path / "stack", CHATTER_DATABASE_URL=url, CHATTER_PERSIST_RESEND_MS="500")
    postgres.halt("fast")
    try:
        try:
            stack.start("mock_llm", "coordinator", "generator")
            stack.start("persister", wait=False)
            away = wait_until(lambda: (s := stack.cli_json("status"))["database_reachable"] is False and s,
                              what="status saying the database is away")
            assert away["persister_connected"] and "Connection refused" in away["persister"]["last_error"]
            assert away["reads_failing_since"] is not None  # the coordinator's own reads: away too
            plain = stack.cli("status").stdout.decode()
            assert "database: FAILING" in plain and "coordinator's reads: FAILING" in plain, plain
            waiting = [line for line in stack.log("persister").splitlines() if "database_unreachable" in line]
            assert len(waiting) == 1 and f"127.0.0.1:{postgres.port}" in waiting[0], waiting  # once, not per try
            assert "chatter-test-password" not in stack.log("persister")
            listing = stack.cli("sessions")
            assert listing.returncode != 0 and "could not read the database" in listing.stderr.decode()
            send = stack.spawn_cli("send", "while the server is down [[mock tokens=30]]", "--json")
            time.sleep(2.0)  # it streams to its end meanwhile; what it needs of the database waits
        finally:
            postgres.pg_ctl_start()
        out, err = send.communicate(timeout=90)
        reply = json.loads(out)
        assert send.returncode == 0 and reply["status"] == "completed" and reply["saved"] is True, err.decode()
        assert rows(url, reply["session_id"]) == [("user", "while the server is down [[mock tokens=30]]",
                                                   "completed"), ("assistant", reply["content"], "completed")]
        back = wait_until(lambda: (s := stack.cli_json("status"))["reads_failing_since"] is None
                          and s["database_reachable"] and s, what="status clearing by itself")
        assert back["reads_last_failed_at"] is not None and back["reads_last_error"]
        assert back["persister"]["last_failed_at"] is not None and back["persister"]["failing_since"] is None
        plain = stack.cli("status").stdout.decode()
        assert "FAILING" not in plain and "coordinator's reads: working (last failed" in plain, plain
        assert "database: reachable (last failed" in plain, plain
        assert "database_reachable" in stack.log("persister")
    finally:
        stack.stop()


def test_a_second_persister_on_the_same_postgresql_database_is_refused(pg_stack, postgres):
    """The first holds an advisory lock on its connection: the second says so in one line and exits 1, and the
    first goes on writing."""
    done = subprocess.run([sys.executable, "-m", "services.persister"], env=pg_stack.env, cwd=REPO,
                          capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "another persister already writes" in err and "chatter-test-password" not in err
    after = pg_stack.cli_json("send", "after the second persister [[mock tokens=10]]")
    assert after["status"] == "completed" and rows(postgres.url, after["session_id"])[1][2] == "completed"
