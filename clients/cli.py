"""The ``chatter`` command: send, chat, watch, regenerate, sessions, status, history, preview."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from contextlib import nullcontext
from typing import Callable

from clients.api import ChatterError, Client
from clients.output import (EXIT_CANCELLED, EXIT_ERROR, EXIT_OK, SigintFlag, exit_code, outcome_json,
                            resolve_session)
from clients.render import ReplyRenderer
from clients.view import ReplyView
from protocol import transport

EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE


def write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def renderer_for(args) -> ReplyRenderer | None:
    """Rich live Markdown on a terminal, plain text otherwise, nothing with --json."""
    return None if getattr(args, "json", False) else ReplyRenderer()


def stream_reply(client: Client, session_id: str, start: Callable[[], dict], *,
                 renderer: ReplyRenderer | None = None, interrupt: Callable[[], str | None] | None = None,
                 attach: bool = False) -> tuple[dict, ReplyView]:
    """Start a reply (send or regenerate) and follow it to the durable end. Ctrl+C cancels the reply only,
    even before it starts. Returns the ``--json`` outcome and the view."""
    client.subscribe(session_id)  # before starting: the Clone pattern's first step
    with SigintFlag() as sigint:
        started = start()

        def check() -> str | None:
            if renderer is not None:
                renderer.tick()
            if sigint.raised:
                return "cancel"
            return interrupt() if interrupt is not None else None

        view = client.follow(session_id, started["generation_id"], interrupt=check, attach=attach,
                             on_text=(lambda fresh, v: renderer.update(fresh, v.tokens)) if renderer else None)
    return outcome_json(session_id, view, started), view


def finish(outcome: dict, view: ReplyView, renderer: ReplyRenderer | None) -> int:
    stats = (view.final or {}).get("stats")
    if renderer is None:
        print(json.dumps(outcome, ensure_ascii=False))
    else:
        renderer.finish(outcome, stats, view.text)
    return exit_code(outcome["status"])


# ---------------------------------------------------------------- commands


def message_text(given: str) -> str:
    """The message of ``send``: its argument, or with ``-`` standard input (so also a file: ``< FILE``)."""
    if given != "-":
        return given
    data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise ChatterError(f"standard input is over {MAX_STDIN_BYTES // (1024 * 1024)} MiB; the coordinator takes "
                           "messages up to CHATTER_MAX_TEXT_CHARS characters (100000 by default)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ChatterError(f"standard input is not valid UTF-8 text (byte 0x{data[exc.start]:02x} at byte "
                           f"{exc.start})") from None


MAX_STDIN_BYTES = 4 * 1024 * 1024  # the frame limit: more could never be sent


def cmd_send(client: Client, args) -> int:
    if args.session is not None and args.system:
        raise ChatterError("--system sets the system prompt of a new session; use /system in chat to change one")
    text = message_text(args.text)
    if not text.strip():
        raise ChatterError("the message is empty")
    session_id = (resolve_session(client, args.session) if args.session is not None
                  else client.new_session(system=args.system, model=args.model, max_input_tokens=args.max_input_tokens))
    request_id = uuid.uuid4().hex
    renderer = renderer_for(args)
    with renderer or nullcontext():
        outcome, view = stream_reply(client, session_id,
                                     lambda: client.send(session_id, text, request_id, args.model),
                                     renderer=renderer)
        return finish(outcome, view, renderer)


def cmd_regenerate(client: Client, args) -> int:
    session_id = resolve_session(client, args.session)
    request_id = uuid.uuid4().hex
    renderer = renderer_for(args)
    with renderer or nullcontext():
        outcome, view = stream_reply(client, session_id, lambda: client.regenerate(session_id, request_id),
                                     renderer=renderer)
        return finish(outcome, view, renderer)


def cmd_watch(client: Client, args) -> int:
    """Attach at any moment: print what a reply already has, then follow it live; any number of
    watchers see identical text. Ctrl+C stops watching, never the reply."""
    session_id = resolve_session(client, args.session)
    client.subscribe(session_id)
    seen: set[str] = set()
    with SigintFlag() as sigint:
        while True:
            snap = client.next_generation(session_id, seen, stop=sigint)
            if snap is None:
                return EXIT_OK
            seen.add(snap["generation_id"])
            renderer = renderer_for(args)
            if renderer is not None:
                renderer.adopt(snap.get("stats") or {})
                renderer.heading(f"› {snap.get('user_text') or ''}")
            with renderer or nullcontext():
                def check() -> str | None:
                    if renderer is not None:
                        renderer.tick()
                    return "detach" if sigint.raised else None

                view = client.follow(session_id, snap["generation_id"], attach=True, interrupt=check,
                                     on_text=(lambda fresh, v: renderer.update(fresh, v.tokens)) if renderer else None)
                if view.final is None:  # Ctrl+C: stop watching
                    return EXIT_OK
                outcome = outcome_json(session_id, view, snap)
                if args.once:
                    return finish(outcome, view, renderer)
                renderer.finish(outcome, view.final.get("stats"), view.text)


def cmd_chat(client: Client, args) -> int:
    from clients.chat import Chat
    return Chat(client, args).run()


def cmd_loadtest(args) -> int:
    """Runs without a default client: it may spawn its own stack."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from clients.loadtest import LoadSpec, plot, print_table, run_loadtest

    spec = LoadSpec(streams=args.streams, count=args.count, duration_s=args.duration, tokens=args.tokens,
                    tps=args.tps, ttft_ms=args.ttft_ms, cancel_frac=args.cancel_frac, model=args.model,
                    seed=args.seed)
    if spec.count is None and spec.duration_s is None:
        spec.count = spec.streams
    console = Console(stderr=True)
    total = spec.count
    with Progress(TextColumn("streams"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("load", total=total)
        report = run_loadtest(spec, spawn=args.spawn, generators=args.generators,
                              progress=lambda done: bar.update(task, completed=done))
    if args.plot:
        plot(report, args.plot)
    samples = report.pop("_delivery_samples")
    del samples
    text = json.dumps(report, ensure_ascii=False, indent=None if args.json else 2)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text + "\n")
    if args.json:
        print(text)
    else:
        print_table(report, console)
    return EXIT_OK if report["mismatches"] == 0 and report["errors"] == 0 else EXIT_ERROR


def cmd_sessions(client: Client, args) -> int:
    rows = client.sessions(limit=args.limit)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return EXIT_OK
    print_sessions(rows)
    return EXIT_OK


def print_sessions(rows: list[dict]) -> None:
    for row in rows:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last_activity"])) if row["last_activity"] else "–"
        print(f"{row['session_id']}  {stamp}  {row['message_count']:>3} msgs  {row['status']:<11}  {row['title']}")


def cmd_status(client: Client, args) -> int:
    session_id = resolve_session(client, args.session) if args.session is not None else None
    status = client.status(session_id)
    if args.json:
        print(json.dumps({"coordinator": "up"} | status, ensure_ascii=False))
        return EXIT_OK
    print("coordinator: up")
    print(f"generators: {len(status['generators'])}")
    for g in status["generators"]:
        print(f"  {g['generator_id']}: {g['active']} active, {g['capacity_free']} free, seen {g['seen_ms_ago']} ms ago")
    print(f"active generations: {len(status['active'])}")
    for g in status["active"]:
        print(f"  {g['generation_id']} session {g['session_id']}: {g['status']}, {g['length']} chars, "
              f"prompt ~{g['prompt_tokens']}/{g['max_input_tokens']} tokens")
    if "context" in status:
        ctx = status["context"]
        print(f"session {ctx['session_id']}: history ~{ctx['history_tokens']}/{ctx['max_input_tokens']} tokens")
    print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(status["counters"].items())))
    persister = status.get("persister") or {}
    if persister:
        print(f"persister: {persister['commits']} commits, {persister['ops']} operations, "
              f"{persister['reply_text_bytes']} reply text bytes written, {persister['failed_batches']} failed "
              f"batches, {persister['ops_rejected']} operations rejected")
        if persister["failing_since"] is not None:
            print(f"persister: FAILING for {max(0.0, time.time() - persister['failing_since']):.0f} s: "
                  f"{persister['last_error']}; nothing new is durable until it recovers")
    else:
        print("persister: no totals yet (it reports after its first commit)")
    return EXIT_OK


def cmd_history(client: Client, args) -> int:
    history = client.history(resolve_session(client, args.session))
    if args.json:
        print(json.dumps(history, ensure_ascii=False))
        return EXIT_OK
    print_history(history)
    return EXIT_OK


def print_history(history: dict) -> None:
    print(f"session {history['session_id']}: {history['title']}")
    if history.get("system"):
        print(f"[system] {history['system']}")
    for msg in history["messages"]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(msg["created_at"]))
        status = msg["status"] + (", superseded" if msg.get("superseded") else "")
        head = f"[{msg['role']}] {stamp} {status} {msg['message_id']}"
        stats = msg.get("stats") or {}
        if msg["role"] == "assistant" and stats:
            head += f" | {stats.get('tokens')} tokens ({stats.get('tokens_source')}), TTFT {stats.get('ttft_ms')} ms"
        if msg.get("error"):
            head += f" | {msg['error']}"
        print(head)
        print(msg["content"])
        print()


def cmd_preview(client: Client, args) -> int:
    preview = client.preview(args.message_id)
    if args.json:
        print(json.dumps(preview, ensure_ascii=False))
        return EXIT_OK
    print_preview(preview)
    return EXIT_OK


def print_preview(preview: dict) -> None:
    note = f"# prompt of {preview['message_id']} — model {preview['model']}, sha256 {preview['prompt_hash']}"
    if preview.get("dropped_message_ids"):
        note += (f"\n# left out to fit the input budget: {len(preview['dropped_message_ids'])} older messages: "
                 + ", ".join(preview["dropped_message_ids"]))
    print(note, file=sys.stderr)
    write_out(preview["preview"])


def int_in(lo: int, hi: int):
    """An argparse type: an integer from ``lo`` to ``hi``, else a usage error that says so."""
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {raw}")
        return value
    return parse


def float_in(lo: float, hi: float):
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
        if not lo <= value <= hi:  # NaN fails this too
            raise argparse.ArgumentTypeError(f"must be from {lo:g} to {hi:g}, got {raw}")
        return value
    return parse


TOKENS = int_in(1, 2**31 - 1)  # the schema's bound: a 32-bit column


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatter", description="Stream LLM chat replies through Chatter.",
        epilog="exit codes: 0 completed; 1 error, interrupted, refused or coordinator unreachable; "
               "130 cancelled (Ctrl+C); 2 bad usage; 141 output pipe closed early. Settings come from the "
               "environment: see the README.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("send", help="send one message and stream the reply")
    p.add_argument("text", help="the message; - reads it from standard input (chatter send - < FILE)")
    p.add_argument("--session", help="an existing session id or unique prefix (default: a new session)")
    p.add_argument("--system", help="system prompt for a new session")
    p.add_argument("--model", help="model for this message (default: the session's, else CHATTER_MODEL)")
    p.add_argument("--max-input-tokens", type=TOKENS, help="input budget of a new session")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end instead of streaming")
    p.set_defaults(func=cmd_send)
    p = sub.add_parser("chat", help="an interactive conversation (/help inside)")
    p.add_argument("--session", help="continue this session (id or unique prefix; default: a new one)")
    p.add_argument("--system", help="system prompt of a new session")
    p.add_argument("--model", help="model of a new session (default CHATTER_MODEL)")
    p.add_argument("--max-input-tokens", type=TOKENS, help="input budget of a new session (default "
                   "CHATTER_MAX_INPUT_TOKENS)")
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("watch", help="follow a session's replies live, from any moment")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("--once", action="store_true", help="follow the active (or last) reply to its end, then exit")
    p.add_argument("--json", action="store_true", help="with --once: print the same object as send --json")
    p.set_defaults(func=cmd_watch)
    p = sub.add_parser("regenerate", help="answer the session's last message again (cancels a streaming reply)")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_regenerate)
    p = sub.add_parser("loadtest", help="simulated users against the stack, every stream verified, with a report")
    p.add_argument("--streams", type=int_in(1, 100_000), default=20, help="concurrent users (default 20)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--count", type=int_in(1, 10_000_000), help="streams in all (default: --streams)")
    group.add_argument("--duration", type=float_in(0.001, 86_400), help="keep starting streams for this many seconds")
    p.add_argument("--tokens", type=int_in(1, 100_000), default=200, help="tokens per reply (default 200)")
    p.add_argument("--tps", type=float_in(0.001, 1e6), default=20.0,
                   help="mock tokens per second per stream (default 20)")
    p.add_argument("--ttft-ms", type=float_in(0, 3_600_000), default=50.0, help="mock time to first token (default 50)")
    p.add_argument("--cancel-frac", type=float_in(0, 1), default=0.0,
                   help="fraction of users who cancel at a random moment")
    p.add_argument("--spawn", action="store_true", help="start a private stack: temporary database, free port")
    p.add_argument("--generators", type=int_in(1, 64), default=1,
                   help="with --spawn: generator processes (default 1)")
    p.add_argument("--model", default="mock-1", help="model name sent with every request (default mock-1)")
    p.add_argument("--seed", type=int_in(-(2**63), 2**63 - 1), default=1, help="seed of who cancels when")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.add_argument("--plot", help="write a latency histogram and throughput over time to this PNG")
    p.set_defaults(func=cmd_loadtest, needs_client=False)
    p = sub.add_parser("sessions", help="recent sessions")
    p.add_argument("--limit", type=int_in(1, 100_000), default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_sessions)
    p = sub.add_parser("status", help="coordinator, generators, active generations and counters")
    p.add_argument("--session", help="also show this session's context use")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("history", help="a session's persisted messages")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("preview", help="the exact prompt a reply was generated from")
    p.add_argument("message_id", help="an assistant message id (see history)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "json", False) and args.command == "watch" and not args.once:
        build_parser().error("watch --json needs --once")
    try:
        if not getattr(args, "needs_client", True):
            code = args.func(args)
        else:
            with Client() as client:
                code = args.func(client, args)
        sys.stdout.flush()  # here, so that a closed pipe is seen below and not at exit
        return code
    except (ChatterError, transport.SetupError) as exc:
        print(f"chatter: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # outside a reply there is nothing to cancel
        return EXIT_CANCELLED
    except BrokenPipeError:  # the reader left (chatter status | head -1): stop quietly, as standard tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
