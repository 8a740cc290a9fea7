"""Search's query language and its index on SQLite: words, phrases, prefixes and diacritics, ranked, an index that
follows every insert, update and delete, and no query that fails to parse."""
from __future__ import annotations

import peewee
import pytest
from hypothesis import given, strategies as st

from services import store
from services.store import search


@pytest.fixture
def db():
    database = peewee.SqliteDatabase(":memory:")
    store.db_proxy.initialize(database)
    store.migrate(database)
    database.execute_sql("INSERT INTO session (id, title, created_at, updated_at, title_set) VALUES "
                         "('s1', 'Trip', 0, 0, 0), ('s2', 'Work', 0, 0, 0)")
    yield database
    database.close()


def add(db, message_id: str, session_id: str, content: str, role: str = "user") -> None:
    db.execute_sql("INSERT INTO message (id, session_id, position, role, content, reasoning, length, status, "
                   "created_at, updated_at, superseded) VALUES (?, ?, 0, ?, ?, '', 0, 'completed', 1, 1, 0)",
                   (message_id, session_id, role, content))


def ids(db, query: str, **kw) -> list[str]:
    return [hit["message_id"] for hit in search.search(db, query, **kw)]


def test_queries_parse_into_words_phrases_and_prefixes():
    assert search.parse_query('naïve "stream of tokens" sock* a-b') == [
        (["naïve"], False), (["stream", "of", "tokens"], False), (["sock"], True), (["a", "b"], False)]
    assert search.parse_query('"" * ( ) AND') == [(["AND"], False)]
    assert search.fts5_match([(["it's"], False), (["sock"], True)]) == '"it\'s" "sock" *'
    assert search.tsquery([(["it's", "x"], False), (["sock"], True)]) == "'it''s' <-> 'x' & 'sock':*"


def test_words_phrases_prefixes_and_diacritics_match_and_rank(db):
    add(db, "m1", "s1", "a naïve streaming question about sockets")
    add(db, "m2", "s1", "the stream of tokens is durable", "assistant")
    add(db, "m3", "s2", "stream stream stream of tokens")
    assert ids(db, "naive") == ["m1"] and ids(db, "NAÏVE") == ["m1"]
    assert set(ids(db, "stream*")) == {"m1", "m2", "m3"} and ids(db, "stream*")[0] == "m3"  # the most matches first
    assert ids(db, '"streaming question"') == ["m1"] and ids(db, '"question streaming"') == []
    assert ids(db, "durable tokens") == ["m2"]
    assert ids(db, "stream*", session_id="s2") == ["m3"]
    assert ids(db, "stream*", limit=1) == ["m3"]
    (hit,) = search.search(db, "sockets")
    assert hit == {"session_id": "s1", "title": "Trip", "message_id": "m1", "role": "user", "created_at": 1.0,
                   "snippet": "a naïve streaming question about \x02sockets\x03"}


def test_the_index_follows_every_update_and_delete(db):
    add(db, "m1", "s1", "")  # a reply as created: empty
    assert ids(db, "finalized") == []
    db.execute_sql("UPDATE message SET content = 'finalized words' WHERE id = 'm1'")
    assert ids(db, "finalized") == ["m1"]
    db.execute_sql("UPDATE message SET content = 'edited instead' WHERE id = 'm1'")
    assert ids(db, "finalized") == [] and ids(db, "edited") == ["m1"]
    db.execute_sql("DELETE FROM message WHERE id = 'm1'")
    assert ids(db, "edited") == []


def test_an_index_added_to_a_database_with_messages_holds_them(tmp_path):
    database = peewee.SqliteDatabase(str(tmp_path / "old.db"))
    store.db_proxy.initialize(database)
    store.migrate(database)
    database.execute_sql("DROP TABLE message_fts")  # as an earlier version left it: no index
    for name in ("message_fts_insert", "message_fts_delete", "message_fts_update"):
        database.execute_sql(f"DROP TRIGGER {name}")
    database.execute_sql("INSERT INTO session (id, title, created_at, updated_at, title_set) VALUES ('s1', '', 0, 0, 0)")
    add(database, "old", "s1", "written before the index")
    assert "+message_fts" in store.migrate(database)
    assert ids(database, "before") == ["old"]
    database.close()


@given(st.text(max_size=80))
def test_no_query_fails(query):
    database = peewee.SqliteDatabase(":memory:")
    store.db_proxy.initialize(database)
    store.migrate(database)
    search.search(database, query)  # any text at all: hits or none, never an error
    database.close()
