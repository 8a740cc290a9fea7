"""Full-text search over every message, ranked: SQLite's FTS5 or PostgreSQL's ``tsvector`` with a GIN index.

The index follows the message table by itself, so it is never stale and never holds deleted text: on SQLite,
triggers keep an external-content FTS5 table in step with every insert, update of a message's content and delete
(with FTS5's ``secure-delete``, a deleted message's terms are taken out of the index at once, not left for a
later merge); on PostgreSQL, a generated column. Words fold case and diacritics on both (``naive`` finds
``naïve``): FTS5's ``unicode61`` tokenizer with ``remove_diacritics 2``, and a text search configuration
``chatter`` that runs ``unaccent`` where that extension can be created.

A query is words (all of them must match), ``"quoted phrases"`` and prefixes (``stream*``); any other character is
taken as a separator, never as syntax, so no query can fail to parse.
"""
from __future__ import annotations

import re

import peewee

FTS = "message_fts"
MARK_OPEN, MARK_CLOSE = "\x02", "\x03"  # around a match in a snippet; shown as the client likes
SNIPPET_TOKENS = 16
SNIPPET_CHARS = 600  # a snippet's characters at most: a thousand hits fit a frame whatever the messages hold
TITLE_CHARS = 500  # as a rename allows (protocol.messages.rpc.TITLE_CHARS)
QUERY_TERMS_MAX = 32

# a term: a quoted phrase, or a word with an optional trailing * (a prefix)
_TERM = re.compile(r'"([^"]*)"|([^\s"]+)')
_WORD = re.compile(r"\w+", re.UNICODE)


def parse_query(query: str) -> list[tuple[list[str], bool]]:
    """The query as terms, each (its words, whether it is a prefix): a phrase's words in order, or one word. Words
    are runs of letters and digits; the rest of the query only separates them."""
    terms: list[tuple[list[str], bool]] = []
    for match in _TERM.finditer(query):
        phrase, word = match.group(1), match.group(2)
        if phrase is not None:
            words = _WORD.findall(phrase)
            if words:
                terms.append((words, False))
            continue
        prefix = word.endswith("*")
        words = _WORD.findall(word)
        if len(words) == 1:
            terms.append((words, prefix))
        elif words:  # "stream-based" or "a.b": its words as a phrase, as the tokenizer reads the text
            terms.append((words, False))
    return terms[:QUERY_TERMS_MAX]


def fts5_match(terms: list[tuple[list[str], bool]]) -> str:
    """FTS5's MATCH expression: every term quoted (so nothing is syntax), a prefix with its ``*`` outside."""
    parts = []
    for words, prefix in terms:
        quoted = '"' + " ".join(words).replace('"', '""') + '"'
        parts.append(quoted + (" *" if prefix else ""))
    return " ".join(parts)


def tsquery(terms: list[tuple[list[str], bool]]) -> str:
    """PostgreSQL's ``to_tsquery`` text: each word a quoted lexeme, a phrase's joined by ``<->``, a prefix ``:*``."""
    parts = []
    for words, prefix in terms:
        lexemes = ["'" + word.replace("'", "''").replace("\\", "\\\\") + "'" for word in words]
        parts.append(" <-> ".join(lexemes) + (":*" if prefix else ""))
    return " & ".join(parts)


# ---------------------------------------------------------------- the index


def install(db: peewee.Database) -> list[str]:
    """Create the index if missing (filled from the messages already stored); returns what it changed."""
    if isinstance(db, peewee.SqliteDatabase):
        return _install_sqlite(db)
    return _install_postgres(db)


def _install_sqlite(db: peewee.Database) -> list[str]:
    changes = []
    exists = db.execute_sql("SELECT 1 FROM sqlite_master WHERE name = ?", (FTS,)).fetchone()
    if not exists:
        db.execute_sql(f"CREATE VIRTUAL TABLE {FTS} USING fts5(content, content='message', content_rowid='rowid', "
                       "tokenize='unicode61 remove_diacritics 2')")
        if secure_delete_available(db):
            db.execute_sql(f"INSERT INTO {FTS}({FTS}, rank) VALUES ('secure-delete', 1)")
        db.execute_sql(f"INSERT INTO {FTS}({FTS}) VALUES ('rebuild')")  # the messages stored before it
        changes.append(f"+{FTS}")
    for name, sql in (
        ("message_fts_insert", f"AFTER INSERT ON message WHEN new.content != '' BEGIN "
                               f"INSERT INTO {FTS}(rowid, content) VALUES (new.rowid, new.content); END"),
        ("message_fts_delete", f"AFTER DELETE ON message WHEN old.content != '' BEGIN "
                               f"INSERT INTO {FTS}({FTS}, rowid, content) VALUES ('delete', old.rowid, old.content); END"),
        ("message_fts_update", f"AFTER UPDATE OF content ON message BEGIN "
                               f"INSERT INTO {FTS}({FTS}, rowid, content) SELECT 'delete', old.rowid, old.content "
                               f"WHERE old.content != ''; "
                               f"INSERT INTO {FTS}(rowid, content) SELECT new.rowid, new.content "
                               f"WHERE new.content != ''; END"),
    ):
        if not db.execute_sql("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?", (name,)).fetchone():
            db.execute_sql(f"CREATE TRIGGER {name} {sql}")
            changes.append(f"+trigger {name}")
    return changes


def secure_delete_available(db: peewee.Database) -> bool:
    """FTS5's ``secure-delete`` came with SQLite 3.42; before it, a deleted message's terms stay in the index's
    segments until they are merged (``purge`` then merges them away: ``optimize``)."""
    version = db.execute_sql("SELECT sqlite_version()").fetchone()[0]
    return tuple(int(part) for part in version.split(".")[:2]) >= (3, 42)


def _install_postgres(db: peewee.Database) -> list[str]:
    changes = []
    if not db.execute_sql("SELECT 1 FROM pg_ts_config WHERE cfgname = 'chatter'").fetchone():
        with db.atomic():
            db.execute_sql("CREATE TEXT SEARCH CONFIGURATION chatter (COPY = simple)")
            try:
                with db.atomic():
                    db.execute_sql("CREATE EXTENSION IF NOT EXISTS unaccent")
                    db.execute_sql("ALTER TEXT SEARCH CONFIGURATION chatter ALTER MAPPING FOR hword, hword_part, "
                                   "word WITH unaccent, simple")
                changes.append("+text search chatter (unaccent)")
            except peewee.DatabaseError:  # no unaccent here: case folds, diacritics stay
                changes.append("+text search chatter (without unaccent)")
    columns = {column.name for column in db.get_columns("message")}
    if "search" not in columns:
        db.execute_sql("ALTER TABLE message ADD COLUMN search tsvector "
                       "GENERATED ALWAYS AS (to_tsvector('chatter', content)) STORED")
        changes.append("message.search")
    if "message_search" not in {index.name for index in db.get_indexes("message")}:
        db.execute_sql("CREATE INDEX message_search ON message USING GIN (search)")
        changes.append("+index message_search")
    return changes


def optimize(db: peewee.Database) -> None:
    """SQLite before 3.42 only: the index's segments merged, so that a deleted message's terms are gone from them."""
    if isinstance(db, peewee.SqliteDatabase) and not secure_delete_available(db):
        db.execute_sql(f"INSERT INTO {FTS}({FTS}) VALUES ('optimize')")


# ---------------------------------------------------------------- the query


def search(db: peewee.Database, query: str, session_id: str | None = None, limit: int = 20,
           owner: str | None = None) -> list[dict]:
    """The best-ranked messages that hold every term of ``query`` (in one session, with ``session_id``; in one
    gateway user's sessions, with ``owner``): each as
    session id, title, message id, role, created_at and a snippet whose matches are between ``MARK_OPEN`` and
    ``MARK_CLOSE``. An empty query matches nothing."""
    terms = parse_query(query)
    if not terms:
        return []
    if isinstance(db, peewee.SqliteDatabase):
        where, params = "", [fts5_match(terms)]
        if session_id is not None:
            where, params = " AND m.session_id = ?", [*params, session_id]
        if owner is not None:
            where, params = f"{where} AND s.owner = ?", [*params, owner]
        sql = (f"SELECT m.session_id, s.title, m.id, m.role, m.created_at, "
               f"snippet({FTS}, 0, ?, ?, '…', {SNIPPET_TOKENS}) "
               f"FROM {FTS} JOIN message m ON m.rowid = {FTS}.rowid JOIN session s ON s.id = m.session_id "
               f"WHERE {FTS} MATCH ?{where} ORDER BY bm25({FTS}) LIMIT ?")
        rows = db.execute_sql(sql, (MARK_OPEN, MARK_CLOSE, *params, limit)).fetchall()
    else:
        where, params = "", [tsquery(terms)]
        if session_id is not None:
            where, params = " AND m.session_id = %s", [*params, session_id]
        if owner is not None:
            where, params = (f"{where} AND m.session_id IN (SELECT id FROM session WHERE owner = %s)",
                             [*params, owner])
        options = f"StartSel={MARK_OPEN}, StopSel={MARK_CLOSE}, MaxWords=24, MinWords=8, ShortWord=1"
        sql = ("WITH q AS (SELECT to_tsquery('chatter', %s) AS q), hits AS ("
               "SELECT m.session_id, m.id, m.role, m.created_at, m.content, ts_rank_cd(m.search, q.q) AS rank "
               f"FROM message m, q WHERE m.search @@ q.q{where} ORDER BY rank DESC, m.created_at DESC LIMIT %s) "
               "SELECT h.session_id, s.title, h.id, h.role, h.created_at, "
               f"ts_headline('chatter', h.content, q.q, '{options}') "
               "FROM hits h JOIN session s ON s.id = h.session_id, q ORDER BY h.rank DESC, h.created_at DESC")
        rows = db.execute_sql(sql, (*params, limit)).fetchall()
    return [{"session_id": sid, "title": (title or "")[:TITLE_CHARS], "message_id": mid, "role": role,
             "created_at": created, "snippet": bounded(snippet or "")} for sid, title, mid, role, created, snippet in rows]


def bounded(snippet: str) -> str:
    """A snippet of at most ``SNIPPET_CHARS`` around its first match (a "word" may be a whole message with no
    space in it): cut ends shown as "…", and a match cut through still closed, so that the marks pair up."""
    if len(snippet) <= SNIPPET_CHARS:
        return snippet
    start = max(0, snippet.find(MARK_OPEN) - SNIPPET_CHARS // 3)
    cut = snippet[start:start + SNIPPET_CHARS]
    if cut.find(MARK_CLOSE) != -1 and (cut.find(MARK_OPEN) == -1 or cut.find(MARK_CLOSE) < cut.find(MARK_OPEN)):
        cut = MARK_OPEN + cut  # it begins inside a match
    if cut.count(MARK_OPEN) > cut.count(MARK_CLOSE):
        cut += MARK_CLOSE  # it ends inside one
    return ("…" if start else "") + cut + ("…" if start + SNIPPET_CHARS < len(snippet) else "")
