"""A private PostgreSQL server for tests and benchmarks: ``initdb`` into a directory of ours, listening on
127.0.0.1 on a free port (and a socket in that directory), run as a non-root user when we are root, stopped
by its PID file's postmaster. Installs Debian's ``postgresql`` with apt-get when the binaries are missing."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tools.spawn import free_port
from tools.system import apt_install

USER, PASSWORD, DATABASE = "chatter", "chatter-test-password", "chatter"


class PostgresUnavailable(Exception):
    """No server can be had here; the sentence says why."""


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def ensure_installed() -> Path:
    bin_dir = binaries()
    if bin_dir is None and apt_install("postgresql", timeout=900):
        bin_dir = binaries()
    if bin_dir is None:
        raise PostgresUnavailable("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin) and no apt-get as root "
                                  "to install them")
    return bin_dir


class PostgresServer:
    def __init__(self, workdir: Path | None = None) -> None:
        self.bin = ensure_installed()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="chatter-pg-"))
        self.data = self.workdir / "data"
        self.port = free_port()
        self.run_as = None
        if os.geteuid() == 0:  # initdb refuses root: the package's postgres user, else nobody
            name = "postgres" if _user_exists("postgres") else "nobody"
            self.run_as = name
        self.url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=self.workdir)
        if check and done.returncode != 0:
            raise PostgresUnavailable(f"{argv[0]} failed: {done.stderr.decode(errors='replace')[-500:]}")
        return done

    def start(self) -> PostgresServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            info = pwd.getpwnam(self.run_as)
            os.chown(self.workdir, info.pw_uid, info.pw_gid)
        os.chmod(self.workdir, 0o700)
        pwfile = self.workdir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.run_as:
            os.chown(pwfile, pwd.getpwnam(self.run_as).pw_uid, -1)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile), "-A", "scram-sha-256",
                  "-E", "UTF8", "--no-instructions")
        pwfile.unlink()
        self.pg_ctl_start()
        self._createdb()
        return self

    def _createdb(self) -> None:
        env_cmd = ["env", f"PGPASSWORD={PASSWORD}", str(self.bin / "createdb"), "-h", "127.0.0.1", "-p",
                   str(self.port), "-U", USER, DATABASE]
        cmd = ["runuser", "-u", self.run_as, "--", *env_cmd] if self.run_as else env_cmd
        done = subprocess.run(cmd, capture_output=True, timeout=60)
        if done.returncode != 0:
            raise PostgresUnavailable(f"createdb failed: {done.stderr.decode(errors='replace')[-500:]}")

    def new_database(self, prefix: str) -> str:
        """A new, empty database on this server; returns its URL."""
        import psycopg
        # unique: a free port number is not (the kernel hands a closed one out again: "stack_60729 already
        # exists" ended a run once the suite made enough databases)
        name = f"{prefix}_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def pg_ctl_start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.workdir} -c fsync=on"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.workdir / "server.log"), "-w",
                  "-t", "60", "start")

    def halt(self, mode: str = "fast") -> None:
        """Stop the server and keep its data: ``pg_ctl_start`` brings it back."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.halt(mode)
        self.pg_ctl_start()

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the server, even when pg_ctl cannot: by its postmaster's PID."""
        if not self.data.exists():
            return
        done = self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        pid = self.pid()
        if done.returncode != 0 and pid:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for _ in range(50):
            if self.pid() is None:
                break
            time.sleep(0.1)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
