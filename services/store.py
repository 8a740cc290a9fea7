"""peewee models and database opening. The persister is the only writer; the coordinator
reads sessions it does not have in memory (after a restart) through ``load_session``."""
from __future__ import annotations

import json
import os
import re
import time
import typing
import zlib

import msgspec
import peewee
from playhouse import db_url

from protocol.records import MessageRecord

db_proxy = peewee.DatabaseProxy()

STREAMING = "streaming"
TERMINAL_STATUSES = ("completed", "cancelled", "error", "interrupted")


class JSONField(peewee.TextField):
    def db_value(self, value):
        return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class BaseModel(peewee.Model):
    class Meta:
        database = db_proxy


class Session(BaseModel):
    id = peewee.CharField(primary_key=True, max_length=64)
    title = peewee.TextField(default="")
    system = peewee.TextField(null=True)
    max_input_tokens = peewee.IntegerField(null=True)
    created_at = peewee.DoubleField()
    updated_at = peewee.DoubleField()
    model = peewee.CharField(max_length=128, null=True)  # the session's own (``/config model=``); None: default
    settings = JSONField(null=True)  # the rest of ``/config``: params, stream, continue_style


class Message(BaseModel):
    id = peewee.CharField(primary_key=True, max_length=64)
    session = peewee.ForeignKeyField(Session, backref="messages", column_name="session_id")
    position = peewee.IntegerField()  # order within the session
    role = peewee.CharField(max_length=16)
    content = peewee.TextField(default="")  # complete once the message is terminal
    reasoning = peewee.TextField(default="")  # a reasoning model's thinking before the answer; as content
    length = peewee.IntegerField(default=0)  # set once the message is terminal; while streaming, see Chunk
    status = peewee.CharField(max_length=16)  # indexed only while streaming (IS_STREAMING below)
    generation_id = peewee.CharField(max_length=64, null=True)  # indexed where set (HAS_GENERATION below)
    prompt_messages = JSONField(null=True)
    prompt_hash = peewee.CharField(max_length=64, null=True)
    preview = peewee.TextField(null=True)
    model = peewee.CharField(max_length=128, null=True)
    params = JSONField(null=True)
    content_hash = peewee.CharField(max_length=64, null=True)
    stats = JSONField(null=True)  # tokens, tokens_source, ttft_ms, duration_ms, tok_per_s, queue_wait_ms
    error = peewee.TextField(null=True)
    superseded = peewee.BooleanField(default=False)  # replaced by a regenerated reply; kept, never prompted
    client_request_id = peewee.CharField(max_length=128, null=True)  # makes a retried send idempotent
    dropped_message_ids = JSONField(null=True)  # left out of this reply's prompt to fit the budget
    created_at = peewee.DoubleField()
    updated_at = peewee.DoubleField()
    # the prompt by reference (protocol.records.MessageRecord.prompt_ref), from this version on: a copy of each
    # prompt (prompt_messages, preview, dropped_message_ids, as earlier versions kept) grew a session's storage
    # with the square of its length (docs/PERFORMANCE.md, "A prompt stored once")
    prompt_ref = JSONField(null=True)
    tool_calls = JSONField(null=True)  # the tools the reply called (protocol.records.MessageRecord.tool_calls)


class Chunk(BaseModel):
    """Checkpointed text of streaming messages: an append-only log. Rows only ever go at its end, with
    ids the persister assigns in order (a commit's appends in one row: ``insert_chunks``), and there is no index
    to keep sorted: an index on (message, offset) took a page write per growing reply per commit (about 170 disk
    bytes per content byte at 1000 streams). A finalized message's text is folded into Message.content.

    The log is two tables in turn (``CHUNK_LOG``): rows go into one, and the other, once no streaming message
    has rows in it, is emptied whole (``clear_chunks``) and takes the rows next. Cutting the log's front row by
    row rewrote every page it emptied. The message id is not a foreign key: SQLite empties a table that is
    the child of one row by row too, and only the persister writes here, never for a message without its row
    (``PersisterCore._append``); messages are never deleted. Measured (docs/PERFORMANCE.md, "Database bytes";
    ``bench/persister_bytes.py``): 24.2 -> 19.9 disk bytes per content byte at 1000 streams, 25.2 -> 20.6 at 50.
    The persister decides when (``services/persister/core.py: PersisterCore.plan``)."""

    message = peewee.CharField(max_length=64, column_name="message_id")
    offset = peewee.IntegerField()
    text = peewee.TextField()
    thinking = peewee.BooleanField(default=False)  # a row of the thinking, a text of its own with its own offsets
    # a commit's rows in one (``insert_chunks``); the columns above are then empty. An earlier version's rows are
    # plain, one append each, and read as they are.
    packed = peewee.BlobField(null=True)


class ChunkB(Chunk):
    """The chunk log's second table: the same columns (``Chunk``)."""

    class Meta:
        table_name = "chunk_b"


CHUNK_LOG = (Chunk, ChunkB)  # the log's two tables, in the order of their numbers (``half``)


# Partial indexes: a row is in one only while it matches, so a reply's finalize leaves the streaming index
# instead of moving its entry across a status index, and user messages (no generation) are in neither. Written
# as SQL, not bound parameters: a prepared statement's parameter cannot prove an index's WHERE. The queries
# below spell the same terms. Measured (bench/persister_bytes.py --frames, 1000 replies, 1000 at once, a commit
# every 50 ms): the full status index's pages were 3.6 of the 30.7 log bytes per content byte, the generation
# index's 2.2; with these, 27.7 in all (docs/PERFORMANCE.md, "Database bytes").
IS_STREAMING = peewee.SQL(f"\"status\" = '{STREAMING}'")
HAS_GENERATION = peewee.SQL('"generation_id" IS NOT NULL')
Message.add_index(Message.status, where=IS_STREAMING, name="message_streaming")
Message.add_index(Message.generation_id, where=HAS_GENERATION, name="message_generation")

# Indexes of earlier versions; dropped by ``migrate``: the chunk log's, and the message table's full ones.
OLD_INDEXES = {"chunk": ("chunk_message_id_offset", "chunk_message_id"),
               "message": ("message_status", "message_generation_id")}

MODELS = (Session, Message, Chunk, ChunkB)


def migrate(db: peewee.Database) -> list[str]:
    """Create the tables and indexes, add columns that a database from an earlier version lacks, and drop the
    indexes of earlier versions. Returns what it changed."""
    from playhouse.migrate import SchemaMigrator, migrate as run

    db.create_tables(MODELS, safe=True)
    migrator = SchemaMigrator.from_database(db)
    changes = []
    for table in CHUNK_LOG:  # the log of an earlier version referenced its messages: rebuilt without
        if db.get_foreign_keys(table._meta.table_name):
            _rebuild_without_foreign_key(db, table)
            changes.append(f"{table._meta.table_name}: no foreign key")
    for table, names in OLD_INDEXES.items():
        existing = {index.name for index in db.get_indexes(table)}
        for name in names:
            if name in existing:
                db.execute_sql(f"DROP INDEX {name}")
                changes.append(f"-index {name}")
    for model in MODELS:
        have = {column.name for column in db.get_columns(model._meta.table_name)}
        for field in model._meta.sorted_fields:
            if field.column_name not in have:
                run(migrator.add_column(model._meta.table_name, field.column_name, field))
                changes.append(f"{model._meta.table_name}.{field.column_name}")
    return changes


def _rebuild_without_foreign_key(db: peewee.Database, table) -> None:
    """The table made again from its model, with its rows (the chunk log's: recent and streaming text only)."""
    name, columns = table._meta.table_name, ", ".join(f'"{c}"' for c in _PLAIN_CHUNK_COLUMNS)

    class Rebuilt(table):
        class Meta:
            table_name = f"{name}_rebuilt"

    with db.atomic():
        Rebuilt.create_table()
        db.execute_sql(f'INSERT INTO "{name}_rebuilt" ({columns}) SELECT {columns} FROM "{name}"')
        db.execute_sql(f'DROP TABLE "{name}"')
        db.execute_sql(f'ALTER TABLE "{name}_rebuilt" RENAME TO "{name}"')


class DatabaseUrlError(Exception):
    """CHATTER_DATABASE_URL cannot be used: the sentence says why and what would be right."""


class DatabaseUnreachable(DatabaseUrlError):
    """The database server of CHATTER_DATABASE_URL does not answer (not up yet, restarting, or away): a
    setting that may work in a moment, unlike a wrong password or a database that does not exist."""

    def __init__(self, words: str, db: peewee.Database) -> None:
        super().__init__(words)
        self.db = db  # not connected: it connects on its first query


# What a server's driver says when nothing answers there (yet); anything else is a setting to change.
UNREACHABLE_WORDS = ("connection refused", "could not connect", "timeout expired", "no such file or directory",
                     "the database system is starting up", "the database system is shutting down",
                     "the database system is in recovery mode", "network is unreachable", "no route to host",
                     "could not translate host name", "name or service not known", "temporary failure in name",
                     "server closed the connection", "connection timed out")


def is_unreachable(exc: BaseException) -> bool:
    words = str(exc).lower()
    return any(phrase in words for phrase in UNREACHABLE_WORDS)


SQLITE_PREFIX = "sqlite:///"
# A new database's pages are 1 KB, not SQLite's 4 KB: a commit writes a whole page of each tree it touches (the
# chunk log's end, the message table's, a page of each index), mostly to change a few dozen bytes, and each page
# goes to the write-ahead log and again into the file. Measured (docs/PERFORMANCE.md, "Database bytes": the
# persister's disk bytes per content byte, ``bench/persister_bytes.py``): 57.3 -> 32.6 at 50 streams with a commit
# every 250 ms, 33.6 -> 31.1 at 1000 with one every 66 ms; 512-byte pages wrote more than 1 KB ones at 1000
# (35.8) and no fewer at 50 (33.4). It must come before WAL mode, which fixes the size of a new file; a database
# made with other pages keeps them (the pragma changes nothing there).
SQLITE_PAGE_SIZE = 1024
# SQLite copies the log into the file once it holds this many pages (its default, 1000, is counted in pages): 4 MB
# of 1 KB pages, the log's size with SQLite's defaults. At 1000 pages, 1 MB, the same pages were copied four times
# as often: 31.0 against 25.0 disk bytes per content byte in the harness above, 1000 streams, 4000 replies. A 16 MB
# log wrote less again (12.4 against 15.6 in the harness; 10.9 against 11.4 in load tests at 1000 streams) but cost
# every process on the machine 5-8% more CPU per token and the burst's first token ~100 ms (four pairs alternating
# in order, docs/PERFORMANCE.md, "A 16 MB log, measured again and not kept").
SQLITE_WAL_PAGES = 4096
SQLITE_PRAGMAS = {"page_size": SQLITE_PAGE_SIZE, "busy_timeout": 5000, "journal_mode": "wal", "synchronous": "normal",
                  "wal_autocheckpoint": SQLITE_WAL_PAGES, "foreign_keys": 1}
OPEN_LOCKED_TRIES = 50  # 0.1 s apart: see ``open_database``


def describe_url(url: str) -> str:
    """The URL as it may be shown: without its password."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", url)


def open_database(url: str) -> peewee.Database:
    """Open (and connect to) the database of ``url``, or raise ``DatabaseUrlError`` with what to change.
    SQLite files are private to their user: the directory 0700, the database and its WAL 0600."""
    shown = f"CHATTER_DATABASE_URL={describe_url(url)}"
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in db_url.schemes:
        raise DatabaseUrlError(f"{shown} is not a database URL this persister knows; use sqlite:///PATH "
                               "or postgresql://USER:PASSWORD@HOST:PORT/NAME")
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX):]
        if path and path != ":memory:":
            _private_sqlite_file(path, shown)
        db = db_url.connect(url, pragmas=SQLITE_PRAGMAS)
    else:
        # psycopg 3 (measured: its executemany is ~8x psycopg2's for bulk inserts), whichever is installed
        extra = {"prefer_psycopg3": True} if scheme.split("+")[0] in ("postgres", "postgresql", "postgresext",
                                                                     "postgresqlext") else {}
        try:
            db = db_url.connect(url, **extra)
        except (RuntimeError, ValueError) as exc:
            raise DatabaseUrlError(f"{shown}: {exc}") from None
    try:
        for attempt in range(OPEN_LOCKED_TRIES):
            try:
                db.connect(reuse_if_open=True)
                break
            except peewee.OperationalError as exc:
                # two processes opening a new SQLite file at once both switch it to WAL, which takes a lock
                # that SQLite refuses at once rather than wait for (a deadlock to it): try again shortly
                if "locked" not in str(exc) or attempt == OPEN_LOCKED_TRIES - 1:
                    raise
                reset_connection(db)
                time.sleep(0.1)
    except peewee.ImproperlyConfigured as exc:
        raise DatabaseUrlError(f"{shown} needs a database driver that is not installed ({exc})") from None
    except peewee.DatabaseError as exc:
        words = f"cannot open the database of {shown}: {' '.join(str(exc).split())}"
        if not url.startswith(SQLITE_PREFIX) and is_unreachable(exc):
            reset_connection(db)
            db_proxy.initialize(db)
            _LOG_INDEX.clear()
            raise DatabaseUnreachable(words, db) from None
        raise DatabaseUrlError(words) from None
    db_proxy.initialize(db)
    _LOG_INDEX.clear()  # another database's log, maybe with the same row ids
    return db


def _private_sqlite_file(path: str, shown: str) -> None:
    """Create the database's directory 0700 and its file 0600 (SQLite gives its WAL and shared-memory files
    the database file's mode), and tighten files of ours that an earlier version left readable."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise DatabaseUrlError(f"{shown} names a directory; give the path of a database file in it")
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
            os.chmod(directory, 0o700)
        elif _owned(directory) and all(name.startswith(os.path.basename(path)) for name in os.listdir(directory)):
            os.chmod(directory, 0o700)  # a directory of this database alone (data/ of an earlier version)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # an empty file is an empty database
        for name in (path, path + "-wal", path + "-shm", path + "-journal"):
            try:
                if _owned(name):
                    os.chmod(name, 0o600)
            except FileNotFoundError:  # absent, or gone meanwhile: another process's SQLite removed its journal
                pass
    except OSError as exc:
        raise DatabaseUrlError(f"cannot create the database of {shown}: {exc.strerror} ({exc.filename})") from None


def _owned(path: str) -> bool:
    return os.stat(path).st_uid == os.getuid()


BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


def backoff_s(failures: int) -> float:
    """Wait before try ``failures + 1`` of a failing database: 0.1 s, doubling, at most 5 s."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, failures - 1))


def ping(db: peewee.Database) -> None:
    """One round trip to the database: raises when it cannot be reached."""
    db.execute_sql("SELECT 1").fetchone()


def reset_connection(db: peewee.Database) -> None:
    """Drop a connection that may be dead (a database server that restarted): the next query opens a new one."""
    try:
        db.close()
    except Exception:  # closing a broken connection can fail too; it is gone either way
        db._state.reset()


def file_identity(db: peewee.Database) -> tuple[int, int] | None:
    """(device, inode) of a SQLite database's file, to notice it being deleted or replaced; None when it is
    gone, or for a database that is not a file."""
    if not isinstance(db, peewee.SqliteDatabase) or db.database in ("", ":memory:"):
        return None
    try:
        info = os.stat(db.database)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


# ---------------------------------------------------------------- the persister's writes and reads (its only writer)


def create_messages(db: peewee.Database, sessions: list, messages: list) -> None:
    """The rows of a run of ``CreateMessage``s: each one's session created if new, with its settings as of its
    last message here; then each message of ``messages`` at its session's message count, in order.

    Two executemany and one count for the run: peewee builds a query in ~150-300 µs, and a row at a time took
    four (insert, update, count, insert) per message, 90% of the persister under a burst of new sessions
    (py-spy; docs/PERFORMANCE.md, "A burst of new requests")."""
    if sessions:
        rows = [_row(_SESSION_COLUMNS, dict(id=op.session_id, title=op.session_title, system=op.session_system,
                                            max_input_tokens=op.session_max_input_tokens, created_at=op.created_at,
                                            updated_at=op.created_at, model=op.session_model,
                                            settings=_json(op.session_settings))) for op in sessions]
        db.cursor().executemany(_insert_sql(db, Session, _SESSION_COLUMNS, _SESSION_UPSERT), rows)
    if not messages:
        return
    counts = dict(_rows_in(db, 'SELECT "session_id", COUNT("id") FROM "message"', "session_id",
                           list({op.session_id for op in messages}), ' GROUP BY "session_id"'))
    rows = []
    for op in messages:
        position = counts.get(op.session_id, 0)
        counts[op.session_id] = position + 1
        rows.append(_row(_MESSAGE_COLUMNS, dict(
            id=op.message_id, session_id=op.session_id, position=position, role=op.role, content=op.content,
            reasoning="", length=len(op.content), status=op.status, generation_id=op.generation_id,
            prompt_messages=_json(op.prompt_messages), prompt_hash=op.prompt_hash, preview=op.preview,
            model=op.model, params=_json(op.params), content_hash=None, stats=None, error=None, superseded=False,
            client_request_id=op.client_request_id, dropped_message_ids=_json(op.dropped_message_ids),
            created_at=op.created_at, updated_at=op.created_at, prompt_ref=_json(op.prompt_ref), tool_calls=None)))
    db.cursor().executemany(_insert_sql(db, Message, _MESSAGE_COLUMNS), rows)


def _rows_in(db: peewee.Database, select: str, column: str, values: list, tail: str = "") -> list[tuple]:
    """The rows of ``select`` whose ``column`` is one of ``values``, as plain SQL. py-spy of the persister in a
    1000-request burst put 12.5% of it in peewee building the count query of ``create_messages``; measured
    (``timeit``, 16 sessions, SQLite in memory): 189-210 µs a count through peewee, 7 µs through this."""
    if not values:
        return []
    return db.execute_sql(f'{select} WHERE "{column}" IN ({", ".join([db.param] * len(values))}){tail}',
                          values).fetchall()


def _row(columns: tuple[str, ...], values: dict) -> tuple:
    """``values`` in the table's column order; a column without a value is a KeyError at the first write, never
    a silent NULL (peewee's defaults are its own, not the table's)."""
    return tuple(values[column] for column in columns)


# the columns as the models name them; the chunk log's rows come from the core in this order
_SESSION_COLUMNS = tuple(f.column_name for f in Session._meta.sorted_fields)
_MESSAGE_COLUMNS = tuple(f.column_name for f in Message._meta.sorted_fields)
_PLAIN_CHUNK_COLUMNS = ("id", "message_id", "offset", "text", "thinking")  # a row of an earlier version
_CHUNK_COLUMNS = (*_PLAIN_CHUNK_COLUMNS, "packed")
# a session that exists keeps its created_at and takes the rest (SQLite and PostgreSQL spell this alike)
_SESSION_UPSERT = (' ON CONFLICT ("id") DO UPDATE SET '
                   + ", ".join(f'"{c}" = excluded."{c}"' for c in _SESSION_COLUMNS if c not in ("id", "created_at")))
_INSERT_SQL: dict[tuple, str] = {}
_json, _from_json = JSONField().db_value, JSONField().python_value


def _insert_sql(db: peewee.Database, model, columns: tuple[str, ...], suffix: str = "") -> str:
    """A one-row INSERT of these columns in this database's quoting and parameter style, built once."""
    key = (id(db), model, columns, suffix)
    sql = _INSERT_SQL.get(key)
    if sql is None:
        q = db.quote[0] + "{}" + db.quote[1] if isinstance(db.quote, str) and len(db.quote) == 2 else '"{}"'
        sql = _INSERT_SQL[key] = (f"INSERT INTO {q.format(model._meta.table_name)} "
                                  f"({', '.join(q.format(c) for c in columns)}) "
                                  f"VALUES ({', '.join([db.param] * len(columns))}){suffix}")
    return sql


def supersede(message_ids: list[str]) -> None:
    Message.update(superseded=True).where(Message.id.in_(message_ids)).execute()


def insert_chunks(db: peewee.Database, rows: list[tuple[int, str, int, str, bool]], half: int = 0) -> None:
    """Rows (id, message id, offset, text, thinking) at the chunk log's end, in its table ``half``: one row of the
    table holds them all, packed (``_pack_entries``), under the last one's id.

    Why: an append is ~28 bytes of text (a checkpoint of one reply every 250 ms at 20 tok/s), and its own row
    was ~77 bytes with its 32-character message id; written to the log and again when the log is copied into
    the file. Measured (docs/PERFORMANCE.md, "A commit's appends in one packed row"): ``bench/persister_bytes.py``
    19.9 -> 16.0 disk bytes per content byte at 1000 streams and 20.6 -> 18.3 at 50 (packed without zlib: 19.5 and
    19.7); load tests, two pairs alternating, 13.0 / 17.2 -> 10.4 / 10.3 at 1000 streams, 9.8 / 10.4 -> 7.8 / 7.6
    at 50."""
    if rows:
        db.cursor().execute(_insert_sql(db, CHUNK_LOG[half], _CHUNK_COLUMNS),
                            (rows[-1][0], "", 0, "", False, _pack_entries(rows)))


# A packed row's first byte says its layout. This version's (``_COLUMNS``) holds the appends as columns: the ids
# (the first one alone when they follow each other, as the persister assigns them), the message ids (16 bytes
# each where they are 32 lowercase hex digits, as the coordinator makes them), the offsets, the texts, and the
# positions of the thinking's appends; msgpack, then zlib. The first version's rows (a list of the appends as
# tuples, zlib's own header first: 0x78) are read as they are. Why: the message ids were half of a packed row
# (80 random bits each, in 32 characters that zlib cannot fold into fewer than ~20 bytes); a 50-stream load
# test's log, 72 rows, 2,025 appends, 44.1 KB of text: 54.7 KB packed as tuples, 41.3 KB as columns (zlib level
# 6: 51.7 and 40.3, at 10-20% more CPU), ~41 µs a row to pack either way (docs/PERFORMANCE.md, "Message ids as
# bytes").
_COLUMNS = b"\x01"
_HEX_ID = re.compile(r"[0-9a-f]{32}")
_encode_columns = msgspec.msgpack.Encoder().encode
_decode_columns = msgspec.msgpack.Decoder(
    tuple[int | list[int], list[typing.Any], list[int], list[str], list[int]]).decode  # str or bytes (no union)
_decode_tuples = msgspec.msgpack.Decoder(list[tuple[int, str, int, str, bool]]).decode


def _pack_entries(rows: list[tuple[int, str, int, str, bool]]) -> bytes:
    first = rows[0][0]
    ids = first if all(row[0] == first + i for i, row in enumerate(rows)) else [row[0] for row in rows]
    keys = [bytes.fromhex(row[1]) if _HEX_ID.fullmatch(row[1]) else row[1] for row in rows]
    thinking = [i for i, row in enumerate(rows) if row[4]]
    return _COLUMNS + zlib.compress(
        _encode_columns((ids, keys, [row[2] for row in rows], [row[3] for row in rows], thinking)), 1)


def _unpack_entries(packed: bytes) -> list[tuple[int, str, int, str, bool]]:
    packed = bytes(packed)
    if not packed.startswith(_COLUMNS):
        return _decode_tuples(zlib.decompress(packed))
    ids, keys, offsets, texts, thinking = _decode_columns(zlib.decompress(packed[1:]))
    if type(ids) is int:
        ids = range(ids, ids + len(keys))
    thought = set(thinking)
    return [(chunk_id, key.hex() if type(key) is bytes else key, offset, text, i in thought)
            for i, (chunk_id, key, offset, text) in enumerate(zip(ids, keys, offsets, texts, strict=True))]


def log_entries(row) -> list[tuple[int, str, int, str, bool]]:
    """The appends (id, message id, offset, text, thinking) a row of the chunk log holds (its columns in
    ``_CHUNK_COLUMNS`` order): a packed row's, or an earlier version's plain row itself."""
    chunk_id, message_id, offset, text, thinking, packed = row
    if packed is None:
        return [(chunk_id, message_id, offset, text, bool(thinking))]
    return _unpack_entries(packed)


def write_final(message_id: str, status: str, content: str, stats: dict, error: str | None,
                content_hash: str | None, reasoning: str = "", prompt=None, tool_calls: list | None = None) -> None:
    """A message's final row; a reply continued after a fault takes its last segment's prompt (a
    ``ContinuedPrompt``) too."""
    columns = dict(content=content, length=len(content), status=status, stats=stats, error=error,
                   content_hash=content_hash, reasoning=reasoning, updated_at=time.time())
    if tool_calls is not None:
        columns["tool_calls"] = tool_calls
    if prompt is not None:
        columns.update(prompt_messages=prompt.prompt_messages, prompt_hash=prompt.prompt_hash, preview=prompt.preview,
                       prompt_ref=prompt.prompt_ref)
    Message.update(**columns).where(Message.id == message_id).execute()


def write_tool_calls(message_id: str, tool_calls: list) -> None:
    Message.update(tool_calls=tool_calls).where(Message.id == message_id).execute()


def reopen_message(op) -> None:
    """A finalized reply continued (a ``Reopen``): streaming again, as its new generation, with its new prompt.
    Its stored texts are its first chunks (the persister writes them with this)."""
    Message.update(status=STREAMING, generation_id=op.generation_id, prompt_messages=op.prompt.prompt_messages,
                   prompt_hash=op.prompt.prompt_hash, preview=op.prompt.preview, prompt_ref=op.prompt.prompt_ref,
                   error=None,
                   updated_at=time.time()).where(Message.id == op.message_id).execute()


def streaming_ids() -> list[str]:
    return [row[0] for row in Message.select(Message.id).where(IS_STREAMING).tuples().iterator()]


def stored_messages(ids: set[str]) -> list[tuple[str, bool, int, int]]:
    """(id, streaming, length, the thinking's length) of those of these message ids that have a row."""
    rows = _rows_in(db_proxy.obj, 'SELECT "id", "status", "length", LENGTH("reasoning") FROM "message"', "id",
                    list(ids))
    return [(message_id, status == STREAMING, length, reasoning_length or 0)
            for message_id, status, length, reasoning_length in rows]


def final_texts(message_id: str) -> tuple[str, str]:
    """A finalized message's answer and thinking as its row holds them ("", "" when there is no row)."""
    row = Message.select(Message.content, Message.reasoning).where(Message.id == message_id).tuples().first()
    return (row[0] or "", row[1] or "") if row else ("", "")


def streamed_texts(message_id: str) -> tuple[str, str]:
    """The answer and the thinking of a message as durable now: its columns if final, else its chunks in
    order (a scan of the chunk log, which holds only what recent and streaming messages wrote)."""
    msg = Message.get_by_id(message_id)
    if msg.status != STREAMING:
        return msg.content, msg.reasoning
    texts = _ChunkTexts()
    for by_message in _log_rows():
        for _, _, offset, text, thinking in by_message.get(message_id, ()):
            texts.add(offset, text, bool(thinking))
    return "".join(texts.parts[0]), "".join(texts.parts[1])


class _ChunkTexts:
    """A message's texts from its chunk rows in log order, each applied where its offset continues the text (as
    the persister applies appends): a reply continued after it was final has its stored text again as its first
    new rows, and rows of its first stream may still be in the log before them."""

    __slots__ = ("parts", "lengths")

    def __init__(self) -> None:
        self.parts: tuple[list[str], list[str]] = ([], [])
        self.lengths = [0, 0]

    def add(self, offset: int, text: str, thinking: bool) -> None:
        have = self.lengths[thinking]
        if offset <= have < offset + len(text):
            self.parts[thinking].append(text[have - offset:])
            self.lengths[thinking] = offset + len(text)


def streaming_chunks() -> dict[str, tuple[int, list[str], list[str]]]:
    """Every streaming message's checkpointed texts, in one scan of the log: message id -> (its first
    chunk id, its answer's parts in order, its thinking's). A message with no chunk yet is absent."""
    found: dict[str, tuple[int, _ChunkTexts]] = {}
    streaming = set(streaming_ids())
    for by_message in _log_rows():
        for message_id in streaming.intersection(by_message):
            for chunk_id, _, offset, text, thinking in by_message[message_id]:
                if message_id not in found:
                    found[message_id] = (chunk_id, _ChunkTexts())
                found[message_id][1].add(offset, text, bool(thinking))
    return {message_id: (first, texts.parts[0], texts.parts[1]) for message_id, (first, texts) in found.items()}


# The log's rows as this process has read them from the database it opened last: (table, row id) -> the row's
# appends by message id. A row never changes once written and its id is never used again, so only the rows the log
# holds now are kept. Why: a read of one streaming message's text (``load_session``, for every session a restarted
# coordinator reads back) unpacked the whole log: 4.4-6.1 ms a call against 1.7 for the plain rows before (8,192
# appends over 200-1000 messages, CPU time over 50 calls); through this index 0.9-1.5 ms.
_LOG_INDEX: dict[tuple[str, int], dict[str, list]] = {}


def _log_rows() -> list[dict[str, list]]:
    """The chunk log's rows in id order, each as its appends (id, message id, offset, text, thinking) by message id;
    the rows not read before are read and unpacked now, and those no longer in the log are forgotten."""
    global _LOG_INDEX
    index, present = _LOG_INDEX, []
    for table in CHUNK_LOG:
        name = table._meta.table_name
        ids = [row_id for (row_id,) in table.select(table.id).tuples()]
        missing = [row_id for row_id in ids if (name, row_id) not in index]
        for start in range(0, len(missing), 500):
            for row in _log_query(table).where(table.id.in_(missing[start:start + 500])):
                by_message: dict[str, list] = {}
                for entry in log_entries(row):
                    by_message.setdefault(entry[1], []).append(entry)
                index[(name, row[0])] = by_message
        present += [(row_id, name) for row_id in ids]
    present.sort()
    if len(index) > len(present):  # rows emptied since
        _LOG_INDEX = index = {(name, row_id): index[(name, row_id)] for row_id, name in present}
    return [index[(name, row_id)] for row_id, name in present]


def _log_query(table):
    """The rows of one of the log's tables, their columns in ``_CHUNK_COLUMNS`` order, as ``log_entries`` takes them."""
    return table.select(*(getattr(table, f.name) for f in table._meta.sorted_fields)).tuples()


def clear_chunks(db: peewee.Database, half: int) -> None:
    """Empty the chunk log's table ``half``: a DELETE without a condition, which frees its pages without
    visiting its rows. On SQLite its freed pages are not zeroed first (``secure_delete``, on in Debian's
    build, is turned off for this statement alone): they are the log's, whose text the finished replies'
    rows hold, and zeroing them wrote every one of them once more (12.0 against 6.6 bytes per byte logged)."""
    sqlite = isinstance(db, peewee.SqliteDatabase)
    secure = db.execute_sql("PRAGMA secure_delete").fetchone()[0] if sqlite else None
    if sqlite:
        db.execute_sql("PRAGMA secure_delete = 0")
    try:
        db.execute_sql(f'DELETE FROM "{CHUNK_LOG[half]._meta.table_name}"')
    finally:
        if sqlite:
            db.execute_sql(f"PRAGMA secure_delete = {int(secure)}")


def chunk_log_ids() -> list[tuple[int, int] | None]:
    """Each of the log's tables' first and last append id, or None where it is empty (a packed row's id is its last
    append's)."""
    out = []
    for table in CHUNK_LOG:
        first_row, last = table.select(peewee.fn.MIN(table.id), peewee.fn.MAX(table.id)).tuples().get()
        if last is None:
            out.append(None)
            continue
        row = _log_query(table).where(table.id == first_row).get()
        out.append((log_entries(row)[0][0], last))
    return out


# A session's reads as plain SQL, built once from the models: peewee's query building and model instances
# were most of load_session's 1.2 ms of CPU on the coordinator's reader thread (which holds the GIL the
# loop needs); a row is converted by its fields' own python_value (JSON columns, booleans).
_MESSAGE_FIELDS = Message._meta.sorted_fields
_JSON_COLUMNS = [(i, f) for i, f in enumerate(_MESSAGE_FIELDS) if isinstance(f, (JSONField, peewee.BooleanField))]
_SESSION_SQL = "SELECT " + ", ".join(f'"{c}"' for c in _SESSION_COLUMNS) + " FROM session WHERE id = {param}"
_MESSAGES_SQL = (f"SELECT {', '.join(chr(34) + f.column_name + chr(34) for f in _MESSAGE_FIELDS)} FROM message "
                 "WHERE session_id = {param} ORDER BY position")


def message_record(row: dict, content: str, reasoning: str) -> MessageRecord:
    """A message row (column -> value) as the coordinator keeps it in a session's history."""
    return MessageRecord(
        message_id=row["id"], session_id=row["session_id"], role=row["role"], content=content,
        reasoning=reasoning or "", status=row["status"],
        created_at=row["created_at"], generation_id=row["generation_id"], prompt_hash=row["prompt_hash"],
        model=row["model"], stats=row["stats"] or {}, error=row["error"], preview=row["preview"],
        prompt_messages=row["prompt_messages"], params=row["params"], superseded=bool(row["superseded"]),
        client_request_id=row["client_request_id"], dropped_message_ids=row["dropped_message_ids"] or [],
        prompt_ref=row["prompt_ref"], tool_calls=row["tool_calls"] or [])


def load_session(session_id: str) -> dict | None:
    """A session and its messages as plain values, or None. Used by the coordinator on a cache miss."""
    db = db_proxy.obj
    try:
        found = db.execute_sql(_SESSION_SQL.format(param=db.param), (session_id,)).fetchone()
    except peewee.DatabaseError as exc:
        if _no_tables_yet(exc):
            return None
        raise  # a database that cannot be read: the request is refused, and the next read reconnects
    if found is None:
        return None
    names = [f.column_name for f in _MESSAGE_FIELDS]
    messages = []
    for values in db.execute_sql(_MESSAGES_SQL.format(param=db.param), (session_id,)).fetchall():
        values = list(values)
        for index, field in _JSON_COLUMNS:
            values[index] = field.python_value(values[index])
        row = dict(zip(names, values))
        texts = (row["content"], row["reasoning"]) if row["status"] != STREAMING else streamed_texts(row["id"])
        messages.append(message_record(row, *texts))
    session = dict(zip(_SESSION_COLUMNS, found))
    session["session_id"], session["settings"] = session.pop("id"), _from_json(session["settings"])
    return session | {"messages": messages}


HEX_DIGITS = frozenset("0123456789abcdef")


def sessions_with_prefix(prefix: str, shown: int = 5) -> tuple[int, list[str]]:
    """How many session ids start with ``prefix``, and the first ``shown`` of them, by the primary key's index
    (ids are lowercase hex: the range [prefix, prefix + "g") holds exactly them, in any collation)."""
    if not prefix or not set(prefix) <= HEX_DIGITS:
        return 0, []
    db = db_proxy.obj
    where = f"FROM session WHERE id >= {db.param} AND id < {db.param}"
    try:
        ids = [row[0] for row in db.execute_sql(f"SELECT id {where} ORDER BY id LIMIT {db.param}",
                                                (prefix, prefix + "g", shown)).fetchall()]
        count = len(ids) if len(ids) < shown else db.execute_sql(f"SELECT COUNT(*) {where}",
                                                                 (prefix, prefix + "g")).fetchone()[0]
    except peewee.DatabaseError as exc:
        if _no_tables_yet(exc):
            return 0, []
        raise
    return count, [i for i in ids if i.startswith(prefix)]


# One query whatever the limit, as plain SQL: the sessions, each with its message count and its last
# assistant message's status (by the index on message.session_id). Built by peewee it was three queries
# and 3.8 ms of CPU for 100 sessions on the reader thread, which holds the GIL the coordinator's loop needs;
# this is 0.5 ms (300 stored sessions on PostgreSQL 15, this project's 2-core machine).
LIST_SESSIONS_SQL = (
    "SELECT s.id, s.title, s.updated_at, "
    "(SELECT COUNT(*) FROM message m WHERE m.session_id = s.id), "
    "(SELECT m.status FROM message m WHERE m.session_id = s.id AND m.role = 'assistant' "
    "ORDER BY m.position DESC LIMIT 1) "
    "FROM session s {where}ORDER BY s.updated_at DESC, s.id DESC LIMIT {param}")


def list_sessions(limit: int, before: float | None = None, before_id: str | None = None) -> list[dict]:
    """The most recently active sessions, as summaries (see ``services.coordinator.sessions.summary``); with
    ``before``, those older than the session (``before``, ``before_id``): the next page of a list."""
    db = db_proxy.obj
    where, params = "", (max(1, limit),)
    if before is not None:
        where = f"WHERE s.updated_at < {db.param} OR (s.updated_at = {db.param} AND s.id < {db.param}) "
        params = (before, before, before_id or "", max(1, limit))
    try:
        rows = db.execute_sql(LIST_SESSIONS_SQL.format(where=where, param=db.param), params).fetchall()
    except peewee.DatabaseError as exc:
        if _no_tables_yet(exc):
            return []
        raise
    return [{"session_id": sid, "title": title, "message_count": count, "last_activity": updated,
             "status": status or "empty"} for sid, title, updated, count, status in rows]


def session_of_generation(generation_id: str) -> dict | None:
    """The session (as ``load_session``) that holds a generation's message, or None (by message.generation_id's
    partial index: an equality implies it is set)."""
    row = Message.select(Message.session).where(Message.generation_id == generation_id).tuples().first()
    return load_session(row[0]) if row else None


def find_message_session(message_id: str) -> str | None:
    try:
        msg = Message.get_or_none(Message.id == message_id)
    except peewee.DatabaseError as exc:
        if _no_tables_yet(exc):
            return None
        raise
    return None if msg is None else msg.session_id


def _no_tables_yet(exc: Exception) -> bool:
    """The persister, which creates the schema, has not started yet: nothing is stored, which is no error."""
    words = str(exc)
    return "no such table" in words or ("relation" in words and "does not exist" in words)
