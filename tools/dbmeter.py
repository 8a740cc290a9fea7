"""What a PostgreSQL server did for a load test, from the server itself: the WAL it generated (the distance
between two WAL positions), the data pages it wrote (a CHECKPOINT at each end, so that the run's dirty pages
are counted, and only those), and the CPU of its processes when they run on this host.

The persister's own write counters say nothing of this: on PostgreSQL the server writes, not the client
(the persister's process wrote 0.04 bytes per content byte while the server wrote about 35-40)."""
from __future__ import annotations

import sqlite3
import time
from urllib.parse import urlsplit

import psutil

LOCAL_HOSTS = ("", "127.0.0.1", "localhost", "::1")

# pg_stat_io (PostgreSQL 16 and later) counts every write by every process; before it, pg_stat_bgwriter's
# three counters do (checkpointer, background writer, backends), in blocks.
PAGES_IO = "SELECT coalesce(sum(writes * op_bytes), 0)::bigint FROM pg_stat_io"
PAGES_BGWRITER = ("SELECT (buffers_checkpoint + buffers_clean + buffers_backend)::bigint "
                  "* current_setting('block_size')::bigint FROM pg_stat_bgwriter")


RECONNECT_S = 30.0  # how long the meter's end waits for a server that restarted or was killed


class PostgresMeter:
    """A load test never dies of what it measures: a server that restarted (or was killed and brought back)
    during the run leaves a gap, which ``finish`` marks (``gap``, in words) and goes on from. WAL positions go
    on across a restart, so the WAL's figure holds; the server's write counters may start again from zero, and
    the CPU of the processes that ended is lost: those figures then count what the meter could see."""

    def __init__(self, url: str) -> None:
        import psycopg
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        self.started_at = self.conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        self.checkpoints = self._checkpoint()
        self.pages_sql = PAGES_IO if self._has_view("pg_stat_io") else PAGES_BGWRITER
        self.local = (urlsplit(url).hostname or "") in LOCAL_HOSTS
        self.procs = self._server_processes() if self.local else {}
        self.cpu_start = {pid: _cpu(p) for pid, p in self.procs.items()}
        self.wal_start = self._wal_position()
        self.pages_start = self._settled_pages()

    def finish(self) -> dict:
        """The server's figures since the meter started: bytes, and CPU seconds (None when not on this host); and
        ``gap``, what it could not see, when the server went away during the run (None when it did not)."""
        gap = self._reconnect_if_lost()
        if gap is not None and self.conn is None:
            return {"wal_bytes": 0, "data_page_bytes": 0, "checkpointed": False, "cpu_s": None,
                    "processes": len(self.procs), "gap": gap}
        restarted = self.conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0] != self.started_at
        if restarted and gap is None:
            gap = "the server restarted during the run"
        wal = self._wal_position() - self.wal_start  # before our own checkpoint adds its record
        checkpointed = self._checkpoint() and self.checkpoints
        pages_now = self._settled_pages()
        # its counters may have started again at the restart: then only what it wrote since is seen
        pages = pages_now - self.pages_start if pages_now >= self.pages_start else pages_now
        cpu = None
        if self.local:
            cpu = 0.0
            for pid, proc in self.procs.items():
                try:
                    cpu += _cpu(proc) - self.cpu_start[pid]
                except psutil.Error:  # a backend that ended during the run: its share is lost
                    pass
        self.conn.close()
        if gap is not None:
            gap += ("; its pages and CPU count what it did after the restart, and before it as far as the server "
                    "kept its counters")
        return {"wal_bytes": wal, "data_page_bytes": pages, "checkpointed": checkpointed,
                "cpu_s": None if cpu is None else round(cpu, 3), "processes": len(self.procs), "gap": gap}

    def _reconnect_if_lost(self) -> str | None:
        """None while the meter's connection works; else the gap in words, with a new connection (or None as
        ``conn`` when the server did not come back within ``RECONNECT_S``)."""
        import psycopg
        try:
            self.conn.execute("SELECT 1")
            return None
        except psycopg.Error as exc:
            lost = " ".join(str(exc).split())[:200] or type(exc).__name__
        deadline = time.monotonic() + RECONNECT_S
        while True:
            try:
                self.conn = psycopg.connect(self.url, autocommit=True)
                return f"the meter's connection to the server was lost during the run ({lost})"
            except psycopg.Error:
                if time.monotonic() > deadline:
                    self.conn = None
                    return (f"the meter's connection to the server was lost during the run ({lost}), and the server "
                            f"did not answer within {RECONNECT_S:.0f} s: no figures")
                time.sleep(0.5)

    def _checkpoint(self) -> bool:
        try:
            self.conn.execute("CHECKPOINT")
            return True
        except Exception:  # not a superuser nor pg_checkpoint: data pages are what the server wrote on its own
            return False

    def _has_view(self, name: str) -> bool:
        return self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]

    def _wal_position(self) -> int:
        return int(self.conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()[0])

    def _settled_pages(self) -> int:
        """The pages counter once the checkpointer has reported (it does so just after a checkpoint ends)."""
        last = None
        for _ in range(20):
            now = int(self.conn.execute(self.pages_sql).fetchone()[0])
            if now == last:
                return now
            last = now
            time.sleep(0.15)
        return last

    def _server_processes(self) -> dict[int, psutil.Process]:
        """The server's processes on this host, found from our own backend: its parent (the postmaster) and
        the postmaster's children (every backend, the checkpointer, the WAL writer...), our backend aside.
        Backends that connect later (a reader after the run) are not counted."""
        own = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        try:
            postmaster = psutil.Process(own).parent()
            procs = [postmaster, *postmaster.children()]
        except (psutil.Error, AttributeError):  # not visible from here
            return {}
        return {proc.pid: proc for proc in procs if proc.pid != own}


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


class SqliteMeter:
    """The copy into the database file of what a load test wrote to SQLite's write-ahead log. The persister's
    own write counters hold its commits (into the log) and the copies SQLite made on its way (every
    ``wal_autocheckpoint`` pages), but not the copy of what is still in the log when the run ends, up to a whole
    log's worth. So the log is copied into the file at each end, from this process (``wal_checkpoint(TRUNCATE)``):
    before the run, so that the log holds only the run's pages, uncounted; after it, counted. How big the log may
    grow then changes only how often a page is copied, never whether its copy is counted."""

    def __init__(self, url: str) -> None:
        from services.store import SQLITE_PREFIX
        self.path = url[len(SQLITE_PREFIX):]
        self.checkpointed = self._checkpoint()[0]

    def finish(self) -> dict:
        """The bytes this process wrote copying the run's log into the file, and whether the copy was whole."""
        whole, written = self._checkpoint()
        return {"wal_copy_bytes": written, "checkpointed": whole and self.checkpointed}

    def _checkpoint(self) -> tuple[bool, int]:
        before = written_bytes()
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            busy = 1
        finally:
            conn.close()
        return not busy, written_bytes() - before


def written_bytes() -> int:
    """This process's bytes written to storage so far (the kernel's I/O accounting)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("write_bytes"))
