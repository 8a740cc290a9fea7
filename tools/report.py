"""The load test's measurements and report: percentiles, each process's CPU, I/O and memory from its own
accounting, the report's figures, its table and its plot."""
from __future__ import annotations

import dataclasses
import time

import psutil

from clients.view import ReplyView
from services.mock_llm.script import reasoning_text
from tools.verify import StreamOutcome, expected_answer, verify_stream

def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 2), "n": len(ordered)}


class ProcessMeter:
    """CPU and peak RSS of each service process, read from the processes' own accounting."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid}
        self.cpu_start = {name: self._cpu(p) for name, p in self.procs.items()}
        self.io_start = {name: self._io(p) for name, p in self.procs.items()}
        self.rss_peak = {name: 0 for name in self.procs}
        self.began = time.monotonic()
        self.timeline: dict[str, list[list[float]]] = {name: [] for name in self.procs}  # [s, MB] every 10 s

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        return t.user + t.system

    @staticmethod
    def _io(proc: psutil.Process) -> int:
        try:
            return proc.io_counters().write_chars
        except (psutil.AccessDenied, AttributeError):
            return 0

    def sample(self) -> None:
        second = round(time.monotonic() - self.began)
        for name, proc in self.procs.items():
            try:
                rss = proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            self.rss_peak[name] = max(self.rss_peak[name], rss)
            points = self.timeline[name]
            if not points or second - points[-1][0] >= 10:
                points.append([second, round(rss / 2**20, 1)])

    def finish(self) -> tuple[dict, dict, dict]:
        cpu, io = {}, {}
        self.sample()
        for name, proc in self.procs.items():
            try:
                cpu[name] = self._cpu(proc) - self.cpu_start[name]
                io[name] = self._io(proc) - self.io_start[name]
                with open(f"/proc/{proc.pid}/status") as status:  # VmHWM: the kernel's own peak RSS
                    for line in status:
                        if line.startswith("VmHWM:"):
                            self.rss_peak[name] = max(self.rss_peak[name], int(line.split()[1]) * 1024)
            except (psutil.NoSuchProcess, FileNotFoundError):
                pass
        return cpu, io, {name: round(rss / 2**20, 1) for name, rss in self.rss_peak.items()}


def upstream_to_client_ms(sent: list, arrivals: list) -> list[float]:
    """Each answer token's wait from the mock's write of it (``sent``: the answer's length after it, and when) to the
    client's first view that holds it (``arrivals``: the answer's length after an update, and when), in ms: the
    whole way, the generator's read included, which ``delivery_latency_ms`` (from the generator's receipt) is not.
    A token the client never saw (a cancelled reply's rest) has none."""
    out, j = [], 0
    for length, at in sent:
        while j < len(arrivals) and arrivals[j][0] < length:
            j += 1
        if j == len(arrivals):
            break
        out.append((arrivals[j][1] - at) * 1000)
    return out


def build_report(spec, load, elapsed, cpu, io, rss, meter, before, after, journal, db_rows,
                 server: dict | None = None, sqlite: dict | None = None) -> dict:
    outcomes = []
    mismatches = []
    cancel_ms = []
    upstream_ms = []
    for s in load.streams:
        view = s.view or ReplyView("")
        status, content, reasoning = db_rows.get(s.message_id, (None, None, None))
        outcome = StreamOutcome(status=view.status, text=view.text, cancel_requested=s.cancelled_at is not None,
                                kept_text=view.kept_text, db_status=status, db_content=content,
                                reasoning=view.reasoning, db_reasoning=reasoning)
        prompt = [{"role": "user", "content": s.text}]
        expected = expected_answer(s.text, spec.model, spec.tokens)
        problems = verify_stream(outcome, expected, reasoning_text(prompt, spec.model, spec.reasoning_tokens))
        if problems:
            mismatches.append({"stream": s.index, "message_id": s.message_id, "problems": problems})
        outcomes.append(outcome)
        entry = journal.get(s.text)
        if entry:
            upstream_ms += upstream_to_client_ms(list(zip(entry["sent_lengths"], entry["sent_at"])), s.arrivals)
        if s.cancelled_at is not None and view.status == "cancelled" and entry and entry["client_closed"]:
            cancel_ms.append((entry["closed_at"] - s.cancelled_at) * 1000)
    tokens = sum(((s.view.final or {}).get("stats") or {}).get("tokens") or 0 for s in load.streams if s.view)
    # reply text is both texts: the answer and the thinking (each written once as checkpoints, once in the row)
    content_bytes = sum(len((o.db_content or "").encode()) + len((o.db_reasoning or "").encode()) for o in outcomes)
    backend = ("coordinator", "persister") + tuple(n for n in cpu if n.startswith("generator"))
    backend_cpu = sum(cpu.get(n, 0.0) for n in backend)
    counters_before, counters_after = before.counters, after.counters

    def persister_delta(key: str) -> int | None:
        then, now = before.persister, after.persister
        if now is None or (then is not None and then.pid != now.pid):
            return None  # no totals yet, or the persister restarted during the run
        return getattr(now, key) - (getattr(then, key) if then is not None else 0)

    text_bytes = persister_delta("reply_text_bytes")
    db_bytes = server["wal_bytes"] + server["data_page_bytes"] if server else io.get("persister")
    if sqlite is not None and db_bytes is not None:  # and the copy of the log's rest into the file (dbmeter.py)
        db_bytes += sqlite["wal_copy_bytes"]
    return {
        "streams": spec.streams,
        "count": len(load.streams),
        "completed": sum(o.status == "completed" for o in outcomes),
        "cancelled": sum(o.status == "cancelled" for o in outcomes),
        "errors": sum(o.status not in ("completed", "cancelled") for o in outcomes),
        "mismatches": len(mismatches),
        "mismatch_details": mismatches[:20],
        "late_deltas_dropped": counters_after["late_deltas_dropped"] - counters_before["late_deltas_dropped"],
        "ttft_ms": percentiles([(s.first_text_at - s.sent_at) * 1000 for s in load.streams if s.first_text_at]),
        "delivery_latency_ms": percentiles(load.delivery_ms),
        "upstream_to_client_ms": percentiles(upstream_ms),
        "cancel_latency_ms": percentiles(cancel_ms),
        "tokens": tokens,
        "elapsed_s": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed else None,
        "cpu_s": {name: round(v, 3) for name, v in cpu.items()},
        "cpu_us_per_token": {name: round(v * 1e6 / tokens, 1) if tokens else None for name, v in cpu.items()},
        "backend_cpu_us_per_token": round(backend_cpu * 1e6 / tokens, 1) if tokens else None,
        "rss_mb": rss,
        "rss_timeline_mb": meter.timeline,
        "content_bytes": content_bytes,
        "reasoning_bytes": sum(len((o.db_reasoning or "").encode()) for o in outcomes),  # of content_bytes
        # the database's disk bytes: on SQLite the persister's own writes and the copy of what the log still held at
        # the end into the file, on PostgreSQL its server's (WAL and data pages; the persister's process writes
        # next to nothing there)
        "db_bytes_source": "postgresql server (WAL + data pages)" if server else
        "persister process (SQLite) + the log's last copy" if sqlite else "persister process (SQLite)",
        "db_sqlite": sqlite,
        "db_bytes_written": db_bytes,
        "db_bytes_per_content_byte": round(db_bytes / content_bytes, 2) if content_bytes and db_bytes is not None
        else None,
        # what the append-only rule bounds: each reply byte written once as a checkpoint, once in its final row
        "db_text_bytes_written": text_bytes,
        "db_text_bytes_per_content_byte": round(text_bytes / content_bytes, 2)
        if content_bytes and text_bytes is not None else None,
        "db_commits": persister_delta("commits"),
        # PostgreSQL: what its server wrote (WAL and data pages) and its processes' CPU; None on SQLite, where
        # the persister's own writes above are the database's
        "db_server": _server_figures(server, content_bytes, tokens),
        "throughput_timeline": timeline(load.text_times),
        "spec": dataclasses.asdict(spec),
        "_delivery_samples": load.delivery_ms,  # for --plot; dropped from printed reports
    }


def _server_figures(server: dict | None, content_bytes: int, tokens: int) -> dict | None:
    if server is None:
        return None
    out = dict(server)
    out["wal_bytes_per_content_byte"] = round(server["wal_bytes"] / content_bytes, 2) if content_bytes else None
    out["cpu_us_per_token"] = round(server["cpu_s"] * 1e6 / tokens, 1) if tokens and server["cpu_s"] is not None else None
    return out


def timeline(text_times: list[tuple[float, int]]) -> list[list[float]]:
    """Characters received per second of the run: [[second, chars], ...]."""
    if not text_times:
        return []
    start = text_times[0][0]
    buckets: dict[int, int] = {}
    for at, chars in text_times:
        buckets[int(at - start)] = buckets.get(int(at - start), 0) + chars
    return [[second, buckets.get(second, 0)] for second in range(max(buckets) + 1)]


def print_table(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"chatter loadtest — {report['count']} streams, {report['streams']} at once")
    table.add_column("measure")
    table.add_column("value", justify="right")

    def pcts(d: dict) -> str:
        return "–" if d["p50"] is None else f"p50 {d['p50']}  p95 {d['p95']}  p99 {d['p99']}"

    rows = [
        ("completed / cancelled / errors", f"{report['completed']} / {report['cancelled']} / {report['errors']}"),
        ("mismatches", str(report["mismatches"])),
        ("late deltas dropped", str(report["late_deltas_dropped"])),
        ("TTFT ms", pcts(report["ttft_ms"])),
        ("delivery latency ms", pcts(report["delivery_latency_ms"])),
        ("upstream → client ms", pcts(report["upstream_to_client_ms"])),
        ("cancel latency ms", pcts(report["cancel_latency_ms"])),
        ("tokens/s", str(report["tokens_per_s"])),
        ("backend CPU µs/token", str(report["backend_cpu_us_per_token"])),
    ]
    rows += [(f"  {name} CPU µs/token", str(v)) for name, v in report["cpu_us_per_token"].items()]
    rows += [(f"  {name} peak RSS MB", str(v)) for name, v in report["rss_mb"].items()]
    rows.append(("DB reply text written per content byte", str(report["db_text_bytes_per_content_byte"])))
    where = "PG server" if report.get("db_server") else "persister"
    rows.append((f"DB disk bytes per content byte ({where})", str(report["db_bytes_per_content_byte"])))
    server = report.get("db_server")
    if server:
        rows.append(("  of which WAL, per content byte", str(server["wal_bytes_per_content_byte"])))
        rows.append(("  PG server CPU µs/token", str(server["cpu_us_per_token"])))
        if server.get("gap"):
            rows.append(("  GAP in the database meter", server["gap"]))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def plot(report: dict, path: str) -> None:
    """A latency histogram and throughput over time, as a PNG (needs matplotlib: the ``plot`` extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'chatter[plot]'") from None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    samples = report.get("_delivery_samples") or []
    left.hist(samples, bins=50, color="#4477aa")
    left.set_title("delivery latency (generator → client)")
    left.set_xlabel("ms")
    left.set_ylabel("events")
    seconds = [row[0] for row in report["throughput_timeline"]]
    chars = [row[1] for row in report["throughput_timeline"]]
    right.plot(seconds, chars, color="#228833")
    right.set_title("throughput")
    right.set_xlabel("s since first text")
    right.set_ylabel("characters/s to clients")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
