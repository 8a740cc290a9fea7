"""Opening a database from its URL (SQLite private to its user, PostgreSQL through psycopg 3), and what its
users need of the connection: a ping, a reset, backoff, and the file's identity."""
from __future__ import annotations

import os
import re
import time

import peewee
from playhouse import db_url

from services.store.chunklog import _LOG_INDEX
from services.store.models import db_proxy


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
# A new database's pages are 1 KB: a commit rewrites whole pages to change a few bytes (57.3 -> 32.6 disk bytes per
# content byte at 50 streams; PERFORMANCE.md, "The store's measurements"). Set before WAL mode fixes the size.
SQLITE_PAGE_SIZE = 1024
# The log is copied into the file every 4096 pages (4 MB): 1 MB copied the same pages four times as often, 16 MB cost
# every process 5-8% more CPU (PERFORMANCE.md, "The store's measurements", "A 16 MB log, measured again and not kept").
SQLITE_WAL_PAGES = 4096
# secure_delete: a page or a row freed is overwritten with zeros, so that deleted text is gone from the file (on in
# Debian's build already, and so in every figure measured; set here for every build). The chunk log's clearing turns
# it off for its own statement (``chunklog.clear_chunks``), and a deletion scrubs the pages that left unzeroed
# (``deletion.scrub_free_pages``).
SQLITE_PRAGMAS = {"page_size": SQLITE_PAGE_SIZE, "busy_timeout": 5000, "journal_mode": "wal", "synchronous": "normal",
                  "wal_autocheckpoint": SQLITE_WAL_PAGES, "foreign_keys": 1, "secure_delete": 1}
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
        if not os.path.isdir(directory):  # the coordinator and the persister start together: either may make it
            os.makedirs(directory, mode=0o700, exist_ok=True)
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
