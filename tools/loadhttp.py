"""``chatter loadtest --http``: the same load as ``loadtest``, through the gateway: each user an ``openai`` SDK
client (``AsyncOpenAI``) that streams a Responses API reply, every stream verified against the mock's text and the
database, a share of them dropped halfway and resumed by ``starting_after`` (their resume latency measured).

The SDK's clients run in worker processes, each an asyncio loop with its share of the users: one process parsing
every event of 500 streams through the SDK's typed models would measure itself, not the gateway. Workers start,
then wait for the word, so that the meter's baseline holds their CPU too.
"""
from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import queue
import random
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from clients.view import ReplyView
from protocol import messages as m
from tools.verify import expected_answer, load_message
from tools.loadtest import LoadSpec, UserStream, fetch_journal, read_database, service_pids, settled_status
from tools.report import ProcessMeter, build_report, percentiles

USERS_PER_WORKER = 100  # SDK users one worker process drives
ENDS = ("response.completed", "response.incomplete", "response.failed")


@dataclass
class HttpStream:
    """One user's stream as a worker saw it, sent back whole when it ends."""

    index: int
    text: str
    resume: bool
    response_id: str = ""
    sent_at: float = 0.0
    first_text_at: float | None = None
    arrivals: list = field(default_factory=list)  # (the answer's length, time.time()) after each delta
    answer: str = ""
    status: str = "error"
    tokens: int = 0
    resume_ms: float | None = None  # from the resume's request to its first event
    error: str | None = None


def stream_text(run_id: str, index: int, spec: LoadSpec) -> str:
    return load_message(run_id, index, spec)


async def _one(client, spec: LoadSpec, stream: HttpStream) -> HttpStream:
    """A user: create a streamed response (background when it is to be resumed, so that the drop does not cancel
    it), read it, and, for a resumed one, drop it halfway and resume from the last event it had."""
    half = len(expected_answer(stream.text, spec.model, spec.tokens)) // 2
    last = -1

    def take(event) -> bool:
        """One event applied; True once the reply ended."""
        nonlocal last
        last = event.sequence_number
        if event.type == "response.created":
            stream.response_id = event.response.id
        elif event.type == "response.output_text.delta":
            now = time.time()
            stream.answer += event.delta
            stream.arrivals.append((len(stream.answer), now))
            stream.first_text_at = stream.first_text_at or now
        elif event.type in ENDS:
            stream.status = {"completed": "completed", "incomplete": "completed",
                             "cancelled": "cancelled"}.get(event.response.status, "error")
            stream.tokens = event.response.usage.output_tokens if event.response.usage else 0
            return True
        return False

    try:
        stream.sent_at = time.time()
        events = await client.responses.create(model=spec.model, input=stream.text, stream=True,
                                               background=stream.resume)
        ended = False
        async for event in events:
            ended = take(event)
            if ended or (stream.resume and len(stream.answer) >= half and stream.resume_ms is None):
                break
        await events.close()
        if not ended:  # dropped halfway: resumed from the last event it had, on a new connection
            asked = time.time()
            rest = await client.responses.retrieve(stream.response_id, stream=True, starting_after=last)
            async for event in rest:
                if stream.resume_ms is None:
                    stream.resume_ms = (time.time() - asked) * 1000
                if take(event):
                    break
            await rest.close()
    except Exception as exc:  # one user's failure is a failed stream in the report, not the run's end
        stream.status, stream.error = "error", f"{type(exc).__name__}: {exc}"[:300]
    return stream


async def _drive(base_url: str, token: str, spec: LoadSpec, indexes: list[int], resumed: set[int], run_id: str,
                 concurrency: int, done_queue) -> list[HttpStream]:
    import openai  # its connection pool holds 1000, and a worker has USERS_PER_WORKER users
    async with openai.AsyncOpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=600) as client:
        gate = asyncio.Semaphore(concurrency)

        async def user(index: int) -> HttpStream:
            async with gate:
                out = await _one(client, spec, HttpStream(index, stream_text(run_id, index, spec), index in resumed))
            done_queue.put(1)
            return out

        return list(await asyncio.gather(*(user(i) for i in indexes)))


def _worker(base_url, token, spec, indexes, resumed, run_id, concurrency, go, done_queue, results) -> None:
    go.wait()
    results.put(asyncio.run(_drive(base_url, token, spec, indexes, resumed, run_id, concurrency, done_queue)))


def run_http_loadtest(spec: LoadSpec, *, spawn: bool, generators: int = 1, database_url: str | None = None,
                      progress=None, resume_frac: float = 0.2, token: str | None = None,
                      base_url: str | None = None, stack=None, stack_env: dict | None = None) -> dict:
    """Run one load test through the gateway and return its report: ``loadtest``'s figures (every stream checked
    against the mock and the database, CPU per token of each process, the gateway's among them), with the
    delivery latency from the mock's write to the SDK client's receipt, and the resume latency."""
    from services import config
    from tools.dbmeter import SqliteMeter
    from tools.spawn import LocalStack

    run_id = f"{int(time.time())}-{random.randrange(10**6)}"
    count = spec.count if spec.count is not None else spec.streams
    workdir = owned = None
    if stack is None and spawn:
        workdir = tempfile.mkdtemp(prefix="chatter-loadhttp-")
        env = {"CHATTER_GENERATOR_CONCURRENCY": str(-(-spec.streams // generators) + 8),
               "CHATTER_HTTP_STREAMS_PER_USER": str(spec.streams + 8)} | (stack_env or {})
        if database_url:
            env["CHATTER_DATABASE_URL"] = database_url
        stack = owned = LocalStack(Path(workdir), generators=generators, **env).start()
        stack.start("gateway")
    try:
        client = stack.client(rpc_timeout_ms=10_000) if stack else None
        if stack is not None:
            database_url, mock_port = stack.env["CHATTER_DATABASE_URL"], stack.port
            base_url = f"http://127.0.0.1:{stack.http_port}/v1"
            if token is None:  # a user of its own, for this run
                token = "chk_" + secrets.token_urlsafe(32)
                with stack.client(rpc_timeout_ms=10_000) as admin:
                    admin.request(m.AddUser(next(admin.req_ids), f"load-{run_id}",
                                            hashlib.sha256(token.encode()).hexdigest()), timeout_ms=10_000)
        else:
            from clients.api import Client
            client = Client(rpc_timeout_ms=10_000)
            database_url, mock_port = database_url or config.database_url(), config.mock_port()
            base_url = base_url or f"http://{os.environ.get('CHATTER_HTTP', '127.0.0.1:8080')}/v1"
            if not token:
                raise ValueError("loadtest --http against a running stack needs a user's token: CHATTER_TOKEN "
                                 "(chatter users add NAME prints one)")
        rng = random.Random(spec.seed)
        resumed = {i for i in range(count) if rng.random() < resume_frac}
        workers = max(1, -(-spec.streams // USERS_PER_WORKER))
        ctx = multiprocessing.get_context("spawn")
        go, done_queue, results = ctx.Event(), ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(base_url, token, spec, list(range(w, count, workers)), resumed,
                                                   run_id, -(-spec.streams // workers), go, done_queue, results),
                             daemon=True) for w in range(workers)]
        for proc in procs:
            proc.start()
        with client:
            status_before = client.status()
            meter = ProcessMeter(service_pids(status_before, stack, "gateway")
                                 | {f"sdk_client.{i + 1}": proc.pid for i, proc in enumerate(procs)})
            sqlite = SqliteMeter(database_url) if not database_url.startswith("postgresql://") else None
            began = time.monotonic()
            go.set()
            streams, finished, received = [], 0, 0
            while received < len(procs):
                meter.sample()
                try:
                    streams += results.get(timeout=0.5)
                    received += 1
                except queue.Empty:
                    if not any(p.is_alive() for p in procs) and results.empty():
                        break  # a worker died: its streams are missing, and the report says so
                while not done_queue.empty():
                    finished += done_queue.get_nowait()
                    if progress is not None:
                        progress(finished)
            elapsed = time.monotonic() - began
            cpu, io, rss = meter.finish()
            sqlite_figures = sqlite.finish() if sqlite is not None else None
            status_after = settled_status(client)
        for proc in procs:
            proc.join(timeout=10)
        journal = fetch_journal(mock_port)
        load = _as_load_run(streams, spec)
        db_rows = read_database(database_url, [s.message_id for s in load.streams if s.message_id])
        report = build_report(spec, load, elapsed, cpu, io, rss, meter, status_before, status_after, journal, db_rows,
                              None, sqlite_figures)
        tokens = report["tokens"]
        report["client"] = "http (openai SDK, Responses API, through the gateway)"
        report["gateway_cpu_us_per_token"] = report["cpu_us_per_token"].get("gateway")
        report["resumed"] = sum(s.resume for s in streams)
        report["resume_latency_ms"] = percentiles([s.resume_ms for s in streams if s.resume_ms is not None])
        report["errors_detail"] = sorted({s.error for s in streams if s.error})[:10]
        report["missing"] = count - len(streams)  # streams of a worker that died
        report["errors"] += report["missing"]
        report["sdk_client_cpu_us_per_token"] = round(sum(v for k, v in cpu.items() if k.startswith("sdk_client"))
                                                      * 1e6 / tokens, 1) if tokens else None
        report.pop("delivery_latency_ms", None)  # the generator's receipt is not what an HTTP client sees
        return report
    finally:
        if owned is not None:
            owned.stop()
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class StreamsRun:
    """What ``tools.report.build_report`` reads of a load run (``tools.loadtest.LoadRun``'s fields of the same
    names): the streams, each with a view that holds what its client received, and when text arrived."""

    streams: list = field(default_factory=list)
    delivery_ms: list = field(default_factory=list)  # none: the generator's receipt is not what a client sees
    text_times: list = field(default_factory=list)  # (time, chars)


def _as_load_run(streams: list[HttpStream], spec: LoadSpec) -> StreamsRun:
    """The workers' streams as ``tools.report.build_report`` reads a load run's."""
    run = StreamsRun()
    for s in sorted(streams, key=lambda s: s.index):
        message_id = s.response_id.removeprefix("resp_") or None
        view = ReplyView(message_id or "")
        view.answer.set(s.answer)
        view.status = s.status
        view.final = {"status": s.status, "stats": {"tokens": s.tokens}, "error": s.error}
        user = UserStream(s.index, s.text, None, message_id=message_id, view=view, sent_at=s.sent_at,
                          first_text_at=s.first_text_at, arrivals=s.arrivals)
        run.streams.append(user)
        run.text_times += [(at, 1) for _, at in s.arrivals]
    return run
