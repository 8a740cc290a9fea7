"""The ``chatter`` command line: its arguments, and the one place where errors become exit codes.
The commands are in ``commands.py``."""
from __future__ import annotations

import argparse
import os
import sys

from clients.api import ChatterError, Client
from clients.commands import (cmd_chaos, cmd_chat, cmd_gui, cmd_history, cmd_keys_new, cmd_loadtest, cmd_preview,
                              cmd_continue, cmd_regenerate, cmd_send, cmd_sessions, cmd_status, cmd_watch)
from clients.output import EXIT_CANCELLED, EXIT_ERROR
from protocol import transport

EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE


def in_range(convert, lo, hi, what: str):
    """An argparse type: a number (``convert``: int or float) from ``lo`` to ``hi``, else a usage error that
    says so."""
    def parse(raw: str):
        try:
            value = convert(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not {what}") from None
        if not lo <= value <= hi:  # NaN fails this too
            shown = (f"{b:g}" if isinstance(b, float) else str(b) for b in (lo, hi))
            raise argparse.ArgumentTypeError("must be from {} to {}, got {}".format(*shown, raw))
        return value
    return parse


def int_in(lo: int, hi: int):
    return in_range(int, lo, hi, "an integer")


def float_in(lo: float, hi: float):
    return in_range(float, lo, hi, "a number")


TOKENS = int_in(1, 2**31 - 1)  # the schema's bound: a 32-bit column


def kinds(raw: str) -> tuple[str, ...]:
    """``--kill``: process kinds separated by commas."""
    from tools.chaos import KINDS
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    wrong = [n for n in names if n not in KINDS]
    if not names or wrong:
        raise argparse.ArgumentTypeError(f"must be some of {','.join(KINDS)}, got {raw!r}")
    return names
SHOW_THINKING = "print a reasoning model's thinking in full (default: its newest lines, folded once it ends)"


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
    p.add_argument("--show-thinking", action="store_true", help=SHOW_THINKING)
    p.set_defaults(func=cmd_send)
    p = sub.add_parser("chat", help="an interactive conversation (/help inside)")
    p.add_argument("--session", help="continue this session (id or unique prefix; default: a new one)")
    p.add_argument("--system", help="system prompt of a new session")
    p.add_argument("--model", help="model of a new session (default CHATTER_MODEL)")
    p.add_argument("--max-input-tokens", type=TOKENS, help="input budget of a new session (default "
                   "CHATTER_MAX_INPUT_TOKENS)")
    p.add_argument("--show-thinking", action="store_true", help=SHOW_THINKING)
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("gui", help="the desktop window (PySide6): sessions, live replies, stats, stop, preview")
    p.add_argument("--session", help="open this session (id or unique prefix)")
    p.add_argument("--send", metavar="TEXT", help="send this message at once (in a new session unless --session)")
    p.add_argument("--screenshot", metavar="PNG", help="with --send: save the window when the reply ends")
    p.add_argument("--screenshot-live", metavar="PNG", help="with --send: save the window mid-reply")
    p.add_argument("--quit-after-reply", action="store_true",
                   help="with --send: exit when the reply ends, with send's exit code")
    p.set_defaults(func=cmd_gui, needs_client=False)
    p = sub.add_parser("watch", help="follow a session's replies live, from any moment")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("--once", action="store_true", help="follow the active (or last) reply to its end, then exit")
    p.add_argument("--json", action="store_true", help="with --once: print the same object as send --json")
    p.add_argument("--show-thinking", action="store_true", help=SHOW_THINKING)
    p.set_defaults(func=cmd_watch)
    p = sub.add_parser("regenerate", help="answer the session's last message again (cancels a streaming reply)")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--show-thinking", action="store_true", help=SHOW_THINKING)
    p.set_defaults(func=cmd_regenerate)
    p = sub.add_parser("continue", help="continue the session's last reply where it was cut (length limit, stop, "
                                        "error, interruption): the same message grows (CHATTER_CONTINUE_STYLE)")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--show-thinking", action="store_true", help=SHOW_THINKING)
    p.set_defaults(func=cmd_continue)
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
    p.set_defaults(func=cmd_loadtest, needs_client=False)
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
    p = sub.add_parser("sessions", help="recent sessions")
    p.add_argument("--limit", type=int_in(1, 10_000_000), default=50, help="at most this many (default 50), read a page at a time")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_sessions)
    p = sub.add_parser("status", help="coordinator, generators, active generations and counters")
    p.add_argument("--session", help="also show this session's context use")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("history", help="a session's persisted messages")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--show-thinking", action="store_true", help="print each reply's thinking in full (default: "
                   "folded to one line)")
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("preview", help="the exact prompt a reply was generated from")
    p.add_argument("message_id", help="an assistant message id (see history)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_preview)
    p = sub.add_parser("keys", help="CURVE keys for tcp channels across hosts")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("new", help="write NAME.key (public) and NAME.key_secret (mode 0600)")
    k.add_argument("name", help="whose key: coordinator, or a process's or client's name")
    k.add_argument("--dir", default=".", help="where to write them (default: the current directory)")
    k.set_defaults(func=cmd_keys_new, needs_client=False)
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
