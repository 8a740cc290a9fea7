"""The commands that manage sessions themselves: delete and rename (and, as they come, search, export, import,
edit and branches). Each takes a connected client and the parsed arguments, and returns an exit code."""
from __future__ import annotations

import json
import sys
import time

from clients.api import ChatterError, Client
from clients.output import EXIT_ERROR, EXIT_OK, resolve_session

SESSIONS_PAGE = 100_000  # ``--older-than`` and ``--all`` read the list this many at a time at most


def cmd_delete(client: Client, args) -> int:
    """Delete sessions: named (ids or unique prefixes), older than a span, or all; asked first on a terminal."""
    chosen = sum((bool(args.sessions), args.older_than is not None, args.all))
    if chosen != 1:
        raise ChatterError("name the sessions to delete, or give --older-than SPAN, or --all (one of them)")
    if args.sessions:
        ids = list(dict.fromkeys(resolve_session(client, given) for given in args.sessions))
        what = ", ".join(ids) if len(ids) <= 3 else f"{len(ids)} sessions"
    else:
        listed = client.sessions(limit=SESSIONS_PAGE)
        if args.all:
            ids, what = [row.session_id for row in listed], f"all {len(listed)} sessions"
        else:
            cutoff = time.time() - args.older_than
            ids = [row.session_id for row in listed if row.last_activity < cutoff and row.status != "streaming"]
            what = f"{len(ids)} sessions not active for {args.older_than / 86400:g} days"
    if not ids:
        return report(args, [], [], "nothing to delete")
    if not args.yes and not confirm(f"Delete {what}, with every message? This cannot be undone. [y/N] "):
        print("chatter: nothing deleted", file=sys.stderr)
        return EXIT_ERROR
    deleted = client.delete_sessions(ids)
    missing = [session_id for session_id in ids if session_id not in set(deleted)]
    return report(args, deleted, missing, f"deleted {len(deleted)} session{'s' if len(deleted) != 1 else ''}")


def confirm(question: str) -> bool:
    """Asked on the terminal; without one (a script, a pipe) nothing is deleted unless --yes said so."""
    if not sys.stdin.isatty():
        raise ChatterError("deleting asks first, and standard input is not a terminal: add --yes to delete anyway")
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def report(args, deleted: list[str], missing: list[str], words: str) -> int:
    if args.json:
        print(json.dumps({"deleted": deleted, "not_found": missing}))
    else:
        print(words)
        for session_id in missing:
            print(f"chatter: no session {session_id} (deleted already, or never stored)", file=sys.stderr)
    return EXIT_ERROR if missing else EXIT_OK


def cmd_search(client: Client, args) -> int:
    session_id = resolve_session(client, args.session) if args.session is not None else None
    hits = client.search(args.query, session_id, args.limit)
    if args.json:
        print(json.dumps([{"session_id": hit.session_id, "title": hit.title, "message_id": hit.message_id,
                           "role": hit.role, "created_at": hit.created_at, "snippet": marked(hit.snippet, "[", "]")}
                          for hit in hits], ensure_ascii=False))
        return EXIT_OK
    print_hits(hits)
    return EXIT_OK


def marked(snippet: str, open_mark: str, close_mark: str) -> str:
    """A hit's snippet with its matches between these marks (the protocol marks them with \\x02 and \\x03)."""
    return " ".join(snippet.replace("\x02", open_mark).replace("\x03", close_mark).split())


def print_hits(hits: list, console=None) -> None:
    """Each hit: its session (a short id and its title), the message's role, and the snippet, its matches shown in
    reverse on a terminal and [between brackets] elsewhere."""
    from rich.console import Console
    from rich.text import Text
    console = console or Console(highlight=False)
    if not hits:
        console.print("no message matches", style="dim")
        return
    for hit in hits:
        console.print(Text(f"{hit.session_id[:8]}  {hit.title or '(untitled)'}", style="bold"))
        if not console.is_terminal:
            console.print(Text(f"  {hit.role}: {marked(hit.snippet, '[', ']')}"))
            continue
        line = Text(f"  {hit.role}: ")
        for i, part in enumerate(marked(hit.snippet, "\x02", "\x03").replace("\x03", "\x02").split("\x02")):
            line.append(part, style="bold reverse" if i % 2 else "")
        console.print(line)


def cmd_rename(client: Client, args) -> int:
    session_id = resolve_session(client, args.session)
    renamed = client.rename(session_id, args.title)
    if args.json:
        print(json.dumps({"session_id": renamed.session_id, "title": renamed.title}, ensure_ascii=False))
    else:
        print(f"{renamed.session_id}: {renamed.title}" + ("" if args.title.strip() else " (automatic)"))
    return EXIT_OK
