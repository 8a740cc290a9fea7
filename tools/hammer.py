"""Clients that keep the coordinator's database reads busy: the sessions list, and the history of sessions
that are not in its memory, named by a prefix of their id (resolved as ``chatter history PREFIX`` does:
the sessions list, then the session, read from the database). Used beside a load test to show that those
reads never hold up the streams (tests/integration/test_postgres.py, ``make bench``)."""
from __future__ import annotations

import itertools
import threading
import time

from clients.api import ChatterError, Client
from clients.output import resolve_session


class ReadHammer:
    def __init__(self, run_dir: str, sessions: dict[str, str], threads: int = 4, prefix_len: int = 10,
                 rate: float | None = None) -> None:
        """``sessions``: session id -> the text of its first reply, to check each history read against.
        ``rate``: rounds a second in all (a round is a sessions list, a prefix and a history), or None: as
        fast as the answers come."""
        self.run_dir, self.sessions, self.prefix_len = run_dir, sessions, prefix_len
        self.round_s = None if rate is None else threads / rate  # each thread's time per round
        self.stopping = threading.Event()
        self.counts = {"rounds": 0, "refused": 0, "wrong": 0}  # a round: 3 requests (list, prefix, history)
        self.refusals: list[str] = []  # the first few, in words
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        self.began = self.ended = 0.0

    def __enter__(self) -> ReadHammer:
        self.began = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)
        self.ended = time.monotonic()

    def figures(self) -> dict:
        seconds = max(self.ended - self.began, 1e-9)
        requests = 3 * (self.counts["rounds"] + self.counts["wrong"])
        return self.counts | {"requests_per_s": round(requests / seconds, 1), "seconds": round(seconds, 2),
                              "refusals": self.refusals}

    def _count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def _run(self, index: int) -> None:
        ids = list(self.sessions)
        order = itertools.cycle(ids[index::len(self.threads)] or ids)
        with Client(rpc_timeout_ms=30_000, run_dir=self.run_dir) as client:
            next_at = time.monotonic()
            while not self.stopping.is_set():
                if self.round_s is not None:
                    next_at += self.round_s
                    if self.stopping.wait(max(0.0, next_at - time.monotonic())):
                        break
                session_id = next(order)
                try:
                    listed = client.sessions(limit=100)
                    full = resolve_session(client, session_id[:self.prefix_len])
                    history = client.history(full)
                except ChatterError as exc:
                    self._count("refused")
                    if len(self.refusals) < 5:
                        self.refusals.append(str(exc))
                    continue
                right = (bool(listed) and full == session_id
                         and history.messages[1].content == self.sessions[session_id])
                self._count("rounds" if right else "wrong")


def quiet_and_hammered(stack, streams: int, tokens: int, tps: float, stored: int = 100, threads: int = 4,
                       rates: tuple = (None,)) -> dict:
    """In one running ``stack`` (whose coordinator keeps few sessions in memory): ``stored`` short replies
    first, then the same load test quiet, and once more with the hammer on those sessions at each of
    ``rates`` (rounds a second; None: flat out). Returns the reports' figures, the hammer's, and the ratio
    of delivery p99 hammered to quiet."""
    from tools.loadtest import LoadSpec, run_loadtest

    seed = run_loadtest(LoadSpec(streams=min(stored, 50), count=stored, tokens=5, tps=1000.0), spawn=False,
                        stack=stack)
    with Client(rpc_timeout_ms=30_000, run_dir=str(stack.run_dir)) as client:
        sessions = {row.session_id: None for row in client.sessions(limit=stored)}
        for session_id in sessions:
            sessions[session_id] = client.history(session_id).messages[1].content
        reads_before = client.status().counters["database_reads"]
    spec = LoadSpec(streams=streams, count=streams, tokens=tokens, tps=tps)
    keep = ("count", "completed", "errors", "mismatches", "delivery_latency_ms", "ttft_ms", "tokens_per_s",
            "cpu_us_per_token")
    quiet = run_loadtest(spec, spawn=False, stack=stack)
    runs = []
    for rate in rates:
        with ReadHammer(str(stack.run_dir), sessions, threads=threads, rate=rate) as hammer:
            hammered = run_loadtest(spec, spawn=False, stack=stack)
        with Client(rpc_timeout_ms=30_000, run_dir=str(stack.run_dir)) as client:
            reads = client.status().counters["database_reads"] - reads_before
            reads_before += reads
        p99 = (quiet["delivery_latency_ms"]["p99"], hammered["delivery_latency_ms"]["p99"])
        runs.append({"rate": rate, "report": {k: hammered[k] for k in keep}, "hammer": hammer.figures(),
                     "database_reads": reads,
                     "delivery_p99_ratio": round(p99[1] / p99[0], 2) if p99[0] else None})
    return {"streams": streams, "stored_sessions": len(sessions), "seed_errors": seed["errors"],
            "quiet": {k: quiet[k] for k in keep}, "hammered": runs}
