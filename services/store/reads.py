"""Reads: a session with its messages (the coordinator's, through its reader thread), the sessions list and
prefixes, and what the persister reads back of messages it does not hold in memory."""
from __future__ import annotations

import peewee

from protocol.conversation import MessageRecord
from services.store.chunklog import streamed_texts
from services.store.models import STREAMING, ApiUser, JSONField, Message, db_proxy
from services.store.writes import _SESSION_COLUMNS, _from_json, _rows_in


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


# A session's reads as plain SQL built once, each row converted by its fields' python_value: peewee's query building
# was most of load_session's 1.2 ms on the reader thread (PERFORMANCE.md, "The store's measurements").
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
        prompt_ref=row["prompt_ref"], tool_calls=row["tool_calls"] or [], parent_id=row["parent_id"],
        tool_call_id=row["tool_call_id"], chain=row["chain"])


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


def list_users() -> list[dict]:
    """Every gateway user: name, token hash, created_at, revoked_at."""
    try:
        return list(ApiUser.select().dicts())
    except peewee.DatabaseError as exc:
        if _no_tables_yet(exc):
            return []
        raise


HEX_DIGITS = frozenset("0123456789abcdef")


def find_turn(chain: str, reply_hash: str, owner: str | None) -> tuple[str, str] | None:
    """(session id, message id) of the newest reply with text of sha256 ``reply_hash`` after the message whose
    ``turn_chain`` is ``chain``, in a session of ``owner``'s (None: the administrator's), or None."""
    db = db_proxy.obj
    p = db.param
    owned = f's."owner" = {p}' if owner is not None else 's."owner" IS NULL'
    try:
        row = db.execute_sql(
            'SELECT r."session_id", r."id" FROM "message" u JOIN "message" r ON r."parent_id" = u."id" '
            'JOIN "session" s ON s."id" = u."session_id" '
            f'WHERE u."chain" = {p} AND r."content_hash" = {p} AND r."role" = {p} AND {owned} '
            'ORDER BY r."created_at" DESC LIMIT 1',
            (chain, reply_hash, "assistant", *([owner] if owner is not None else []))).fetchone()
    except peewee.DatabaseError as exc:
        if _no_tables_yet(exc):
            return None
        raise
    return (row[0], row[1]) if row else None


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


# One query whatever the limit, as plain SQL: 0.5 ms for 100 sessions against peewee's three queries and 3.8 ms
# (PERFORMANCE.md, "The store's measurements").
LIST_SESSIONS_SQL = (
    "SELECT s.id, s.title, s.updated_at, "
    "(SELECT COUNT(*) FROM message m WHERE m.session_id = s.id), "
    "(SELECT m.status FROM message m WHERE m.session_id = s.id AND m.role = 'assistant' "
    "ORDER BY m.position DESC LIMIT 1), s.owner "
    "FROM session s {where}ORDER BY s.updated_at DESC, s.id DESC LIMIT {param}")


def list_sessions(limit: int, before: float | None = None, before_id: str | None = None,
                  owner: str | None = None) -> list[dict]:
    """The most recently active sessions, as summaries (see ``services.coordinator.sessions.summary``); with
    ``before``, those older than the session (``before``, ``before_id``): the next page of a list; with ``owner``,
    only that gateway user's (by the ``session_owner`` index)."""
    db = db_proxy.obj
    conditions, params = [], []
    if owner is not None:
        conditions.append(f"s.owner = {db.param}")
        params.append(owner)
    if before is not None:
        conditions.append(f"(s.updated_at < {db.param} OR (s.updated_at = {db.param} AND s.id < {db.param}))")
        params += [before, before, before_id or ""]
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    params = (*params, max(1, limit))
    try:
        rows = db.execute_sql(LIST_SESSIONS_SQL.format(where=where, param=db.param), params).fetchall()
    except peewee.DatabaseError as exc:
        if _no_tables_yet(exc):
            return []
        raise
    return [{"session_id": sid, "title": title, "message_count": count, "last_activity": updated,
             "status": status or "empty", "owner": row_owner} for sid, title, updated, count, status, row_owner in rows]


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
