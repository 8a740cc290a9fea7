"""``make bench``: the standard scenarios, written to bench/results.json and bench/RESULTS.md.

a. the coordinator alone, fed by a synthetic generator: deltas/s
b. the generator alone against the mock: CPU µs per upstream chunk, our raw-SSE path against the
   openai client's typed chunk iteration, in the same run
c. the whole stack at 50, 200, 500 and 1000 concurrent streams, 20 tok/s, 200 tokens each
d. the peer, in the same run: the same streams straight from the mock with the openai client's typed
   iteration, one asyncio task per stream, as a single-process chat app does it
e. PostgreSQL against SQLite, 500 streams each in the same run: persister CPU and the server's, delivery
   p99, and disk bytes per content byte (for PostgreSQL the server's WAL and data pages)
f. the coordinator's database reads hammered while 200 streams run on PostgreSQL: delivery p99 with and
   without, in one stack, at 50 rounds/s and flat out
g. 100,000 fuzzed frames into each socket the coordinator receives on (bench/fuzz.py)
h. chaos: 200 streams, 30 SIGKILLs (10 of each process), each restarted, every reply accounted for; twice,
   without a continue style and with CHATTER_CONTINUE_STYLE=vllm (a generator kill is then continued)
i. the window (chatter gui, offscreen): GUI-thread CPU per token and repaints a second at 200 tok/s (bench/gui.py)
j. a 200-turn session's database bytes per text byte (bench/conversation_bytes.py)
k. search over 50,000 sessions and 1,000,000 messages: p50 / p99 latency through a real stack, and the index's
   size against the text's (bench/search.py)
l. the gateway: 50 and 500 streams straight to the coordinator and through the gateway with openai SDK users, in
   one run: CPU per token of each process, mock-to-client latency, TTFT, resume latency (bench/gateway.py)

Timings are figures to compare within one run on one machine, never assertions.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.loadtest import LoadSpec, run_loadtest  # noqa: E402
from tools.report import percentiles  # noqa: E402
from tools.spawn import REPO, LocalStack  # noqa: E402
from protocol import codec, messages as m
import transport  # noqa: E402
from bench.fuzz import bench_fuzz  # noqa: E402
from bench.gateway import bench_gateway  # noqa: E402
from bench.tables import write_markdown  # noqa: E402

OUT = Path(__file__).resolve().parent


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


# ---------------------------------------------------------------- a. the coordinator alone


def bench_coordinator(generations: int = 200, deltas_each: int = 1000, batch: int = 64) -> dict:
    """A synthetic generator binds nothing: it connects to the real coordinator's jobs and gen-events
    endpoints, takes the jobs, and pushes seq-numbered delta batches as fast as it can."""
    workdir = Path(tempfile.mkdtemp(prefix="chatter-bench-a-"))
    stack = LocalStack(workdir, CHATTER_STALL_MS="600000", CHATTER_GENERATOR_DEAD_MS="600000")
    try:
        stack.start("persister", "coordinator")
        ctx = zmq.Context()
        jobs = transport.open_socket(ctx, transport.JOBS, bind=False, run_dir_path=str(stack.run_dir))
        events = transport.open_socket(ctx, transport.GEN_EVENTS, bind=False, run_dir_path=str(stack.run_dir))
        events.send(m.GeneratorHeartbeat("synthetic", generations, 0, 0, os.getpid()).encode())
        with stack.client() as client:
            sessions = {}
            for i in range(generations):
                sid = client.new_session()
                sent = client.send(sid, f"bench {i}", uuid.uuid4().hex)
                sessions[sent.generation_id] = sid
            gen_ids = []
            while len(gen_ids) < generations:
                gen_ids.append(codec.decode(jobs.recv(), (m.Job,)).generation_id)
            for gen_id in gen_ids:
                events.send(m.GenStarted(gen_id, "synthetic").encode())
            coordinator = psutil.Process(stack.procs["coordinator"].pid)
            cpu0, t0 = cpu_seconds(coordinator), time.perf_counter()
            total = generations * deltas_each
            pending = []
            for seq in range(1, deltas_each + 1):
                for gen_id in gen_ids:
                    pending.append([gen_id, seq, "tok ", 1, time.time()])
                    if len(pending) == batch:
                        events.send(m.GenDeltaBatch(pending).encode())
                        pending = []
            if pending:
                events.send(m.GenDeltaBatch(pending).encode())
            for gen_id in gen_ids:
                events.send(m.GenDone(gen_id, deltas_each, 4 * deltas_each, "stop", deltas_each, "server").encode())
            while client.status().active:  # every generation's done processed: all deltas taken
                time.sleep(0.002)
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(coordinator) - cpu0
            deadline = time.monotonic() + 60
            right = 0
            for gen_id, sid in sessions.items():  # the figure counts only if every reply came out whole
                snap = client.snapshot(sid, gen_id)
                while not snap.final and time.monotonic() < deadline:
                    time.sleep(0.01)
                    snap = client.snapshot(sid, gen_id)
                right += snap.status == "completed" and snap.text == "tok " * deltas_each
        jobs.close(0)
        events.close(0)
        ctx.term()
        return {"deltas": total, "elapsed_s": round(elapsed, 3), "deltas_per_s": round(total / elapsed),
                "generations_completed_whole": f"{right}/{generations}",
                "coordinator_cpu_us_per_delta": round(cpu * 1e6 / total, 2), "batch": batch}
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------- b. the generator alone, and d. the peer


async def consume_typed(base_url: str, streams: int, tokens: int, tps: float, tag: str) -> dict:
    """The peer: the openai client's typed chunk iteration, one asyncio task per stream."""
    import openai

    clients = [openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
               for _ in range(max(1, streams // 32))]
    chunks = 0
    ttft, gaps = [], []

    async def one(i: int) -> None:
        nonlocal chunks
        started = time.perf_counter()
        last = None
        stream = await clients[i % len(clients)].chat.completions.create(
            model="mock-1", stream=True,
            messages=[{"role": "user", "content": f"{tag} {i} [[mock tokens={tokens} tps={tps:g} ttft_ms=50]]"}])
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                now = time.perf_counter()
                if last is None:
                    ttft.append((now - started) * 1000)
                else:
                    gaps.append((now - last) * 1000)
                last = now
                chunks += 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
    for client in clients:
        await client.close()
    return {"streams": streams, "chunks": chunks, "elapsed_s": round(elapsed, 2),
            "client_cpu_us_per_token": round(cpu * 1e6 / chunks, 1), "ttft_ms": percentiles(ttft),
            "inter_token_ms": percentiles(gaps)}


def bench_generator(streams: int = 300, tokens: int = 100, tps: float = 20.0) -> dict:
    """The real generator process, fed jobs by a synthetic coordinator, against the real mock; then
    the typed iteration on the same mock with the same streams."""
    workdir = Path(tempfile.mkdtemp(prefix="chatter-bench-b-"))
    stack = LocalStack(workdir, CHATTER_GENERATOR_CONCURRENCY=str(streams + 8))
    ctx = zmq.Context()
    try:
        stack.start("mock_llm")
        rd = str(stack.run_dir)
        jobs = transport.open_socket(ctx, transport.JOBS, bind=True, run_dir_path=rd, hwm=streams * 2)
        events = transport.open_socket(ctx, transport.GEN_EVENTS, bind=True, run_dir_path=rd)
        control = transport.open_socket(ctx, transport.CONTROL, bind=True, run_dir_path=rd)
        log = open(workdir / "generator.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "services.generator"], env=stack.env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        stack.procs["generator"] = proc  # stopped with the stack
        events.poll(30_000)  # its first heartbeat: it is up
        generator = psutil.Process(proc.pid)
        cpu0, t0 = cpu_seconds(generator), time.perf_counter()
        for i in range(streams):
            messages = [{"role": "user", "content": f"gen {i} [[mock tokens={tokens} tps={tps:g} ttft_ms=50]]"}]
            jobs.send(m.Job(f"g{i}", messages, "mock-1", {}, "h").encode())
        done = chunks = 0
        last_beat = time.monotonic()
        while done < streams:
            if time.monotonic() - last_beat > 1:  # keep the generator from thinking we are gone
                control.send(transport.published("", m.CoordinatorHeartbeat(time.time()).encode()))
                last_beat = time.monotonic()
            if not events.poll(1000):
                continue
            event = codec.decode(events.recv(), m.GEN_EVENTS)
            if isinstance(event, m.GenDeltaBatch):
                chunks += len(event.deltas)
            elif isinstance(event, (m.GenDone, m.GenError)):
                done += 1
        cpu, elapsed = cpu_seconds(generator) - cpu0, time.perf_counter() - t0
        fast = {"streams": streams, "chunks": chunks, "elapsed_s": round(elapsed, 2),
                "generator_cpu_us_per_chunk": round(cpu * 1e6 / chunks, 1)}
        typed = asyncio.run(consume_typed(f"http://127.0.0.1:{stack.port}/v1", streams, tokens, tps, "typed"))
        for sock in (jobs, events, control):
            sock.close(0)
        return {"fast_path": fast, "typed_iteration": {"client_cpu_us_per_chunk": typed["client_cpu_us_per_token"],
                                                       "chunks": typed["chunks"]},
                "typed_over_fast": round(typed["client_cpu_us_per_token"] / fast["generator_cpu_us_per_chunk"], 2)}
    finally:
        stack.stop()
        ctx.term()
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------- c. the whole stack, and d. the peer


def bench_stack(levels: list[int], tokens: int, tps: float, generators: int) -> list[dict]:
    out = []
    for streams in levels:
        report = run_loadtest(LoadSpec(streams=streams, count=streams, tokens=tokens, tps=tps, cancel_frac=0.1),
                              spawn=True, generators=generators)
        report.pop("_delivery_samples", None)
        report.pop("throughput_timeline", None)
        report.pop("mismatch_details", None)
        report.pop("rss_timeline_mb", None)
        out.append(report)
    return out


def bench_peer(levels: list[int], tokens: int, tps: float) -> list[dict]:
    workdir = Path(tempfile.mkdtemp(prefix="chatter-bench-d-"))
    stack = LocalStack(workdir)
    try:
        stack.start("mock_llm")
        return [asyncio.run(consume_typed(f"http://127.0.0.1:{stack.port}/v1", n, tokens, tps, f"peer{n}"))
                for n in levels]
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def bench_databases(streams: int, tokens: int, tps: float) -> dict:
    from tools.pgserver import PostgresServer, PostgresUnavailable
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        return {"skipped": str(exc)}
    try:
        out = {}
        for name, url in (("sqlite", None), ("postgresql", server.new_database("bench"))):
            report = run_loadtest(LoadSpec(streams=streams, count=streams, tokens=tokens, tps=tps), spawn=True,
                                  database_url=url)
            out[name] = {k: report[k] for k in ("streams", "completed", "errors", "mismatches", "delivery_latency_ms",
                                                "cpu_us_per_token", "backend_cpu_us_per_token", "db_bytes_source",
                                                "db_bytes_per_content_byte", "db_text_bytes_per_content_byte",
                                                "db_server", "tokens_per_s")}
        return out
    finally:
        server.stop()


def bench_hammer(streams: int, tokens: int, tps: float) -> dict:
    from tools.hammer import quiet_and_hammered
    from tools.pgserver import PostgresServer, PostgresUnavailable
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        return {"skipped": str(exc)}
    workdir = Path(tempfile.mkdtemp(prefix="chatter-bench-f-"))
    stack = LocalStack(workdir, CHATTER_DATABASE_URL=server.new_database("hammer"), CHATTER_MAX_CACHED_SESSIONS="20",
                       CHATTER_GENERATOR_CONCURRENCY=str(streams + 8))
    try:
        stack.start()
        return quiet_and_hammered(stack, streams=streams, tokens=tokens, tps=tps, stored=100, rates=(50, None))
    finally:
        stack.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def bench_gui_section() -> dict:
    """bench/gui.py in a process of its own: Qt wants the main thread, and may crash at interpreter exit."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gui.py")], capture_output=True, timeout=600,
                          env=os.environ | {"QT_QPA_PLATFORM": "offscreen"})
    if done.returncode != 0:
        return {"skipped": done.stderr.decode(errors="replace")[-300:]}
    return json.loads(done.stdout)


def bench_chaos(quick: bool, continue_style: str = "none") -> dict:
    """One chaos run; its stack's processes take CHATTER_CONTINUE_STYLE from this process's environment."""
    from tools.chaos import ChaosSpec, run_chaos
    saved = os.environ.get("CHATTER_CONTINUE_STYLE")
    os.environ["CHATTER_CONTINUE_STYLE"] = continue_style
    try:
        report = run_chaos(ChaosSpec(streams=50 if quick else 200, trials=6 if quick else 30))
    finally:
        if saved is None:
            os.environ.pop("CHATTER_CONTINUE_STYLE")
        else:
            os.environ["CHATTER_CONTINUE_STYLE"] = saved
    report.pop("details")
    report["continue_style"] = continue_style
    return report


def chaos_runs(quick: bool) -> dict:
    return {"chaos": bench_chaos(quick, "none"), "chaos_continued": bench_chaos(quick, "vllm")}


def bench_search(quick: bool) -> dict:
    """k. bench/search.py in a process of its own."""
    sizes = ["--sessions", "2000", "--messages", "40000", "--queries", "20"] if quick else ["--queries", "50"]
    done = subprocess.run([sys.executable, str(REPO / "bench" / "search.py"), *sizes], capture_output=True,
                          timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"bench/search.py failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(done.stdout) | {"date": machine()["date"]}


def bench_conversation() -> dict:
    """j. bench/conversation_bytes.py in a process of its own: a 200-turn session's database bytes."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "conversation_bytes.py")], capture_output=True,
                          timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"bench/conversation_bytes.py failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(done.stdout) | {"date": machine()["date"]}


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--generators", type=int, default=1)
    parser.add_argument("--only", help="run only these sections (e.g. e,f), keeping the others' last figures")
    args = parser.parse_args()
    if args.only:
        return run_only(set(args.only.split(",")), args.quick)
    levels = [50, 100] if args.quick else [50, 200, 500, 1000]
    tokens = 60 if args.quick else 200
    results = {"machine": machine()}
    print("a. coordinator alone", file=sys.stderr)
    results["coordinator_alone"] = bench_coordinator(generations=50 if args.quick else 200,
                                                     deltas_each=200 if args.quick else 1000)
    print("b. generator alone", file=sys.stderr)
    results["generator_alone"] = bench_generator(streams=50 if args.quick else 300, tokens=40 if args.quick else 100)
    print("c. whole stack", levels, file=sys.stderr)
    results["whole_stack"] = bench_stack(levels, tokens, 20.0, args.generators)
    print("d. peer", levels, file=sys.stderr)
    results["peer"] = bench_peer(levels, tokens, 20.0)
    print("e. PostgreSQL against SQLite", file=sys.stderr)
    results["databases"] = bench_databases(100 if args.quick else 500, tokens, 20.0)
    print("f. reads hammered", file=sys.stderr)
    results["hammer"] = bench_hammer(50 if args.quick else 200, 60 if args.quick else 100, 20.0)
    print("g. fuzz", file=sys.stderr)
    results["fuzz"] = bench_fuzz(10_000 if args.quick else 100_000)
    print("h. chaos", file=sys.stderr)
    results.update(chaos_runs(args.quick))
    print("i. the window", file=sys.stderr)
    results["gui"] = bench_gui_section()
    print("j. a long conversation's storage", file=sys.stderr)
    results["conversation"] = bench_conversation()
    print("k. search", file=sys.stderr)
    results["search"] = bench_search(args.quick)
    print("l. the gateway", file=sys.stderr)
    results["gateway"] = bench_gateway(args.quick)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "RESULTS.md").write_text(write_markdown(results))
    print((OUT / "RESULTS.md").read_text())


def run_only(sections: set[str], quick: bool) -> None:
    """Some sections again, into the last results (the machine line says when the rest was measured)."""
    results = json.loads((OUT / "results.json").read_text())
    unknown = sections - {"e", "f", "g", "h", "i", "j", "k", "l"}
    if unknown:
        raise SystemExit(f"--only runs e, f, g, h, i, j, k and l; not {', '.join(sorted(unknown))}")
    if "e" in sections:
        results["databases"] = bench_databases(100 if quick else 500, 60 if quick else 200, 20.0)
        results["databases"]["date"] = machine()["date"]
    if "f" in sections:
        results["hammer"] = bench_hammer(50 if quick else 200, 60 if quick else 100, 20.0)
        results["hammer"]["date"] = machine()["date"]
    if "g" in sections:
        results["fuzz"] = bench_fuzz(10_000 if quick else 100_000)
        results["fuzz"]["date"] = machine()["date"]
    if "h" in sections:
        results.update(chaos_runs(quick))
        results["chaos"]["date"] = results["chaos_continued"]["date"] = machine()["date"]
    if "i" in sections:
        results["gui"] = bench_gui_section()
        results["gui"]["date"] = machine()["date"]
    if "j" in sections:
        results["conversation"] = bench_conversation()
    if "k" in sections:
        results["search"] = bench_search(quick)
    if "l" in sections:
        results["gateway"] = bench_gateway(quick)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "RESULTS.md").write_text(write_markdown(results))
    print((OUT / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
