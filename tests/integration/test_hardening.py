"""Faults and bad input against real processes: a full disk, a deleted database, a second coordinator, extreme
integers, a leaked key, file modes, closed pipes. Each of these lost data, leaked a secret or printed a
traceback once; each test would have caught it."""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import msgspec
import pytest
import zmq

from tools.spawn import REPO
from protocol import codec, messages as m
from services.mock_llm.script import reply_text
from tests.integration.stack import BOTH_DATABASES, Stack, free_port, wait_until

MODEL = "mock-1"


def expected(text: str, tokens: int) -> str:
    return reply_text([{"role": "user", "content": text}], MODEL, tokens)


def persister_status(stack) -> dict:
    done = stack.cli("status", "--json")
    return json.loads(done.stdout).get("persister") or {} if done.returncode == 0 else {}


def one_line(stderr: bytes) -> str:
    """A refusal is one line, never a traceback."""
    text = stderr.decode(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text and len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------- data loss


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MB tmpfs that the test mounts, so a disk can really fill. CI runs as root and must run this."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write until the disk is full: unbuffered, so a short write takes the last bytes there are and nothing is
    left in a buffer for the close to fail on."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def test_a_full_disk_loses_no_reply_and_says_so_until_space_comes_back(fresh_stack, small_tmpfs):
    db = small_tmpfs / "chatter.db"
    stack = fresh_stack(CHATTER_DATABASE_URL=f"sqlite:///{db}", CHATTER_PERSIST_RESEND_MS="500")
    first = stack.cli_json("send", "before the disk fills [[mock tokens=20]]")
    assert first["status"] == "completed"
    filler = fill(small_tmpfs)
    text = "while the disk is full [[mock tokens=300 tps=200]]"
    send = stack.spawn_cli("send", text, "--json")
    try:
        failing = wait_until(lambda: (persister_status(stack).get("failing_since") and persister_status(stack)),
                             what="chatter status showing the failing persister")
        assert "full" in failing["last_error"], failing  # the database's own words
        assert failing["failed_batches"] >= 1 and failing["ops_rejected"] == 0
        assert "database: FAILING for" in stack.cli("status").stdout.decode()
        time.sleep(1.5)  # a few retries with backoff, all failing
        assert send.poll() is None  # no final: nothing is durable yet, so nothing is shown as final
        filler.unlink()  # space comes back
        out, err = send.communicate(timeout=60)
    finally:
        if send.poll() is None:
            send.kill()
    result = json.loads(out)
    assert result["status"] == "completed" and result["content"] == expected(text, 300), err.decode()[-2000:]
    assert persister_status(stack)["failing_since"] is None
    log = stack.log("persister")
    assert "database or disk is full" in log and "Traceback" in log  # its words, with the traceback
    stack.stop()  # what is in the database file, after a restart, is what counts
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select session_id, role, content, status from message order by created_at").fetchall()
    assert rows == [(first["session_id"], "user", "before the disk fills [[mock tokens=20]]", "completed"),
                    (first["session_id"], "assistant", first["content"], "completed"),
                    (result["session_id"], "user", text, "completed"),
                    (result["session_id"], "assistant", result["content"], "completed")]


def test_a_deleted_database_is_noticed_nothing_is_acked_and_a_restart_keeps_what_followed(fresh_stack):
    stack = fresh_stack(CHATTER_PERSIST_RESEND_MS="500")
    assert stack.cli_json("send", "before [[mock tokens=5]]")["status"] == "completed"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{stack.db_path}{suffix}").unlink(missing_ok=True)
    text = "after the delete [[mock tokens=40]]"
    send = stack.spawn_cli("send", text, "--json")
    try:
        failing = wait_until(lambda: (persister_status(stack).get("last_error") and persister_status(stack)),
                             what="chatter status showing the deleted database")
        assert "deleted or replaced" in failing["last_error"]
        assert "deleted or replaced" in stack.log("persister")
        assert send.poll() is None  # not acked, so not final
        stack.kill("persister")
        stack.start("persister")  # opens the database anew; the coordinator resends what was not acked
        out, _ = send.communicate(timeout=60)
    finally:
        if send.poll() is None:
            send.kill()
    result = json.loads(out)
    assert result["status"] == "completed" and result["content"] == expected(text, 40)
    assert stack.wait_db_status(result["message_id"], ("completed",))["content"] == result["content"]


def test_a_second_coordinator_on_the_same_run_directory_refuses_to_start(fresh_stack):
    stack = fresh_stack()
    sockets = sorted(p.name for p in stack.run_dir.glob("*.sock"))
    second = subprocess.run([sys.executable, "-m", "services.coordinator"], env=stack.env, cwd=REPO,
                            capture_output=True, timeout=60)
    assert second.returncode == 1
    line = one_line(second.stderr)
    assert "another coordinator" in line and str(stack.procs["coordinator"].pid) in line
    assert sorted(p.name for p in stack.run_dir.glob("*.sock")) == sockets  # the live one's sockets are untouched
    out = stack.cli_json("send", "still there? [[mock tokens=8]]")
    assert out["status"] == "completed" and out["content"] == expected("still there? [[mock tokens=8]]", 8)


# ---------------------------------------------------------------- one request never takes a process down


def rpc(stack, frames: list[bytes], timeout_ms: int = 5000) -> list[m.Reply]:
    """Raw frames into the coordinator's rpc socket; one decoded reply per frame."""
    ctx, sock = stack.raw_socket(zmq.DEALER, "rpc")
    try:
        for frame in frames:
            sock.send(frame)
        replies = []
        while len(replies) < len(frames) and sock.poll(timeout_ms):
            replies.append(codec.decode(sock.recv(), (m.Reply,)))
        return replies
    finally:
        sock.close(0)
        ctx.term()


@BOTH_DATABASES
def test_huge_integers_are_refused_one_by_one_and_nothing_goes_down(stack):
    huge = 2**64 - 1
    done = stack.cli("sessions", "--limit", str(huge))
    assert done.returncode == 2 and "must be from 1 to 10000000" in done.stderr.decode()
    done = stack.cli("send", "x", "--max-input-tokens", str(huge))
    assert done.returncode == 2 and "must be from 1 to 2147483647" in done.stderr.decode()
    before = persister_status(stack)
    replies = rpc(stack, [msgpack.packb([codec.PROTOCOL_VERSION, [m.Sessions.TYPE, 1, huge]]),
                          msgpack.packb([codec.PROTOCOL_VERSION, [m.NewSession.TYPE, 2, None, None, huge]]),
                          msgpack.packb([codec.PROTOCOL_VERSION, [m.Cancel.TYPE, 3, "s", None, -1]])])
    assert [(r.req_id, r.ok) for r in replies] == [(1, False), (2, False), (3, False)]
    assert "Sessions.limit: Expected `int` <= 100000" in replies[0].error
    assert "NewSession.max_input_tokens: Expected `int` <= 2147483647" in replies[1].error
    assert "Cancel.seen_len: Expected `int` >= 0" in replies[2].error
    out = stack.cli_json("send", "still up [[mock tokens=4]]")
    assert out["status"] == "completed"
    after = persister_status(stack)
    assert after["failed_batches"] == before.get("failed_batches", 0) and after["ops_rejected"] == 0


EXTREMES = [2**64 - 1, -(2**63), 2**63, -1, 0, 1.5, float("nan"), float("inf"), True, None, "", "x" * 200,
            "\u0000\U0001F642", b"\xff", [], [[1, "a"]], {"temperature": 2**64 - 1}, {1: 2}]


@BOTH_DATABASES
def test_every_rpc_field_with_extreme_values_gets_an_answer_and_breaks_nothing(stack):
    """Each request type, each field replaced by each extreme value: every frame is answered (accepted or
    refused in words), the coordinator never answers "internal error", and nothing reaches the database
    that it cannot store (PostgreSQL refuses a NUL in text: it is refused before)."""
    session_id = stack.cli_json("send", "fuzz target [[mock tokens=3]]")["session_id"]
    samples = {
        m.NewSession: m.NewSession(0, "sys", MODEL, 100), m.Send: m.Send(0, session_id, "hi", "r", MODEL, None, [
            {"type": "function", "function": {"name": "f"}}], "auto"),
        m.Cancel: m.Cancel(0, session_id, None, 0), m.Snapshot: m.Snapshot(0, session_id, None),
        m.Status: m.Status(0, session_id), m.History: m.History(0, session_id), m.Preview: m.Preview(0, "id"),
        m.Regenerate: m.Regenerate(0, session_id, "r2"), m.Sessions: m.Sessions(0, 5),
        m.ConfigureSession: m.ConfigureSession(0, session_id, None, None, None, {"max_tokens": 10}),
        m.ResolveSession: m.ResolveSession(0, session_id[:8]), m.Continue: m.Continue(0, session_id, "r3"),
        m.RenameSession: m.RenameSession(0, session_id, "title"), m.DeleteSessions: m.DeleteSessions(0, ["f" * 32]),
        m.Search: m.Search(0, "fuzz target", session_id, 5),
        m.EditMessage: m.EditMessage(0, session_id, "1", "again", "r4"),
        m.SwitchBranch: m.SwitchBranch(0, session_id, "1", 0),
        m.ForkSession: m.ForkSession(0, session_id, "2"), m.SessionTree: m.SessionTree(0, session_id, 0),
        m.DeleteBranch: m.DeleteBranch(0, session_id, "f" * 32), m.ExportSession: m.ExportSession(0, session_id),
        m.ReplyOf: m.ReplyOf(0, "f" * 32), m.AddUser: m.AddUser(0, "fuzzer", "c" * 64),
        m.RevokeUser: m.RevokeUser(0, "fuzzer"), m.Users: m.Users(0), m.WhoIs: m.WhoIs(0, "d" * 64),
        m.FindTurn: m.FindTurn(0, "a" * 64, "b" * 64, "fuzzer"),
        m.ImportSession: m.ImportSession(0, m.SessionRecord(session_id="e" * 32, title="imported"), [
            m.MessageRecord(message_id="e" * 32, session_id="e" * 32, role="user", content="hi", status="completed",
                            created_at=1.0, parent_id="")]),
    }
    assert set(samples) == set(m.RPC_REQUESTS)
    frames, req_id = [], 1000
    for cls, sample in samples.items():
        for index, name in enumerate(cls._FIELDS[1:], start=1):
            for value in EXTREMES:
                req_id += 1
                values = [msgspec.to_builtins(getattr(sample, f)) for f in cls._FIELDS]
                values[0], values[index] = req_id, value
                frames.append(msgpack.packb([codec.PROTOCOL_VERSION, [cls.TYPE, *values]], use_bin_type=True))
    replies = []
    for start in range(0, len(frames), 50):
        replies += rpc(stack, frames[start:start + 50])
    assert sorted(r.req_id for r in replies) == list(range(1001, req_id + 1))
    assert not [r.error for r in replies if not r.ok and "internal error" in (r.error or "")]
    time.sleep(1.0)  # whatever was accepted has been through the persister
    status = json.loads(stack.cli("status", "--json").stdout)
    assert status["persister"]["failed_batches"] == 0 and status["persister"]["ops_rejected"] == 0
    assert "rpc_failed" not in stack.log("coordinator")
    assert status["reads_failing_since"] is None  # no request made the coordinator's reads back off
    nul = [r.error for r in replies if not r.ok and "NUL" in (r.error or "")]
    assert nul and all("cannot be stored" in e for e in nul)
    assert stack.cli_json("send", "after the fuzz [[mock tokens=4]]")["status"] == "completed"


# ---------------------------------------------------------------- secrets and permissions

SECRET = "sk-test-" + "5ecret" * 6


class RawServer:
    """A TCP server on loopback that answers every connection with fixed bytes: a server that is not HTTP,
    or not an API."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.requests.append(conn.recv(65536))
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def test_the_api_key_never_leaks_when_the_upstream_is_not_http(fresh_stack):
    server = RawServer(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    try:
        stack = fresh_stack(OPENAI_BASE_URL=f"http://127.0.0.1:{server.port}/v1", OPENAI_API_KEY=SECRET,
                            CHATTER_RETRY_DEADLINE_MS="1000")
        done = stack.cli("send", "hello?", "--json")
        out = json.loads(done.stdout)
        assert any(SECRET.encode() in request for request in server.requests)  # it was sent, as it must be
    finally:
        server.close()
    assert out["status"] == "error" and "sent a response that is not HTTP" in out["error"], out
    watched = stack.cli("history", out["session_id"])
    row = stack.db_message(out["message_id"])
    assert "not HTTP" in row["error"]
    everything = [done.stdout, done.stderr, watched.stdout, watched.stderr, json.dumps(row).encode()]
    everything += [stack.log(name).encode() for name in ("coordinator", "generator", "persister", "mock_llm")]
    for blob in everything:
        assert SECRET.encode() not in blob and b"5ecret" not in blob
        assert b"RequestInfo" not in blob


def test_an_html_page_and_a_refused_connection_are_named_for_what_they_are(fresh_stack):
    page = b"<html><body>Welcome to nginx</body></html>"
    server = RawServer(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                       b"Connection: close\r\n\r\n%s" % (len(page), page))
    try:
        stack = fresh_stack(OPENAI_BASE_URL=f"http://127.0.0.1:{server.port}/", CHATTER_RETRY_DEADLINE_MS="1000")
        html = stack.cli_json("send", "hello?")
    finally:
        server.close()
    assert html["status"] == "error" and "not an event stream" in html["error"] and "text/html" in html["error"]
    assert "finish reason" not in html["error"]
    stack.stop()
    refused = fresh_stack(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1", CHATTER_RETRY_DEADLINE_MS="800")
    out = refused.cli_json("send", "anyone?")
    assert out["status"] == "error" and "connection refused" in out["error"] and "Timeout" not in out["error"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_conversations_on_disk_are_private_to_their_user(fresh_stack, tmp_path):
    data = tmp_path / "data"
    stack = fresh_stack(CHATTER_DATABASE_URL=f"sqlite:///{data / 'chatter.db'}")
    assert stack.cli_json("send", "private [[mock tokens=5]]")["status"] == "completed"
    assert mode(data) == 0o700
    for name in ("chatter.db", "chatter.db-wal", "chatter.db-shm"):
        assert mode(data / name) == 0o600, name
    stack.stop()
    # a database that an earlier version left readable is tightened at start
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    shutil.copy(data / "chatter.db", old / "chatter.db")
    os.chmod(old, 0o755)
    os.chmod(old / "chatter.db", 0o644)
    again = fresh_stack(CHATTER_DATABASE_URL=f"sqlite:///{old / 'chatter.db'}")
    assert again.cli_json("send", "still private [[mock tokens=5]]")["status"] == "completed"
    assert mode(old) == 0o700 and mode(old / "chatter.db") == 0o600 and mode(old / "chatter.db-wal") == 0o600


# ---------------------------------------------------------------- every bad input gets one line


@pytest.mark.parametrize("command", [["status"], ["sessions"], ["history", "SESSION"], ["send", "piped [[mock tokens=30]]"]])
def test_a_closed_output_pipe_ends_quietly(stack, command):
    session_id = stack.cli_json("send", "for history [[mock tokens=30]]")["session_id"]
    argv = [a.replace("SESSION", session_id) for a in command]
    proc = subprocess.Popen([*stack.cli_argv(), *argv], env=stack.env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first write (chatter status | head -0)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err.decode()
    assert err.decode().strip() == ""


def sessions_count(stack) -> int:
    return len(stack.cli_json("sessions"))


def test_bad_input_on_the_command_line_is_one_line_and_creates_nothing(stack, tmp_path):
    before = sessions_count(stack)
    cases = [
        ([b"send", b"caf\xff"], 1, "not valid UTF-8"),
        ([b"send", b"   "], 1, "the message is empty"),
        ([b"send", b"hi", b"--session", b""], 1, "cannot be empty"),
        ([b"history", b""], 1, "cannot be empty"),
        ([b"sessions", b"--limit", b"0"], 2, "must be from 1 to 10000000"),
        ([b"loadtest", b"--streams", b"-3"], 2, "must be from 1 to 100000"),
    ]
    for argv, code, words in cases:
        done = subprocess.run([*stack.cli_argv(), *argv], env=stack.env, cwd=REPO, capture_output=True, timeout=60)
        assert done.returncode == code, (argv, done.stderr)
        assert words in done.stderr.decode(errors="replace"), (argv, done.stderr)
        if code == 1:
            one_line(done.stderr)
    big = tmp_path / "big.txt"
    big.write_text("word " * 40_000)  # 200,000 characters: over CHATTER_MAX_TEXT_CHARS
    with open(big, "rb") as stdin:
        done = stack.cli("send", "-", stdin=stdin)
    assert done.returncode == 1 and "the limit is 100000 (CHATTER_MAX_TEXT_CHARS)" in one_line(done.stderr)
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"x" * (5 * 1024 * 1024))
    with open(huge, "rb") as stdin:
        done = stack.cli("send", "-", stdin=stdin)
    assert done.returncode == 1 and "standard input is over 4 MiB" in one_line(done.stderr)
    assert sessions_count(stack) == before  # no refused send left a session behind
    long = tmp_path / "long.txt"
    long.write_text("a long message from a file " * 1000 + "[[mock tokens=5]]")
    with open(long, "rb") as stdin:
        out = json.loads(stack.cli("send", "-", "--json", stdin=stdin).stdout)
    assert out["status"] == "completed"
    assert stack.db_message(out["message_id"])["status"] == "completed"
    assert json.loads(stack.cli("history", out["session_id"], "--json").stdout)["messages"][0]["content"] \
        == long.read_text()


def run_service(name: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"services.{name}"], env=env, cwd=REPO, capture_output=True,
                          timeout=60)


def test_a_process_that_cannot_run_refuses_to_start_in_one_line(tmp_path):
    base = Stack(tmp_path / "refuse").env
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [
        ("persister", {"CHATTER_DATABASE_URL": "oracle://nowhere/db"}, "not a database URL"),
        ("coordinator", {"CHATTER_DATABASE_URL": "oracle://nowhere/db"}, "not a database URL"),
        ("persister", {"CHATTER_DATABASE_URL": "mysql://chatter@127.0.0.1:9/chatter"}, "driver"),
        ("persister", {"CHATTER_DATABASE_URL": f"sqlite:///{tmp_path}"}, "names a directory"),
        # a server that does not answer is not a bad setting: it is waited for (test_postgres.py, "down at start")
        ("coordinator", {"CHATTER_RUN_DIR": str(a_file)}, "is a file"),
        ("coordinator", {"CHATTER_RUN_DIR": str(tmp_path / ("d" * 120))}, "too long for an ipc socket"),
        ("generator", {"CHATTER_GENERATOR_CONCURRENCY": "0"}, "CHATTER_GENERATOR_CONCURRENCY must be from 1"),
        ("generator", {"CHATTER_UPSTREAM_TIMEOUT_MS": "-5"}, "CHATTER_UPSTREAM_TIMEOUT_MS must be from 100"),
        ("coordinator", {"CHATTER_STALL_MS": "-1"}, "CHATTER_STALL_MS must be from 100"),
        ("mock_llm", {"CHATTER_MOCK_PORT": "70000"}, "CHATTER_MOCK_PORT must be from 1 to 65535"),
        ("mock_llm", {"CHATTER_MOCK_TPS": "fast"}, "CHATTER_MOCK_TPS must be a number"),
    ]
    for name, env, words in cases:
        done = run_service(name, base | env)
        assert done.returncode == 1, (name, env, done.stderr)
        assert words in one_line(done.stderr), (name, env)
    assert not (tmp_path / "refuse" / "run" / "rpc.sock").exists()  # nothing was left half started


def test_a_second_persister_on_the_same_sqlite_file_is_refused(tmp_path):
    """It would run beside the first, its batches failing; a lock file beside the database refuses it in one
    line, exit 1, naming the first one's pid, and the first goes on writing."""
    stack = Stack(tmp_path / "stack")
    try:
        stack.start()
        done = subprocess.run([sys.executable, "-m", "services.persister"], env=stack.env, cwd=REPO,
                              capture_output=True, timeout=60)
        line = one_line(done.stderr)
        assert done.returncode == 1 and f"another persister (pid {stack.pids()['persister']}) already writes" in line
        lock = Path(str(stack.db_path) + ".persister-lock")
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
        after = stack.cli_json("send", "after the second persister [[mock tokens=10]]")
        assert after["status"] == "completed" and stack.db_message(after["message_id"])["status"] == "completed"
    finally:
        stack.stop()
    again = Stack(tmp_path / "stack")  # the lock went with the first persister: a new one starts
    try:
        again.start()
        assert again.cli_json("send", "a new persister [[mock tokens=5]]")["status"] == "completed"
    finally:
        again.stop()
