"""``chatter loadtest``: many simulated users against a running stack (or one it spawns), every stream
verified against the mock's deterministic text and the database, with a latency and cost report.

One process drives every user through one DEALER and one SUB socket: requests are pipelined and
matched by request id, events are routed by session. A load client that cost more than the backend
would measure itself.
"""
from __future__ import annotations

import gc
import itertools
import json
import random
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import zmq

from clients.api import Client
from clients.view import GAP, ReplyView
from tools.report import ProcessMeter, build_report
from protocol import codec, messages as m
import transport
from services import shell
from tools.verify import expected_answer, load_message

SILENCE_S = 2.0  # a stream quiet this long asks for a snapshot


@dataclass
class LoadSpec:
    streams: int = 20
    count: int | None = None  # total streams; default: ``streams``
    duration_s: float | None = None
    tokens: int = 200
    tps: float = 20.0
    ttft_ms: float = 50.0
    cancel_frac: float = 0.0
    model: str = "mock-1"
    seed: int = 1
    reasoning_tokens: int = 0  # the mock thinks this many tokens first, in this field (or "think_tags")
    reasoning_field: str = "reasoning_content"
    markdown_frac: float = 0.0  # the share of streams answered with the mock's Markdown document


@dataclass
class UserStream:
    index: int
    text: str
    cancel_at_chars: int | None
    session_id: str | None = None
    generation_id: str | None = None
    message_id: str | None = None
    view: ReplyView | None = None
    early_events: list = field(default_factory=list)  # events that beat the send's reply
    sent_at: float = 0.0
    first_text_at: float | None = None
    arrivals: list = field(default_factory=list)  # (the answer's length, time.time()) after each update
    cancelled_at: float | None = None
    ended_at: float | None = None
    last_event_at: float = 0.0
    snapshot_pending: bool = False


class LoadRun:
    def __init__(self, client: Client, spec: LoadSpec, run_id: str, progress=None) -> None:
        self.client = client
        self.spec = spec
        self.run_id = run_id
        self.progress = progress
        self.rng = random.Random(spec.seed)
        self.req_ids = itertools.count(1_000_000)
        self.callbacks: dict[int, tuple] = {}
        self.by_session: dict[str, UserStream] = {}
        self.streams: list[UserStream] = []
        self.delivery_ms: list[float] = []
        self.text_times: list[tuple[float, int]] = []  # (time, chars) for throughput over time
        self.started = 0
        self.finished = 0
        # for ``tools.chaos``: when to stop starting streams, hooks, and resends of unanswered requests
        self.keep_going = None  # a callable: start new streams while it says so (instead of count or duration)
        self.on_moved = None  # (stream, upstream_at or None, now): a stream's reply moved on
        self.on_tick = None  # (now): every loop turn
        self.give_up_after_s = 120.0  # with no stream finishing this long, the open ones end as errors
        self.resend_after_s: float | None = None  # resend a request unanswered this long (same request id)
        self.unanswered: dict[int, tuple[m.Message, float]] = {}

    # ------------------------------------------------------------ rpc, pipelined

    def call(self, msg: m.Message, on_reply, stream: UserStream) -> None:
        self.callbacks[msg.req_id] = (on_reply, stream)
        if self.resend_after_s is not None:
            self.unanswered[msg.req_id] = (msg, time.monotonic())
        self.client.rpc.send(msg.encode())

    def resend_unanswered(self, clock: float) -> None:
        """Requests a coordinator never answered (it died): again, with the same request id and client request
        id, so a send that did arrive is answered with its first generation, never a second."""
        for req_id, (msg, at) in list(self.unanswered.items()):
            if clock - at >= self.resend_after_s:
                self.unanswered[req_id] = (msg, clock)
                self.client.rpc.send(msg.encode())

    def on_rpc(self, payload: bytes) -> None:
        reply = codec.decode(payload, (m.Reply,))
        self.unanswered.pop(reply.req_id, None)
        handler = self.callbacks.pop(reply.req_id, None)
        if handler is not None:
            on_reply, stream = handler
            on_reply(stream, reply)

    # ------------------------------------------------------------ one user's life

    def start_stream(self) -> None:
        index = self.started
        self.started += 1
        spec = self.spec
        thinking = (f" reasoning_tokens={spec.reasoning_tokens} reasoning_field={spec.reasoning_field}"
                    if spec.reasoning_tokens else "")
        text = load_message(self.run_id, index, spec, thinking)
        cancel_at = None
        if self.rng.random() < spec.cancel_frac:
            expected_len = len(expected_answer(text, spec.model, spec.tokens))
            cancel_at = self.rng.randint(1, max(1, expected_len - 1))
        stream = UserStream(index, text, cancel_at, last_event_at=time.monotonic())
        self.streams.append(stream)
        self.call(m.NewSession(next(self.req_ids), None, spec.model), self.on_session, stream)

    def on_session(self, stream: UserStream, reply: m.Reply) -> None:
        if not reply.ok:
            return self.end(stream, "error: " + str(reply.error))
        stream.session_id = reply.result.session_id
        self.by_session[stream.session_id] = stream
        self.client.subscribe(stream.session_id)
        stream.sent_at = time.time()
        self.call(m.Send(next(self.req_ids), stream.session_id, stream.text, f"load-{self.run_id}-{stream.index}",
                         self.spec.model), self.on_sent, stream)

    def on_sent(self, stream: UserStream, reply: m.Reply) -> None:
        if not reply.ok:
            return self.end(stream, "error: " + str(reply.error))
        stream.generation_id = reply.result.generation_id
        stream.message_id = reply.result.message_id
        stream.view = ReplyView(stream.generation_id)
        for event in stream.early_events:
            self.apply(stream, event, time.time())
        stream.early_events.clear()

    def on_event(self, payload: bytes, now: float) -> None:
        try:
            event = codec.decode(payload, m.STREAM_EVENTS)
        except codec.FrameError:
            return
        stream = self.by_session.get(event.session_id)
        if stream is None or stream.ended_at is not None or type(event) is m.SessionChanged:
            return
        stream.last_event_at = time.monotonic()
        if stream.view is None:
            stream.early_events.append(event)
            return
        self.apply(stream, event, now)

    def apply(self, stream: UserStream, event: m.Message, now: float) -> None:
        if isinstance(event, m.StreamDelta) and event.generation_id == stream.generation_id and event.first_received_at:
            self.delivery_ms.append((now - event.first_received_at) * 1000)
        if self.on_moved is not None and event.generation_id == stream.generation_id and isinstance(
                event, (m.StreamDelta, m.Final)):
            self.on_moved(stream, event.first_received_at if isinstance(event, m.StreamDelta) else None, now)
        if stream.view.apply(event) == GAP:
            self.ask_snapshot(stream)
        self.after_update(stream, now)

    def after_update(self, stream: UserStream, now: float) -> None:
        view = stream.view
        view.take_new_thinking()
        fresh = view.take_new_text()
        if fresh:
            self.text_times.append((now, len(fresh)))
            stream.arrivals.append((view.length, now))
            if stream.first_text_at is None:
                stream.first_text_at = now
        if (stream.cancel_at_chars is not None and stream.cancelled_at is None and view.final is None
                and view.length >= stream.cancel_at_chars):
            stream.cancelled_at = time.time()
            self.call(m.Cancel(next(self.req_ids), stream.session_id, stream.generation_id, *view.cancel()),
                      lambda s, r: None, stream)
        if view.final is not None:
            self.end(stream, None)

    def ask_snapshot(self, stream: UserStream) -> None:
        if stream.snapshot_pending:
            return
        stream.snapshot_pending = True
        self.call(m.Snapshot(next(self.req_ids), stream.session_id, stream.generation_id), self.on_snapshot, stream)

    def on_snapshot(self, stream: UserStream, reply: m.Reply) -> None:
        stream.snapshot_pending = False
        if reply.ok and stream.ended_at is None:
            view = stream.view
            before = (view.length, view.thinking.length, view.final)
            view.apply_snapshot(reply.result)
            now = time.time()
            if self.on_moved is not None and (view.length, view.thinking.length, view.final) != before:
                # what a snapshot brings moved the reply on too: its end when the Final was published while
                # this client was not subscribed (a coordinator's restart), or the text it missed
                self.on_moved(stream, None, now)
            self.after_update(stream, now)

    def end(self, stream: UserStream, failure: str | None) -> None:
        if stream.ended_at is not None:
            return
        stream.ended_at = time.time()
        if failure is not None:  # the client's own verdict: nothing the backend said, nothing durable
            stream.view = stream.view or ReplyView(stream.generation_id or "")
            stream.view.status = "error"
            stream.view.final = {"status": "error", "error": failure, "stats": {}, "client_side": True}
        if stream.session_id:
            self.client.unsubscribe(stream.session_id)
        self.finished += 1
        if self.progress is not None:
            self.progress(self.finished)

    # ------------------------------------------------------------ the loop

    def run(self, meter: ProcessMeter) -> float:
        spec = self.spec
        total = spec.count if spec.count is not None else (None if spec.duration_s else spec.streams)
        began = time.monotonic()
        poller = zmq.Poller()
        poller.register(self.client.rpc, zmq.POLLIN)
        poller.register(self.client.stream, zmq.POLLIN)
        next_sample = next_check = 0.0
        last_progress, last_finished = time.monotonic(), 0
        while True:
            clock = time.monotonic()
            open_streams = self.started - self.finished
            more = self._more(total, clock - began)
            while more and open_streams < spec.streams:
                self.start_stream()
                open_streams += 1
                more = self._more(total, clock - began)
            if not more and open_streams == 0:
                break
            ready = dict(poller.poll(50))
            now = time.time()
            if self.client.stream in ready:
                for _ in range(1024):
                    try:
                        self.on_event(transport.payload_of(self.client.stream.recv(zmq.NOBLOCK)), now)
                    except zmq.Again:
                        break
            if self.client.rpc in ready:
                for _ in range(1024):
                    try:
                        self.on_rpc(self.client.rpc.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            clock = time.monotonic()
            if clock >= next_sample:
                next_sample = clock + 0.5
                meter.sample()
            if self.on_tick is not None:
                self.on_tick(now)
            if clock >= next_check:
                next_check = clock + 0.5
                if self.resend_after_s is not None:
                    self.resend_unanswered(clock)
                for stream in self.streams:
                    if stream.ended_at is None and stream.view is not None and clock - stream.last_event_at > SILENCE_S:
                        stream.last_event_at = clock
                        self.ask_snapshot(stream)
            if self.finished != last_finished:
                last_finished, last_progress = self.finished, clock
            elif clock - last_progress > self.give_up_after_s:
                for stream in self.streams:
                    if stream.ended_at is None:
                        self.end(stream, f"error: no progress for {self.give_up_after_s:g} s")
        return time.monotonic() - began

    def _more(self, total: int | None, elapsed_s: float) -> bool:
        if self.keep_going is not None:
            return self.keep_going()
        return self.started < total if total is not None else elapsed_s < self.spec.duration_s


def fetch_journal(port: int) -> dict[str, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/journal", timeout=30) as resp:
        entries = json.load(resp)["requests"]
    by_text = {}
    for entry in entries:
        users = [msg for msg in entry["body"].get("messages", []) if msg.get("role") == "user"]
        if users:
            by_text[users[-1]["content"]] = entry
    return by_text


def read_database(url: str, message_ids: list[str]) -> dict[str, tuple[str, str, str]]:
    """message id -> (status, answer, thinking) as stored."""
    from services import store
    db = store.open_database(url)
    try:
        rows = {}
        for start in range(0, len(message_ids), 500):
            batch = message_ids[start:start + 500]
            for row in store.Message.select(store.Message.id, store.Message.status).where(store.Message.id.in_(batch)):
                rows[row.id] = (row.status, *store.streamed_texts(row.id))
        return rows
    finally:
        db.close()


def run_loadtest(spec: LoadSpec, *, spawn: bool, generators: int = 1, database_url: str | None = None,
                 mock_port: int | None = None, progress=None, stack_env: dict | None = None,
                 stack=None) -> dict:
    """Run one load test and return its report (the JSON object): against a stack it spawns (``spawn``),
    a ``tools.spawn.LocalStack`` of the caller's (``stack``, left running), or the one the environment names."""
    from services import config
    from tools.dbmeter import PostgresMeter, SqliteMeter
    from tools.spawn import LocalStack

    run_id = f"{int(time.time())}-{random.randrange(10**6)}"
    workdir = None
    owned = None
    if stack is not None:
        database_url, mock_port = stack.env["CHATTER_DATABASE_URL"], stack.port
    elif spawn:
        workdir = tempfile.mkdtemp(prefix="chatter-load-")
        per_generator = -(-spec.streams // generators) + 8
        env = {"CHATTER_GENERATOR_CONCURRENCY": str(per_generator)} | (stack_env or {})
        if database_url:  # a database of the caller's (PostgreSQL): the stack's processes use it
            env["CHATTER_DATABASE_URL"] = database_url
        stack = owned = LocalStack(Path(workdir), generators=generators, **env).start()
        database_url = stack.env["CHATTER_DATABASE_URL"]
        mock_port = stack.port
    database_url = database_url or config.database_url()
    mock_port = mock_port or config.mock_port()
    try:
        client = stack.client(rpc_timeout_ms=10_000) if stack else Client(rpc_timeout_ms=10_000)
        with client:
            status_before = client.status()
            meter = ProcessMeter(service_pids(status_before, stack) | {"loadtest": psutil.Process().pid})
            load = LoadRun(client, spec, run_id, progress)
            server = PostgresMeter(database_url) if database_url.startswith("postgresql://") else None
            sqlite = SqliteMeter(database_url) if server is None else None
            # the client's own collector paused it up to ~50 ms at 1000 streams, counted as delivery latency;
            # settled for the run only, so the caller's process (pytest, the bench) gets its collector back
            threshold = gc.get_threshold()
            shell.freeze_startup_heap()
            try:
                elapsed = load.run(meter)
            finally:
                gc.unfreeze()
                gc.set_threshold(*threshold)
            cpu, io, rss = meter.finish()
            server_figures = server.finish() if server is not None else None
            sqlite_figures = sqlite.finish() if sqlite is not None else None
            status_after = settled_status(client)
        journal = fetch_journal(mock_port)
        db_rows = read_database(database_url, [s.message_id for s in load.streams if s.message_id])
        return build_report(spec, load, elapsed, cpu, io, rss, meter, status_before, status_after, journal, db_rows,
                            server_figures, sqlite_figures)
    finally:
        if owned is not None:
            owned.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def service_pids(status, stack=None, *extra: str) -> dict[str, int]:
    """The stack's processes to meter, by name: those the coordinator's status names, and the mock and ``extra``
    (the gateway) when the stack is the caller's."""
    pids = {"coordinator": status.coordinator_pid, "persister": status.persister_pid}
    for i, gen in enumerate(status.generators):
        pids["generator" if i == 0 else f"generator.{i + 1}"] = gen.pid
    if stack is not None:
        pids |= {name: stack.procs[name].pid for name in ("mock_llm", *extra)}
    return {name: pid for name, pid in pids.items() if pid and psutil.pid_exists(pid)}


def settled_status(client: Client, timeout_s: float = 3.0) -> dict:
    """The coordinator's status once the persister's totals (sent a few times a second) stop moving."""
    status = client.status()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.3)
        again = client.status()
        if again.persister == status.persister:
            return again
        status = again
    return status
