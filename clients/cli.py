"""The ``chatter`` command: send, chat, status, history, preview."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import uuid

from clients.api import ChatterError, Client
from clients.view import ReplyView

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 130


class CancelFlag:
    """SIGINT sets it while a reply streams; the follow loop turns it into a cancel."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None

    def __call__(self) -> bool:
        return self.raised

    def __enter__(self) -> CancelFlag:
        self.raised = False
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, _signum, _frame) -> None:
        self.raised = True

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)


def outcome_json(session_id: str, sent: dict, view: ReplyView) -> dict:
    final = view.final or {}
    stats = final.get("stats") or {}
    return {
        "session_id": session_id,
        "generation_id": view.generation_id,
        "message_id": final.get("message_id") or sent.get("message_id"),
        "status": view.status,
        "content": view.text,
        "prompt_hash": sent.get("prompt_hash"),
        "tokens": stats.get("tokens"),
        "tokens_source": stats.get("tokens_source"),
        "ttft_ms": stats.get("ttft_ms"),
        "duration_ms": stats.get("duration_ms"),
        "tok_per_s": stats.get("tok_per_s"),
        "error": final.get("error"),
    }


def stats_line(outcome: dict) -> str:
    def fmt(value, unit=""):
        return "–" if value is None else f"{value:g}{unit}"

    seconds = None if outcome["duration_ms"] is None else round(outcome["duration_ms"] / 1000, 2)
    source = outcome["tokens_source"] or "estimated"
    line = (f"{fmt(outcome['tokens'])} tokens ({source}) | {fmt(seconds, 's')} | {fmt(outcome['tok_per_s'])} tok/s"
            f" | TTFT {fmt(outcome['ttft_ms'], ' ms')} | {outcome['status']}")
    if outcome["error"]:
        line += f" | {outcome['error']}"
    return line


def exit_code(status: str) -> int:
    return {"completed": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(status, EXIT_ERROR)


def run_turn(client: Client, session_id: str, text: str, model: str | None, *, render: bool) -> dict:
    """Send one message and follow its reply to the durable end. Ctrl+C cancels the reply only."""
    def on_text(fresh: str) -> None:
        sys.stdout.write(fresh)
        sys.stdout.flush()

    client.subscribe(session_id)  # before sending: the Clone pattern's first step
    with CancelFlag() as cancel_flag:  # a Ctrl+C even before the reply starts cancels it, at length 0
        sent = client.send(session_id, text, client_request_id=uuid.uuid4().hex, model=model)
        view = client.follow(session_id, sent["generation_id"], on_text=on_text if render else None,
                             cancel_requested=cancel_flag)
    if render:
        sys.stdout.write("\n")
        sys.stdout.flush()
    return outcome_json(session_id, sent, view)


# ---------------------------------------------------------------- commands


def cmd_send(client: Client, args) -> int:
    if args.session and args.system:
        raise ChatterError("--system sets the system prompt of a new session; leave out --session")
    session_id = args.session or client.new_session(system=args.system, model=args.model)
    outcome = run_turn(client, session_id, args.text, args.model, render=not args.json)
    if args.json:
        print(json.dumps(outcome, ensure_ascii=False))
    else:
        print(stats_line(outcome), file=sys.stderr)
    return exit_code(outcome["status"])


def cmd_chat(client: Client, args) -> int:
    session_id = args.session or client.new_session(system=args.system, model=args.model)
    print(f"session {session_id} — Ctrl+C stops a reply, Ctrl+D quits", file=sys.stderr)
    while True:
        try:
            text = input("› ")
        except EOFError:
            print(file=sys.stderr)
            return EXIT_OK
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if not text.strip():
            continue
        try:
            outcome = run_turn(client, session_id, text, args.model, render=True)
        except ChatterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        print(stats_line(outcome), file=sys.stderr)


def cmd_status(client: Client, args) -> int:
    status = client.status()
    if args.json:
        print(json.dumps({"coordinator": "up"} | status, ensure_ascii=False))
        return EXIT_OK
    print("coordinator: up")
    print(f"generators: {len(status['generators'])}")
    for g in status["generators"]:
        print(f"  {g['generator_id']}: {g['active']} active, {g['capacity_free']} free, seen {g['seen_ms_ago']} ms ago")
    print(f"active generations: {len(status['active'])}")
    for g in status["active"]:
        print(f"  {g['generation_id']} session {g['session_id']}: {g['status']}, {g['length']} chars")
    print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(status["counters"].items())))
    return EXIT_OK


def cmd_history(client: Client, args) -> int:
    history = client.history(args.session)
    if args.json:
        print(json.dumps(history, ensure_ascii=False))
        return EXIT_OK
    print(f"session {history['session_id']}: {history['title']}")
    for msg in history["messages"]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(msg["created_at"]))
        head = f"[{msg['role']}] {stamp} {msg['status']} {msg['message_id']}"
        stats = msg.get("stats") or {}
        if msg["role"] == "assistant" and stats:
            head += f" | {stats.get('tokens')} tokens ({stats.get('tokens_source')}), TTFT {stats.get('ttft_ms')} ms"
        if msg.get("error"):
            head += f" | {msg['error']}"
        print(head)
        print(msg["content"])
        print()
    return EXIT_OK


def cmd_preview(client: Client, args) -> int:
    preview = client.preview(args.message_id)
    if args.json:
        print(json.dumps(preview, ensure_ascii=False))
        return EXIT_OK
    print(f"# prompt of {preview['message_id']} — model {preview['model']}, sha256 {preview['prompt_hash']}",
          file=sys.stderr)
    sys.stdout.write(preview["preview"])
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatter", description="Stream LLM chat replies through Chatter.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("send", help="send one message and stream the reply")
    p.add_argument("text")
    p.add_argument("--session", help="an existing session id (default: a new session)")
    p.add_argument("--system", help="system prompt for a new session")
    p.add_argument("--model")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end instead of streaming")
    p.set_defaults(func=cmd_send)
    p = sub.add_parser("chat", help="an interactive conversation")
    p.add_argument("--session")
    p.add_argument("--system")
    p.add_argument("--model")
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("status", help="coordinator, generators, active generations and counters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("history", help="a session's persisted messages")
    p.add_argument("session")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("preview", help="the exact prompt a reply was generated from")
    p.add_argument("message_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with Client() as client:
            return args.func(client, args)
    except ChatterError as exc:
        print(f"chatter: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # outside a reply there is nothing to cancel
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
