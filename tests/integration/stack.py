"""The product's ``LocalStack`` with what tests need on top: the CLI as a subprocess, the mock's
journal, and the database's rows."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import zmq

from tools.spawn import REPO, LocalStack, free_port  # noqa: F401  (free_port: for tests)


# ``pytestmark = BOTH_DATABASES`` runs a module's tests on SQLite and on the suite's PostgreSQL server (the
# ``database`` fixture of conftest.py).
BOTH_DATABASES = pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)


def wait_until(predicate, timeout: float = 20, what: str = "the condition"):
    """The first true value of ``predicate()``, polled every 0.1 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} never held")


class Stack(LocalStack):
    cwd = REPO

    def __init__(self, workdir: Path, generators: int = 1, **env: str) -> None:
        super().__init__(workdir, generators, **({"CHATTER_MOCK_TPS": "200", "CHATTER_MOCK_TTFT_MS": "20"} | env))

    def live_generators(self) -> int:
        if any(k.startswith("CHATTER_ENDPOINT_") or k == "CHATTER_COORDINATOR" for k in self.env):
            # endpoints only the stack's env knows (and, on another host, only its namespace reaches)
            done = self.cli("status", "--json")
            return len(json.loads(done.stdout)["generators"]) if done.returncode == 0 else 0
        return super().live_generators()

    def cli_argv(self) -> list[str]:
        return [*self.prefix, sys.executable, "-m", "clients.cli"]

    def cli(self, *args: str, timeout: float = 60, **popen) -> subprocess.CompletedProcess:
        return subprocess.run([*self.cli_argv(), *args], env=self.env, cwd=REPO,
                              capture_output=True, timeout=timeout, **popen)

    def cli_json(self, *args: str, timeout: float = 60, **popen) -> dict:
        done = self.cli(*args, "--json", timeout=timeout, **popen)
        assert done.stdout, f"no output; stderr: {done.stderr.decode(errors='replace')}"
        return json.loads(done.stdout)

    def spawn_cli(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*self.cli_argv(), *args], env=self.env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def send_all(self, texts: list[str], *args: str, meanwhile=None, timeout: float = 120) -> list[dict]:
        """Each text sent at once, by a ``send --json`` process of its own; ``meanwhile()`` runs while they
        stream. Returns their outcomes in order; every process is ended, even when the test fails."""
        sends = [self.spawn_cli("send", text, *args, "--json") for text in texts]
        try:
            if meanwhile is not None:
                meanwhile()
            return [json.loads(send.communicate(timeout=timeout)[0]) for send in sends]
        finally:
            for send in sends:
                if send.poll() is None:
                    send.kill()
                    send.wait()

    def journal(self) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/journal", timeout=5) as resp:
            return json.load(resp)["requests"]

    def query(self, sql: str, params: tuple = ()) -> list[dict]:
        """Rows of the stack's database, SQLite or PostgreSQL (``?`` placeholders either way)."""
        url = self.env["CHATTER_DATABASE_URL"]
        if url.startswith("postgresql://"):
            import psycopg
            from psycopg.rows import dict_row
            with psycopg.connect(url, row_factory=dict_row) as conn:
                return conn.execute(sql.replace("?", "%s"), params).fetchall()
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql, params)]

    def durable_text(self, message_id: str) -> str:
        """A streaming message's checkpointed text: its appends in the chunk log (both of its tables) in order."""
        return "".join(text for _, _, _, text, _ in sorted(self.log_entries(message_id), key=lambda e: e[2]))

    def log_entries(self, message_id: str) -> list[tuple]:
        """A message's appends (id, message id, offset, text, thinking) in the chunk log, in log order: the rows of
        both tables read here, each unpacked by ``store.log_entries``."""
        from services import store
        rows = self.query("select * from chunk union all select * from chunk_b order by id")
        entries = (e for row in rows for e in store.log_entries(tuple(row[c] for c in store._CHUNK_COLUMNS)))
        return [e for e in entries if e[1] == message_id]

    def settled_durable_text(self, message_id: str, quiet_s: float = 0.75, timeout: float = 10) -> str:
        """``durable_text`` once nothing more can come: with the generator and the coordinator gone, a live
        persister still commits the appends it held for company (CHATTER_APPEND_HOLD_MS, 250 ms). The text that
        has not changed for ``quiet_s``, three times that hold."""
        deadline = time.monotonic() + timeout
        text, since = self.durable_text(message_id), time.monotonic()
        while time.monotonic() - since < quiet_s:
            if time.monotonic() > deadline:
                raise AssertionError(f"the durable text of {message_id} still grows after {timeout} s")
            time.sleep(0.05)
            now = self.durable_text(message_id)
            if now != text:
                text, since = now, time.monotonic()
        return text

    def db_message(self, message_id: str) -> dict:
        rows = self.query("select * from message where id = ?", (message_id,))
        return rows[0] if rows else {}

    def wait_db_status(self, message_id: str, statuses: tuple[str, ...], timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.db_message(message_id)
            if row.get("status") in statuses:
                return row
            time.sleep(0.05)
        raise TimeoutError(f"message {message_id} never reached {statuses}: {self.db_message(message_id)}")

    def raw_socket(self, kind: int, endpoint_name: str) -> tuple[zmq.Context, zmq.Socket]:
        ctx = zmq.Context()
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 2000)  # deliver what the test sent before closing
        sock.connect(f"ipc://{self.run_dir / (endpoint_name + '.sock')}")
        return ctx, sock
