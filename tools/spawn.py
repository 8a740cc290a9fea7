"""Start a private Chatter stack — real processes on a private run dir, a temporary SQLite database
and a free mock port — and stop every process it started, by PID. Used by ``chatter loadtest --spawn``,
the benchmarks and the integration tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from clients.api import ChatterError, Client

SERVICES = ("mock_llm", "persister", "coordinator", "generator")  # started when none are named
MODULES = {"gateway": "clients.gateway"}  # a process whose module is not services.NAME (the gateway is a client)
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStack:
    def __init__(self, workdir: Path, generators: int = 1, prefix: tuple[str, ...] = (), **env: str) -> None:
        """``prefix``: what the processes' command lines start with (``ip netns exec NAME``, for a process on
        another host in a test)."""
        self.prefix = tuple(prefix)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.run_dir = self.workdir / "run"
        self.db_path = self.workdir / "chatter.db"
        self.port = free_port()
        self.http_port = free_port()  # the gateway's, when one is started
        self.generators = generators
        self.env = os.environ.copy()
        self.env.update({
            "CHATTER_RUN_DIR": str(self.run_dir),
            "CHATTER_DATABASE_URL": f"sqlite:///{self.db_path}",
            "CHATTER_MOCK_PORT": str(self.port),
            "OPENAI_BASE_URL": f"http://127.0.0.1:{self.port}/v1",
            "CHATTER_HTTP": f"127.0.0.1:{self.http_port}",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        })
        self.env.pop("OPENAI_API_KEY", None)
        for key in [k for k in self.env if k.startswith(("CHATTER_ENDPOINT_", "CHATTER_CURVE_"))
                    or k in ("CHATTER_COORDINATOR", "CHATTER_INSECURE_TCP")]:
            del self.env[key]  # a private stack never shares the caller's endpoints or keys
        self.env.update(env)
        self.procs: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, *names: str, wait: bool = True) -> LocalStack:
        """Start ``names`` (every service when none), and wait until each says it is ready unless ``wait`` is
        false (a persister that waits for its database)."""
        wanted = names or SERVICES
        try:
            for name in wanted:
                copies = self.generators if (name == "generator" and not names) else 1
                for i in range(copies):
                    key = name if i == 0 else f"{name}.{i + 1}"
                    log = open(self.workdir / f"{key}.log", "ab")
                    module = MODULES.get(name, f"services.{name}")
                    self.procs[key] = subprocess.Popen([*self.prefix, sys.executable, "-m", module],
                                                       env=self.env,
                                                       cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
                    log.close()
            if wait:
                self.wait_ready(wanted)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, names, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        keys = [k for k in self.procs if k.split(".")[0] in names]
        while time.monotonic() < deadline:
            for key in keys:
                if self.procs[key].poll() is not None:
                    raise RuntimeError(f"{key} exited with {self.procs[key].returncode}:\n{self.log(key)[-3000:]}")
            if all(f"{k.split('.')[0]}_ready" in self.log(k) for k in keys):
                if "generator" not in names or self.live_generators() >= sum(k.startswith("generator") for k in keys):
                    return
            time.sleep(0.05)
        raise TimeoutError("stack not ready:\n" + "\n".join(self.log(k)[-2000:] for k in keys))

    def client(self, rpc_timeout_ms: int = 5000, **kwargs) -> Client:
        return Client(rpc_timeout_ms=rpc_timeout_ms, run_dir=str(self.run_dir), **kwargs)

    def live_generators(self) -> int:
        try:
            with self.client(rpc_timeout_ms=500) as client:
                return len(client.status().generators)
        except ChatterError:
            return 0

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items() if proc.poll() is None}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=10)

    def stop(self) -> dict[str, int]:
        """SIGTERM every process this stack started, SIGKILL what lingers; returns exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
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
