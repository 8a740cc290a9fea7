"""The ``chatter`` command line: its arguments, and the one place where errors become exit codes.
The commands are in ``commands.py``."""
from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points

from clients.api import ChatterError, Client
from clients.arguments import duration, int_in
from clients.commands import (cmd_chat, cmd_continue, cmd_edit, cmd_gui, cmd_history, cmd_keys_new, cmd_preview,
                              cmd_regenerate, cmd_send, cmd_sessions, cmd_status, cmd_watch)
from clients.manage import (cmd_branches, cmd_delete, cmd_export, cmd_fork, cmd_import, cmd_rename, cmd_search,
                            cmd_switch, cmd_users)
from clients.output import EXIT_CANCELLED, EXIT_ERROR
import transport

EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE
# Commands that live above the clients (the load tester and chaos, in tools/) register here, in pyproject.toml's
# entry points: the command line finds them without the client layer importing the tools.
COMMANDS_GROUP = "chatter.commands"


TOKENS = int_in(1, 2**31 - 1)  # the schema's bound: a 32-bit column


MESSAGE_REF = "a message: its number in chatter history, its id, or a unique start of its id"
SHOW_THINKING = "print a reasoning model's thinking in full (default: its newest lines, folded once it ends)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatter", description="Stream LLM chat replies through Chatter.",
        epilog="exit codes: 0 completed; 1 error, interrupted, refused or coordinator unreachable; "
               "130 cancelled (Ctrl+C); 2 bad usage; 141 output pipe closed early. Settings come from the "
               "environment: see docs/CONFIGURATION.md.")
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
    p = sub.add_parser("search", help="the messages that hold every word, \"phrase\" and prefix* given, best first")
    p.add_argument("query", help='words (all must match), "a phrase", prefix* (stream*)')
    p.add_argument("--session", help="only in this session (id or unique prefix)")
    p.add_argument("--limit", type=int_in(1, 1000), default=20, help="at most this many hits (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON; each snippet marks its matches [like this]")
    p.set_defaults(func=cmd_search)
    p = sub.add_parser("rename", help="give a session a title (kept from then on; \"\" gives back the automatic one)")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("title", help="the new title (at most 500 characters)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_rename)
    p = sub.add_parser("delete", help="delete sessions with every message: the text is gone from the database "
                                      "(a reply streaming there is stopped first)")
    p.add_argument("sessions", nargs="*", metavar="SESSION", help="session ids or unique prefixes")
    p.add_argument("--older-than", type=duration, metavar="SPAN",
                   help="every session not active for this long (30d, 12h, 90m, 2w)")
    p.add_argument("--all", action="store_true", help="every session")
    p.add_argument("--yes", action="store_true", help="do not ask (needed when not on a terminal)")
    p.add_argument("--branch", metavar="MESSAGE", help="delete this message of the one session named, and every "
                   "message after it on any branch (the rest of the session stays)")
    p.add_argument("--json", action="store_true", help='print {"deleted": [...], "not_found": [...]}')
    p.set_defaults(func=cmd_delete)
    p = sub.add_parser("edit", help="write one of your messages again: a new branch beside the old one (kept "
                                    "whole), and a reply to it, streamed")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("message", help=MESSAGE_REF)
    p.add_argument("text", help="the new text; - reads it from standard input")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--show-thinking", action="store_true", help=SHOW_THINKING)
    p.set_defaults(func=cmd_edit)
    p = sub.add_parser("branches", help="a session's tree of messages, every branch, the active one marked *")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_branches)
    p = sub.add_parser("switch", help="make the branch through a message the active one (its newest end)")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("message", help=MESSAGE_REF)
    p.add_argument("--version", type=int_in(1, 2**31 - 1), metavar="K",
                   help="the K-th version of that message instead (1 the oldest; chatter history shows them)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_switch)
    p = sub.add_parser("fork", help="copy a session's active branch (up to MESSAGE) into a new session")
    p.add_argument("session", help="session id or unique prefix")
    p.add_argument("message", nargs="?", help=MESSAGE_REF + " (default: the branch's last)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_fork)
    p = sub.add_parser("export", help="a session whole: Chatter's JSON (every branch, every field), Markdown to "
                                      "read, or OpenAI's messages; --all: every session, one a line")
    p.add_argument("session", nargs="?", help="session id or unique prefix")
    p.add_argument("--all", action="store_true", help="every session, in Chatter's JSON Lines (a backup)")
    p.add_argument("--format", choices=("json", "markdown", "openai"), default="json",
                   help="json: Chatter's own, for chatter import (default); markdown: the active branch to read; "
                        "openai: the active branch as a chat completions request's model and messages")
    p.add_argument("--output", metavar="FILE", help="write to FILE, readable by you alone (0600), not stdout")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import", help="sessions from chatter export, or from ChatGPT's data export "
                                      "(conversations.json); checked whole first, never imported twice")
    p.add_argument("file", help="the file; - reads standard input")
    p.add_argument("--json", action="store_true", help='print [{"session_id", "created", "existing"}, ...]')
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("users", help="the HTTP gateway's users: each signs in with a token, and sees only their "
                                     "own sessions")
    users = p.add_subparsers(dest="users_command", required=True)
    u = users.add_parser("add", help="add a user; prints their token once (only its sha256 is stored)")
    u.add_argument("name", help="letters, digits and . _ @ - (at most 64)")
    u.add_argument("--json", action="store_true", help='print {"name", "token"}')
    u.set_defaults(func=cmd_users)
    u = users.add_parser("list", help="every user, and which are revoked")
    u.add_argument("--json", action="store_true", help="print JSON instead of text")
    u.set_defaults(func=cmd_users)
    u = users.add_parser("revoke", help="a user's token no longer signs in (their sessions stay)")
    u.add_argument("name")
    u.add_argument("--json", action="store_true", help="print JSON instead of text")
    u.set_defaults(func=cmd_users)
    p = sub.add_parser("keys", help="CURVE keys for tcp channels across hosts")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("new", help="write NAME.key (public) and NAME.key_secret (mode 0600)")
    k.add_argument("name", help="whose key: coordinator, or a process's or client's name")
    k.add_argument("--dir", default=".", help="where to write them (default: the current directory)")
    k.set_defaults(func=cmd_keys_new, needs_client=False)
    for command in entry_points(group=COMMANDS_GROUP):  # loadtest and chaos: tools/commands.py
        command.load()(sub)
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
