"""The persister's writes (it is the database's only writer): messages and their sessions in bulk, finals,
supersedes, reopens and tool calls."""
from __future__ import annotations

import time

import peewee

from protocol.messages import CreateMessage, Copied
from services.store.models import ApiUser, JSONField, Message, STREAMING, Session


def create_messages(db: peewee.Database, sessions: list, messages: list) -> None:
    """The rows of a run of ``CreateMessage``s: each one's session created if new, with its settings as of its
    last message here, that message its active leaf; then each message of ``messages`` after its session's last,
    in order (a message copied whole, ``copied``, final at once).

    Two executemany and one count for the run: peewee builds a query in ~150-300 µs, and a row at a time took
    four (insert, update, count, insert) per message, 90% of the persister under a burst of new sessions
    (py-spy; docs/PERFORMANCE.md, "A burst of new requests")."""
    if sessions:
        rows = [_row(_SESSION_COLUMNS, dict(id=op.session_id, title=op.session_title, system=op.session_system,
                                            max_input_tokens=op.session_max_input_tokens, created_at=op.created_at,
                                            updated_at=op.created_at, model=op.session_model,
                                            settings=_json(op.session_settings),
                                            title_set=op.session_title_set,
                                            active_leaf=_leaf_of(op), owner=op.session_owner)) for op in sessions]
        db.cursor().executemany(_insert_sql(db, Session, _SESSION_COLUMNS, _SESSION_UPSERT), rows)
    if not messages:
        return
    # after the last: a deleted branch leaves gaps, so a count would give a position twice
    last = dict(_rows_in(db, 'SELECT "session_id", MAX("position") FROM "message"', "session_id",
                         list({op.session_id for op in messages}), ' GROUP BY "session_id"'))
    rows = []
    for op in messages:
        position = last[op.session_id] + 1 if last.get(op.session_id) is not None else 0
        last[op.session_id] = position
        copied = op.copied or _NEW
        rows.append(_row(_MESSAGE_COLUMNS, dict(
            id=op.message_id, session_id=op.session_id, position=position, role=op.role, content=op.content,
            reasoning=copied.reasoning, length=len(op.content), status=op.status, generation_id=op.generation_id,
            prompt_messages=_json(op.prompt_messages), prompt_hash=op.prompt_hash, preview=op.preview,
            model=op.model, params=_json(op.params), content_hash=copied.content_hash, stats=_json(copied.stats),
            error=copied.error, superseded=False, client_request_id=op.client_request_id,
            dropped_message_ids=_json(op.dropped_message_ids), created_at=op.created_at, updated_at=op.created_at,
            prompt_ref=_json(op.prompt_ref), tool_calls=_json(copied.tool_calls), parent_id=op.parent_id,
            tool_call_id=op.tool_call_id, chain=op.chain)))
    db.cursor().executemany(_insert_sql(db, Message, _MESSAGE_COLUMNS), rows)


_NEW = Copied()  # a new message's final columns: none yet


def _leaf_of(op) -> str | None:
    """The active leaf a session's row takes from an operation: a message created becomes it, unless it names
    another (an import's)."""
    if isinstance(op, CreateMessage):
        return op.session_active_leaf or op.message_id
    return op.active_leaf


def _rows_in(db: peewee.Database, select: str, column: str, values: list, tail: str = "",
             tail_values: list = ()) -> list[tuple]:
    """The rows of ``select`` whose ``column`` is one of ``values``, as plain SQL. py-spy of the persister in a
    1000-request burst put 12.5% of it in peewee building the count query of ``create_messages``; measured
    (``timeit``, 16 sessions, SQLite in memory): 189-210 µs a count through peewee, 7 µs through this."""
    if not values:
        return []
    return db.execute_sql(f'{select} WHERE "{column}" IN ({", ".join([db.param] * len(values))}){tail}',
                          [*values, *tail_values]).fetchall()


def _row(columns: tuple[str, ...], values: dict) -> tuple:
    """``values`` in the table's column order; a column without a value is a KeyError at the first write, never
    a silent NULL (peewee's defaults are its own, not the table's)."""
    return tuple(values[column] for column in columns)


# the columns as the models name them; the chunk log's rows come from the core in this order
_SESSION_COLUMNS = tuple(f.column_name for f in Session._meta.sorted_fields)
_MESSAGE_COLUMNS = tuple(f.column_name for f in Message._meta.sorted_fields)
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


def save_user(op) -> None:
    """A gateway user's row as it stands (a ``SaveUser``)."""
    ApiUser.insert(name=op.name, token_hash=op.token_hash, created_at=op.created_at,
                   revoked_at=op.revoked_at).on_conflict(
        conflict_target=[ApiUser.name], update={ApiUser.token_hash: op.token_hash,
                                                ApiUser.revoked_at: op.revoked_at}).execute()


def supersede(message_ids: list[str]) -> None:
    Message.update(superseded=True).where(Message.id.in_(message_ids)).execute()


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
