"""Deleting sessions so that their text is gone: their rows, the chunk log's appends of their messages, and (on
SQLite) the pages that held them, in the file and in its log."""
from __future__ import annotations

import peewee

from services.store import chunklog, search
from services.store.models import CHUNK_LOG
from services.store.writes import _rows_in

IN_BATCH = 500  # ids in one IN (...) list: well under SQLite's and PostgreSQL's limits on parameters


def purge_sessions(db: peewee.Database, session_ids: list[str]) -> tuple[list[str], list[str]]:
    """Delete these sessions, their messages and their messages' appends in the chunk log, inside the caller's
    transaction; returns the ids of the sessions found (in the order asked) and of their messages. On SQLite
    every page and row freed is overwritten with zeros (``secure_delete``)."""
    found: set[str] = set()
    message_ids: list[str] = []
    for start in range(0, len(session_ids), IN_BATCH):
        batch = session_ids[start:start + IN_BATCH]
        found.update(row[0] for row in _rows_in(db, 'SELECT "id" FROM "session"', "id", batch))
        message_ids += [row[0] for row in _rows_in(db, 'SELECT "id" FROM "message"', "session_id", batch)]
    purge_log_entries(db, set(message_ids))
    for start in range(0, len(session_ids), IN_BATCH):
        batch = session_ids[start:start + IN_BATCH]
        marks = ", ".join([db.param] * len(batch))
        db.execute_sql(f'DELETE FROM "message" WHERE "session_id" IN ({marks})', batch)  # the index follows
        db.execute_sql(f'DELETE FROM "session" WHERE "id" IN ({marks})', batch)
    if message_ids:
        search.optimize(db)  # SQLite before 3.42: the deleted terms merged out of the index
    return [session_id for session_id in session_ids if session_id in found], message_ids


def purge_messages(db: peewee.Database, session_id: str, message_ids: list[str], active_leaf: str | None) -> list[str]:
    """Delete these messages of a session (a branch) like ``purge_sessions`` does a session's, inside the caller's
    transaction, and set the session's active leaf; returns the ids found, in the order asked."""
    found: set[str] = set()
    for start in range(0, len(message_ids), IN_BATCH):
        batch = message_ids[start:start + IN_BATCH]
        found.update(row[0] for row in _rows_in(db, 'SELECT "id" FROM "message"', "id", batch,
                                                f' AND "session_id" = {db.param}', [session_id]))
    purge_log_entries(db, found)
    ordered = [message_id for message_id in message_ids if message_id in found]
    for start in range(0, len(ordered), IN_BATCH):
        batch = ordered[start:start + IN_BATCH]
        db.execute_sql(f'DELETE FROM "message" WHERE "id" IN ({", ".join([db.param] * len(batch))})', batch)
    db.execute_sql(f'UPDATE "session" SET "active_leaf" = {db.param} WHERE "id" = {db.param}',
                   (active_leaf, session_id))
    if found:
        search.optimize(db)
    return ordered


def purge_log_entries(db: peewee.Database, message_ids: set[str]) -> int:
    """The chunk log's appends of these messages, gone: a row that holds only theirs is deleted, one that holds
    others' too is written again without them (its id, the log's order, stays). Returns the rows changed."""
    if not message_ids:
        return 0
    changed = 0
    for table in CHUNK_LOG:
        for row in chunklog._log_query(table):
            entries = chunklog.log_entries(row)
            kept = [entry for entry in entries if entry[1] not in message_ids]
            if len(kept) == len(entries):
                continue
            changed += 1
            if not kept:
                table.delete().where(table.id == row[0]).execute()
            else:
                table.update(message="", offset=0, text="", thinking=False,
                             packed=chunklog._pack_entries(kept)).where(table.id == row[0]).execute()
    if changed:
        chunklog._LOG_INDEX.clear()  # rows changed under their ids: read them again
    return changed


def scrub_free_pages(db: peewee.Database) -> int:
    """SQLite: the file's free pages overwritten with zeros, then its log copied into it and emptied, so that text
    freed without zeroing (the chunk log's clearing, ``chunklog.clear_chunks``) is in neither. A row of zeros as
    large as the free pages takes every one of them, and is dropped with ``secure_delete`` on, which zeroes them
    again. Returns the pages scrubbed; nothing to do elsewhere (PostgreSQL: see docs/COMMANDS.md on VACUUM)."""
    if not isinstance(db, peewee.SqliteDatabase):
        return 0
    free = db.execute_sql("PRAGMA freelist_count").fetchone()[0]
    if free:
        page = db.execute_sql("PRAGMA page_size").fetchone()[0]
        with db.atomic():
            db.execute_sql('CREATE TABLE IF NOT EXISTS "scrub" ("zeros" BLOB)')
            db.execute_sql('INSERT INTO "scrub" VALUES (zeroblob(?))', ((free + 2) * page,))
            db.execute_sql('DROP TABLE "scrub"')
    checkpoint(db)
    return free


def checkpoint(db: peewee.Database) -> bool:
    """SQLite: the log copied into the file and truncated to nothing; False when a reader kept part of it (the next
    checkpoint copies the rest)."""
    busy, _, _ = db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy == 0
