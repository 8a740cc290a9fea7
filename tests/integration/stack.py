"""Starts Chatter's real processes on a private run dir, a temporary SQLite database and a free
mock port, and tears every one of them down by its PID, even when a test fails."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import zmq

from clients.api import ChatterError, Client

SERVICES = ("mock_llm", "persister", "coordinator", "generator")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, workdir: Path, **env: str) -> None:
        self.workdir = workdir
        self.run_dir = workdir / "run"
        self.db_path = workdir / "chatter.db"
        self.port = free_port()
        self.env = os.environ.copy()
        self.env.update({
            "CHATTER_RUN_DIR": str(self.run_dir),
            "CHATTER_DATABASE_URL": f"sqlite:///{self.db_path}",
            "CHATTER_MOCK_PORT": str(self.port),
            "OPENAI_BASE_URL": f"http://127.0.0.1:{self.port}/v1",
            "CHATTER_MOCK_TPS": "200",
            "CHATTER_MOCK_TTFT_MS": "20",
            "PYTHONPATH": str(REPO),
        })
        self.env.pop("OPENAI_API_KEY", None)
        self.env.update(env)
        self.procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------ processes

    def start(self, *names: str) -> Stack:
        for name in names or SERVICES:
            log = open(self.workdir / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=self.env, cwd=REPO,
                                                stdout=log, stderr=subprocess.STDOUT)
            log.close()
        self.wait_ready(names or SERVICES)
        return self

    def wait_ready(self, names, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in names:
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited with {self.procs[name].returncode}:\n{self.log(name)}")
            if all(f"{name}_ready" in self.log(name) for name in names):
                if "generator" not in names or self.generators_live():
                    return
            time.sleep(0.05)
        raise TimeoutError("stack not ready:\n" + "\n".join(self.log(n)[-2000:] for n in names))

    def generators_live(self) -> bool:
        if any(k.startswith("CHATTER_ENDPOINT_") for k in self.env):  # endpoints this process cannot see
            done = self.cli("status", "--json")
            return done.returncode == 0 and bool(json.loads(done.stdout)["generators"])
        try:
            with self.client(rpc_timeout_ms=500) as client:
                return bool(client.status()["generators"])
        except ChatterError:
            return False

    def client(self, rpc_timeout_ms: int = 5000) -> Client:
        return Client(rpc_timeout_ms=rpc_timeout_ms, run_dir=str(self.run_dir))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=10)

    def stop(self) -> dict[str, int]:
        """SIGTERM every process we started, SIGKILL what lingers; returns exit codes."""
        codes = {}
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in list(self.procs.items()):
            try:
                codes[name] = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        self.procs.clear()
        return codes

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------ clients and evidence

    cwd = REPO

    @staticmethod
    def cli_argv() -> list[str]:
        return [sys.executable, "-m", "clients.cli"]

    def cli(self, *args: str, timeout: float = 60, **popen) -> subprocess.CompletedProcess:
        return subprocess.run([*self.cli_argv(), *args], env=self.env, cwd=REPO,
                              capture_output=True, timeout=timeout, **popen)

    def cli_json(self, *args: str, timeout: float = 60) -> dict:
        done = self.cli(*args, "--json", timeout=timeout)
        assert done.stdout, f"no output; stderr: {done.stderr.decode(errors='replace')}"
        return json.loads(done.stdout)

    def spawn_cli(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*self.cli_argv(), *args], env=self.env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def journal(self) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/journal", timeout=5) as resp:
            return json.load(resp)["requests"]

    def db_message(self, message_id: str) -> dict:
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("select * from message where id = ?", (message_id,)).fetchone()
            return dict(row) if row else {}

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
