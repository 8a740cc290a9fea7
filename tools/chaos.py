"""``chatter chaos``: SIGKILL of any process under load, restarted by a supervisor of our own, and every reply
accounted for against the mock's deterministic text, from the clients' view and the database's.

The load is ``tools.loadtest.LoadRun`` (one DEALER, one SUB, every stream verified), which resends requests
that a dead coordinator never answered, with their request ids: one request never makes two generations.
A ``Supervisor`` thread kills one process at a random moment per trial (round robin over ``--kill``), starts
it again after ``--restart-after``, and goes on. Each trial's recovery is the time from its kill until every
reply that was open then has moved on: a delta read upstream after the kill, or its end.
"""
from __future__ import annotations

import collections
import os
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from clients.view import ReplyView
from protocol.lifecycle import FINAL
from tools.report import percentiles
from tools.verify import first_difference

KINDS = ("generator", "persister", "coordinator")
SETTLE_S = 10.0  # after the last trial's restart: replies still open this long after it are non-terminal


@dataclass
class ChaosSpec:
    streams: int = 50
    trials: int = 6
    kill: tuple[str, ...] = KINDS
    seed: int = 1
    restart_after_s: float = 0.5
    tokens: int = 200  # 10 s a reply at 20 tok/s: mid-stream when a kill lands
    tps: float = 20.0
    gap_s: tuple[float, float] = (1.5, 3.5)  # between a restart and the next kill


@dataclass
class Trial:
    kind: str
    killed_at: float  # wall clock
    restarted_at: float | None = None
    waiting: set | None = None  # indexes of the streams open at the kill that have not moved on yet
    recovered_at: float | None = None
    affected: int = 0


class Supervisor(threading.Thread):
    """Kills and restarts the stack's processes, as systemd or a per-role honcho would restart them."""

    def __init__(self, stack, spec: ChaosSpec) -> None:
        super().__init__(daemon=True, name="chaos-supervisor")
        self.stack, self.spec = stack, spec
        self.rng = random.Random(spec.seed)
        self.trials: list[Trial] = []
        self.done = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            time.sleep(self.rng.uniform(*self.spec.gap_s))  # the streams get going first
            for i in range(self.spec.trials):
                kind = self.spec.kill[i % len(self.spec.kill)]
                trial = Trial(kind, time.time())
                self.stack.kill(kind)
                self.trials.append(trial)
                time.sleep(self.spec.restart_after_s)
                self.stack.start(kind)
                trial.restarted_at = time.time()
                # one fault at a time: the next kill waits until this one's replies have moved on (or 30 s)
                deadline = time.monotonic() + 30
                while trial.recovered_at is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(self.rng.uniform(*self.spec.gap_s))
        except BaseException as exc:  # the run ends, and says why
            self.failure = exc
        finally:
            self.done.set()


def run_chaos(spec: ChaosSpec, progress=None, stack_env: dict | None = None) -> dict:
    """Start a private stack, run the trials under load, and account for every reply."""
    from clients.api import Client
    from tools.loadtest import LoadRun, LoadSpec, read_database
    from tools.report import ProcessMeter
    from tools.spawn import LocalStack

    workdir = Path(tempfile.mkdtemp(prefix="chatter-chaos-"))
    env = {"CHATTER_GENERATOR_CONCURRENCY": str(spec.streams + 8), "CHATTER_PERSIST_RESEND_MS": "1000",
           # the mock says it is vLLM, as make run's does (Procfile): under CHATTER_CONTINUE_STYLE=auto a reply
           # whose generator dies goes on from its text on another
           "CHATTER_MOCK_SERVER": os.environ.get("CHATTER_MOCK_SERVER") or "vllm"}
    stack = LocalStack(workdir, **(env | (stack_env or {})))
    try:
        stack.start()
        supervisor = Supervisor(stack, spec)
        load_spec = LoadSpec(streams=spec.streams, tokens=spec.tokens, tps=spec.tps, seed=spec.seed,
                             duration_s=float("inf"))
        with Client(run_dir=str(stack.run_dir), rpc_timeout_ms=10_000) as client:
            run = LoadRun(client, load_spec, f"chaos-{int(time.time())}-{spec.seed}", progress=progress)
            watcher = RecoveryWatch(run, supervisor)
            run.keep_going = lambda: not supervisor.done.is_set()
            run.on_moved = watcher.moved
            run.on_tick = watcher.tick
            run.give_up_after_s = SETTLE_S + 30  # the last replies take a reply's length after the last restart
            run.resend_after_s = 2.0
            supervisor.start()
            run.run(ProcessMeter({}))
            supervisor.join()
            if supervisor.failure is not None:
                raise supervisor.failure
            time.sleep(1.0)  # the last finals' rows
            rows = read_database(stack.env["CHATTER_DATABASE_URL"], [s.message_id for s in run.streams if s.message_id])
            requests = request_counts(stack.env["CHATTER_DATABASE_URL"], run.run_id)
        return account(spec, run, supervisor.trials, rows, requests)
    finally:
        stack.stop()
        if not os.environ.get("CHATTER_CHAOS_KEEP"):  # the processes' logs, for a run to look into
            shutil.rmtree(workdir, ignore_errors=True)


class RecoveryWatch:
    """Marks each trial recovered once every stream open at its kill has moved on after it."""

    def __init__(self, run, supervisor: Supervisor) -> None:
        self.run, self.supervisor = run, supervisor
        self.seen = 0

    def tick(self, now: float) -> None:
        while self.seen < len(self.supervisor.trials):  # a new kill: who is open now is affected
            trial = self.supervisor.trials[self.seen]
            self.seen += 1
            trial.waiting = {s.index for s in self.run.streams if s.ended_at is None and s.generation_id}
            trial.affected = len(trial.waiting)
            if not trial.waiting:
                trial.recovered_at = trial.killed_at

    def moved(self, stream, upstream_at: float | None, now: float) -> None:
        """``stream`` got a delta read upstream at ``upstream_at`` (None: its end, or a snapshot)."""
        for trial in self.supervisor.trials[:self.seen]:
            if trial.recovered_at is None and stream.index in trial.waiting:
                if upstream_at is None or upstream_at > trial.killed_at:
                    trial.waiting.discard(stream.index)
                    if not trial.waiting:
                        trial.recovered_at = now


def request_counts(url: str, run_id: str) -> dict[str, int]:
    """client request id -> how many replies the database holds for it (a retried send must make one)."""
    from services import store
    db = store.open_database(url)
    try:
        query = (store.Message.select(store.Message.client_request_id, store.peewee.fn.COUNT(store.Message.id))
                 .where(store.Message.client_request_id.startswith(f"load-{run_id}-"))
                 .group_by(store.Message.client_request_id).tuples())
        return dict(query)
    finally:
        db.close()


@dataclass
class Tally:
    streams: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    interrupted: int = 0
    non_terminal: int = 0
    mismatches: int = 0
    lost_acked_chars: int = 0
    duplicates: int = 0
    continued: int = 0  # replies that went on after a fault by themselves (their stats' continued_after)
    details: list = field(default_factory=list)

    def plain(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "details"}


def account(spec: ChaosSpec, run, trials: list[Trial], rows: dict, requests: dict[str, int]) -> dict:
    from services.mock_llm.script import reply_text
    total, by_kind = Tally(), {kind: Tally() for kind in spec.kill}
    for s in run.streams:
        view = s.view or ReplyView("")
        status = view.status
        db_status, db_content = (rows.get(s.message_id) or (None, None, None))[:2]
        expected = reply_text([{"role": "user", "content": s.text}], "mock-1", spec.tokens)
        kinds = {t.kind for t in trials if t.killed_at >= s.sent_at and (s.ended_at is None or t.killed_at <= s.ended_at)}
        tallies = [total] + [by_kind[k] for k in kinds]
        problems = []
        terminal = (status in FINAL and not (view.final or {}).get(
            "client_side") and db_status not in (None, "streaming", "queued"))
        for tally in tallies:
            tally.streams += 1
            if not terminal:
                tally.non_terminal += 1
            elif status == "completed":
                tally.completed += 1
            elif status == "cancelled":
                tally.cancelled += 1
            elif status == "interrupted":
                tally.interrupted += 1
            else:
                tally.errors += 1
            if terminal and ((view.final or {}).get("stats") or {}).get("continued_after"):
                tally.continued += 1
        if status == "completed" and (view.text != expected or db_content != expected):
            problems.append(("mismatches", 1, f"completed text differs from the mock's at "
                             f"{first_difference(db_content or '', expected)}"))
        if view.final is not None and not view.final.get("unsaved") and not view.final.get("client_side"):
            common = first_difference(view.text, db_content or "")
            if common < len(view.text):  # the client saw it final, durable: the database must hold all of it
                problems.append(("lost_acked_chars", len(view.text) - common, "text seen final is not stored"))
        if db_content and not expected.startswith(db_content):
            problems.append(("duplicates", 1, "stored text is not a prefix of the mock's (repeated text?)"))
        if requests.get(f"load-{run.run_id}-{s.index}", 0) > 1:
            problems.append(("duplicates", requests[f"load-{run.run_id}-{s.index}"] - 1,
                             "two generations for one request id"))
        for name, amount, words in problems:
            for tally in tallies:
                setattr(tally, name, getattr(tally, name) + amount)
            total.details.append({"stream": s.index, "status": status, "db_status": db_status, "problem": words,
                                  "error": (view.final or {}).get("error")})
        if status == "error":
            total.details.append({"stream": s.index, "status": status, "kinds": sorted(kinds),
                                  "error": (view.final or {}).get("error")})
    # errors must come from generator kills alone (replies with tokens whose upstream died with it)
    errors_elsewhere = sum(1 for d in total.details if d.get("kinds") is not None and "generator" not in d["kinds"])
    reasons = collections.Counter(re.sub(r"[0-9a-f]{8,}|vm-\S+|\d+(\.\d+)?", "N", d.get("error") or "")
                                  for d in total.details if d.get("kinds") is not None)
    recovery = [(t.recovered_at - t.killed_at) * 1000 for t in trials if t.recovered_at is not None]
    unrecovered = sum(1 for t in trials if t.recovered_at is None)
    return {
        "trials": len(trials), **total.plain(), "errors_without_a_generator_kill": errors_elsewhere,
        "error_reasons": dict(reasons.most_common()),
        "recovery_ms": {**{k: v for k, v in percentiles(recovery).items() if k in ("p50", "p99", "max")},
                        "unrecovered": unrecovered},
        "by_kind": {kind: {**tally.plain(), "trials": sum(1 for t in trials if t.kind == kind),
                           "recovery_ms_max": round(max(((t.recovered_at - t.killed_at) * 1000 for t in trials
                                                        if t.kind == kind and t.recovered_at), default=0), 1)}
                    for kind, tally in by_kind.items()},
        "trial_log": [{"kind": t.kind, "affected": t.affected,
                       "recovery_ms": round((t.recovered_at - t.killed_at) * 1000, 1) if t.recovered_at else None}
                      for t in trials],
        "details": total.details[:50],
        "spec": {"streams": spec.streams, "trials": spec.trials, "kill": list(spec.kill), "seed": spec.seed,
                 "restart_after_s": spec.restart_after_s, "tokens": spec.tokens, "tps": spec.tps},
    }


def print_table(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"chatter chaos — {report['trials']} kills, {report['streams']} replies")
    table.add_column("measure")
    for kind in report["by_kind"]:
        table.add_column(f"{kind} kills", justify="right")
    table.add_column("all", justify="right")
    names = ("trials", "streams", "completed", "cancelled", "errors", "interrupted", "non_terminal", "mismatches",
             "lost_acked_chars", "duplicates", "continued")
    for name in names:
        table.add_row(name.replace("_", " "), *(str(k[name]) for k in report["by_kind"].values()), str(report[name]))
    recovery = report["recovery_ms"]
    table.add_row("recovery ms (max)", *(str(k["recovery_ms_max"]) for k in report["by_kind"].values()),
                  f"p50 {recovery['p50']}  p99 {recovery['p99']}  max {recovery['max']}")
    console.print(table)
