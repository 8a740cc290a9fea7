"""One persister per database: a lock that the database itself holds while this persister writes it.

SQLite: an exclusive ``flock`` on a file beside the database (``chatter.db.persister-lock``, 0600), released by the
kernel when the process ends, however it ends. PostgreSQL: a session advisory lock on the persister's connection,
released by the server when that connection ends; a persister that reconnects (a server restart) takes it again
before it writes, and stops if another persister took it meanwhile."""
from __future__ import annotations

import fcntl
import os

import peewee

from services import store

ADVISORY_KEY = 0x43484154_54455201  # "CHATTER" and 1: the persister's lock within its database


class SecondPersister(SystemExit):
    """Another persister holds the database: this one refuses to start (one line, exit 1)."""

    def __init__(self, words: str) -> None:
        super().__init__(f"chatter persister: {words}")


class PersisterLock:
    def __init__(self, db: peewee.Database, url: str) -> None:
        self.db, self.url = db, url
        self.fd: int | None = None
        self.locked_connection = None  # PostgreSQL: the connection that holds the advisory lock

    def acquire(self) -> None:
        """Take the lock, or raise ``SecondPersister`` naming who holds it."""
        if isinstance(self.db, peewee.SqliteDatabase):
            self._lock_file()
        elif isinstance(self.db, peewee.PostgresqlDatabase):
            self._lock_server()

    def held_by_this_connection(self) -> None:
        """Before a write: on PostgreSQL, a new connection (the old one dropped) takes the lock again first."""
        if self.locked_connection is not None and self.db.connection() is not self.locked_connection:
            self._lock_server()

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes with its descriptor; the file stays, empty of meaning
            self.fd = None

    def _lock_file(self) -> None:
        path = str(self.db.database)
        if path in ("", ":memory:"):
            return
        lock_path = path + ".persister-lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SecondPersister(f"another persister (pid {holder}) already writes {path}; stop it first, or give "
                                  "this one a database of its own (CHATTER_DATABASE_URL)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def _lock_server(self) -> None:
        got = self.db.execute_sql("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()[0]
        if not got:
            holder = self.db.execute_sql(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND ((classid::bigint << 32) | objid::bigint) = %s AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())", (ADVISORY_KEY,)).fetchone()
            who = f"server process {holder[0]}" if holder else "another connection"
            store.reset_connection(self.db)
            raise SecondPersister(f"another persister already writes {store.describe_url(self.url)} (its "
                                  f"connection is PostgreSQL's {who}); stop it first, or give this one a database "
                                  "of its own (CHATTER_DATABASE_URL)")
        self.locked_connection = self.db.connection()
