"""The commands of the tools on the ``chatter`` command line: ``chatter loadtest`` and ``chatter chaos``. They
register through pyproject.toml's ``chatter.commands`` entry points (``clients/cli.py`` loads them), so the client
layer never imports the tools above it."""
from __future__ import annotations

import argparse
import json
import os
from contextlib import contextmanager

from clients.api import ChatterError
from clients.arguments import float_in, int_in
from clients.output import EXIT_ERROR, EXIT_OK


def add_loadtest(sub) -> None:
    p = sub.add_parser("loadtest", help="simulated users against the stack, every stream verified, with a report")
    p.add_argument("--streams", type=int_in(1, 100_000), default=20, help="concurrent users (default 20)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--count", type=int_in(1, 10_000_000), help="streams in all (default: --streams)")
    group.add_argument("--duration", type=float_in(0.001, 86_400), help="keep starting streams for this many seconds")
    p.add_argument("--tokens", type=int_in(1, 100_000), default=200, help="tokens per reply (default 200)")
    p.add_argument("--tps", type=float_in(0.001, 1e6), default=20.0,
                   help="mock tokens per second per stream (default 20)")
    p.add_argument("--ttft-ms", type=float_in(0, 3_600_000), default=50.0, help="mock time to first token (default 50)")
    p.add_argument("--reasoning-tokens", type=int_in(0, 100_000), default=0,
                   help="the mock thinks this many tokens before each reply, as reasoning models do (default 0)")
    p.add_argument("--reasoning-field", choices=("reasoning_content", "reasoning", "think_tags"),
                   default="reasoning_content", help="how the mock streams its thinking (default reasoning_content)")
    p.add_argument("--cancel-frac", type=float_in(0, 1), default=0.0,
                   help="fraction of users who cancel at a random moment")
    p.add_argument("--markdown-frac", type=float_in(0, 1), default=0.0,
                   help="fraction of replies that are the mock's Markdown document (code, a table, lists), verified "
                   "like the rest")
    p.add_argument("--spawn", action="store_true", help="start a private stack: temporary database, free port")
    p.add_argument("--database-url", help="with --spawn: the stack's database instead of a temporary SQLite file "
                   "(a PostgreSQL URL: the report adds the server's WAL, data pages and CPU)")
    p.add_argument("--generators", type=int_in(1, 64), default=1,
                   help="with --spawn: generator processes (default 1)")
    p.add_argument("--model", default="mock-1", help="model name sent with every request (default mock-1)")
    p.add_argument("--seed", type=int_in(-(2**63), 2**63 - 1), default=1, help="seed of who cancels when")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.add_argument("--plot", help="write a latency histogram and throughput over time to this PNG")
    p.add_argument("--http", action="store_true",
                   help="through the gateway: each user an openai SDK client streaming a Responses API reply")
    p.add_argument("--resume-frac", type=float_in(0, 1), default=0.2,
                   help="with --http: the share of streams dropped halfway and resumed by starting_after (0.2)")
    p.set_defaults(func=cmd_loadtest, needs_client=False)


def add_chaos(sub) -> None:
    p = sub.add_parser("chaos", help="kill -9 processes under load, restart them, and account for every reply")
    p.add_argument("--spawn", action="store_true", help="required: a private stack whose processes it supervises")
    p.add_argument("--streams", type=int_in(1, 10_000), default=50, help="replies kept streaming (default 50)")
    p.add_argument("--trials", type=int_in(1, 10_000), default=6, help="kills in all (default 6)")
    p.add_argument("--kill", type=kinds, default=("generator", "persister", "coordinator"),
                   help="which processes, round robin (default generator,persister,coordinator)")
    p.add_argument("--restart-after", type=float_in(0, 60), default=0.5,
                   help="seconds before a killed process is started again (default 0.5)")
    p.add_argument("--seed", type=int_in(-(2**63), 2**63 - 1), default=1, help="seed of when each kill lands")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.set_defaults(func=cmd_chaos, needs_client=False)


def kinds(raw: str) -> tuple[str, ...]:
    """``--kill``: process kinds separated by commas."""
    from tools.chaos import KINDS
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    wrong = [n for n in names if n not in KINDS]
    if not names or wrong:
        raise argparse.ArgumentTypeError(f"must be some of {','.join(KINDS)}, got {raw!r}")
    return names

def cmd_loadtest(args) -> int:
    """Runs without a default client: it may spawn its own stack."""
    from rich.console import Console

    from tools.loadtest import LoadSpec, run_loadtest
    from tools.report import plot, print_table

    spec = LoadSpec(streams=args.streams, count=args.count, duration_s=args.duration, tokens=args.tokens,
                    tps=args.tps, ttft_ms=args.ttft_ms, cancel_frac=args.cancel_frac, model=args.model,
                    seed=args.seed, reasoning_tokens=args.reasoning_tokens, reasoning_field=args.reasoning_field,
                    markdown_frac=args.markdown_frac)
    if spec.count is None and spec.duration_s is None:
        spec.count = spec.streams
    console = Console(stderr=True)
    if args.http and (args.cancel_frac or args.reasoning_tokens or args.duration):
        raise ChatterError("--http runs --count streams without cancels or thinking: drop --cancel-frac, "
                           "--reasoning-tokens and --duration")
    with progress_bar(console, "streams", spec.count) as progress:
        if args.http:
            from tools.loadhttp import run_http_loadtest
            report = run_http_loadtest(spec, spawn=args.spawn, generators=args.generators,
                                       database_url=args.database_url, progress=progress,
                                       resume_frac=args.resume_frac, token=os.environ.get("CHATTER_TOKEN"))
        else:
            report = run_loadtest(spec, spawn=args.spawn, generators=args.generators,
                                  database_url=args.database_url, progress=progress)
    if args.plot:
        plot(report, args.plot)
    del report["_delivery_samples"]
    print_report(args, report, print_table, console)
    return EXIT_OK if report["mismatches"] == 0 and report["errors"] == 0 else EXIT_ERROR


@contextmanager
def progress_bar(console, what: str, total: int | None):
    """A progress bar on a terminal (nothing when stderr is not one); yields the callback of the count done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done: bar.update(task, completed=done)


def print_report(args, report: dict, print_table, console) -> None:
    """A run's report: one JSON object with --json (and in --out FILE), else a table."""
    text = json.dumps(report, ensure_ascii=False, indent=None if args.json else 2)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text + "\n")
    if args.json:
        print(text)
    else:
        print_table(report, console)


def cmd_chaos(args) -> int:
    """Kill -9 under load, restart, account for every reply; exit 1 when anything was lost or doubled."""
    from rich.console import Console

    from tools.chaos import ChaosSpec, print_table, run_chaos

    if not args.spawn:
        raise ChatterError("chaos kills and restarts processes, so only of a stack it starts itself: add --spawn")
    spec = ChaosSpec(streams=args.streams, trials=args.trials, kill=args.kill, seed=args.seed,
                     restart_after_s=args.restart_after)
    console = Console(stderr=True)
    with progress_bar(console, "replies", None) as progress:
        report = run_chaos(spec, progress=progress)
    print_report(args, report, print_table, console)
    lost = sum(report[k] for k in ("lost_acked_chars", "mismatches", "duplicates", "non_terminal"))
    return EXIT_OK if lost == 0 else EXIT_ERROR


