"""The database's tables as peewee models, their indexes, and ``migrate``, which brings a database of an earlier
version to them. ``db_proxy`` is the database the process opened last (``database.open_database``)."""
from __future__ import annotations

import json

import peewee

from protocol.lifecycle import FINAL, Status

db_proxy = peewee.DatabaseProxy()

STREAMING = Status.STREAMING.value  # in SQL as it is
TERMINAL_STATUSES = tuple(sorted(FINAL))


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
    # given by hand (``chatter rename``): kept over the automatic one; NULL (a row written without it) is False
    title_set = peewee.BooleanField(null=True, default=False)
    # the last message of the active branch (DESIGN.md, "Sessions are trees"); NULL: the newest message that an
    # earlier version did not supersede
    active_leaf = peewee.CharField(max_length=64, null=True)
    owner = peewee.CharField(max_length=64, null=True)  # the gateway's user whose session it is; NULL: the admin's


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
    # the prompt by reference (protocol.conversation.MessageRecord.prompt_ref), from this version on: a copy of each
    # prompt (prompt_messages, preview, dropped_message_ids, as earlier versions kept) grew a session's storage
    # with the square of its length (docs/PERFORMANCE.md, "A prompt stored once")
    prompt_ref = JSONField(null=True)
    tool_calls = JSONField(null=True)  # the tools the reply called (protocol.conversation.MessageRecord.tool_calls)
    # the message it follows in the session's tree, "" for a first one; NULL in a row of an earlier version, which
    # is read in order (services.coordinator.sessions.SessionState.from_stored)
    parent_id = peewee.CharField(max_length=64, null=True)
    tool_call_id = peewee.CharField(max_length=128, null=True)  # a tool's result (role "tool"): the call it answers
    # the conversation up to a user's message or a tool's result, as one hash (protocol.conversation.turn_chain):
    # how the gateway finds the session of a Chat Completions call that names none
    chain = peewee.CharField(max_length=64, null=True)


class ApiUser(BaseModel):
    """A user of the gateway: the sha256 of the token it signs in with, never the token."""

    name = peewee.CharField(primary_key=True, max_length=64)
    token_hash = peewee.CharField(max_length=64, unique=True)
    created_at = peewee.DoubleField()
    revoked_at = peewee.DoubleField(null=True)  # set: the token no longer signs in

    class Meta:
        table_name = "api_user"


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


CHUNK_LOG = (Chunk, ChunkB)  # the log's two tables, in the order of their numbers (``table``)


# Partial indexes: a row is in one only while it matches (written as SQL: a bound parameter cannot prove an index's
# WHERE). They saved ~3 of 30.7 log bytes per content byte (PERFORMANCE.md, "The store's measurements").
IS_STREAMING = peewee.SQL(f"\"status\" = '{STREAMING}'")
HAS_GENERATION = peewee.SQL('"generation_id" IS NOT NULL')
Message.add_index(Message.status, where=IS_STREAMING, name="message_streaming")
Message.add_index(Message.generation_id, where=HAS_GENERATION, name="message_generation")
Message.add_index(Message.chain, where=peewee.SQL('"chain" IS NOT NULL'), name="message_chain")
# a gateway user's sessions, newest first (the page's list): only sessions that have an owner are in it
Session.add_index(Session.owner, Session.updated_at, where=peewee.SQL('"owner" IS NOT NULL'), name="session_owner")

# Indexes of earlier versions; dropped by ``migrate``: the chunk log's, and the message table's full ones.
OLD_INDEXES = {"chunk": ("chunk_message_id_offset", "chunk_message_id"),
               "message": ("message_status", "message_generation_id")}

MODELS = (Session, Message, Chunk, ChunkB, ApiUser)
# the chunk log's columns, in the order the persister's core gives a row's values
_PLAIN_CHUNK_COLUMNS = ("id", "message_id", "offset", "text", "thinking")  # a row of an earlier version
_CHUNK_COLUMNS = (*_PLAIN_CHUNK_COLUMNS, "packed")


def migrate(db: peewee.Database) -> list[str]:
    """Create the tables and indexes, add columns that a database from an earlier version lacks, and drop the
    indexes of earlier versions. Returns what it changed."""
    from playhouse.migrate import SchemaMigrator, migrate as run

    tables = set(db.get_tables())
    for model in MODELS:  # a new table whole; an earlier version's takes its new columns first, then its indexes
        if model._meta.table_name not in tables:
            model._schema.create_table(safe=True)
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
        model._schema.create_indexes(safe=True)
    from services.store import search
    changes += search.install(db)  # the full-text index, which follows the message table by itself
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
