"""The commands that manage sessions themselves: delete, rename, search, export and import, and the branches of a
session's tree (draw, switch, fork, delete one). Each takes a connected client and the parsed arguments, and
returns an exit code. Editing a message streams a reply, like send: ``commands.cmd_edit``."""
from __future__ import annotations

import json
import sys
import time

from clients.api import ChatterError, Client
from clients.output import EXIT_ERROR, EXIT_OK, resolve_session

SESSIONS_PAGE = 100_000  # ``--older-than`` and ``--all`` read the list this many at a time at most


def cmd_delete(client: Client, args) -> int:
    """Delete sessions: named (ids or unique prefixes), older than a span, or all; or one branch of a session;
    asked first on a terminal."""
    if args.branch is not None:
        return delete_branch(client, args)
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


def delete_branch(client: Client, args) -> int:
    if len(args.sessions) != 1 or args.older_than is not None or args.all:
        raise ChatterError("--branch MESSAGE deletes a branch of one session: name that session alone")
    session_id = resolve_session(client, args.sessions[0])
    if not args.yes and not confirm(f"Delete message {args.branch} of {session_id} and every message after it, on "
                                    "every branch? This cannot be undone. [y/N] "):
        print("chatter: nothing deleted", file=sys.stderr)
        return EXIT_ERROR
    gone = client.delete_branch(session_id, args.branch)
    if args.json:
        print(json.dumps({"deleted": gone.deleted, "leaf_id": gone.leaf_id}))
    else:
        print(f"deleted {len(gone.deleted)} message{'s' if len(gone.deleted) != 1 else ''} of {session_id}")
    return EXIT_OK


def cmd_branches(client: Client, args) -> int:
    tree = client.tree(resolve_session(client, args.session))
    if args.json:
        print(json.dumps({"session_id": tree.session_id, "title": tree.title, "leaf_id": tree.leaf_id,
                          "nodes": [{"message_id": n.message_id, "parent_id": n.parent_id, "role": n.role,
                                     "status": n.status, "created_at": n.created_at, "line": n.line,
                                     "active": n.active} for n in tree.nodes]}, ensure_ascii=False))
        return EXIT_OK
    print(f"session {tree.session_id}: {tree.title}")
    for line in draw_tree(tree.nodes):
        print(line)
    return EXIT_OK


def draw_tree(nodes: list) -> list[str]:
    """A session's tree, one line a message: a run without branches stays in one column, and a message with
    several versions opens a column for each (├─ └─). The active branch is marked ``*`` and numbered as history
    numbers it (``chatter edit SESSION N``); every line names a message by the start of its id."""
    children: dict[str, list] = {}
    for node in nodes:
        children.setdefault(node.parent_id, []).append(node)
    lines, number = [], 0
    stack = [(root, "", "", "") for root in reversed(children.get("", []))]
    if len(children.get("", [])) > 1:  # first messages that were edited: versions of one another
        roots = children[""]
        stack = [(root, "", "└─ " if i == len(roots) - 1 else "├─ ", "   " if i == len(roots) - 1 else "│  ")
                 for i, root in reversed(list(enumerate(roots)))]
    while stack:
        node, prefix, connector, below = stack.pop()
        number += node.active
        mark = f"* {number:>3}" if node.active else "     "
        status = "" if node.status == "completed" else f" ({node.status})"
        lines.append(f"{mark} {prefix}{connector}{node.message_id[:8]} {node.role:<9}{status} {node.line}")
        kids = children.get(node.message_id, [])
        if len(kids) == 1:
            stack.append((kids[0], prefix + below, "", ""))
            continue
        for i in reversed(range(len(kids))):
            last = i == len(kids) - 1
            stack.append((kids[i], prefix + below, "└─ " if last else "├─ ", "   " if last else "│  "))
    return lines


def cmd_switch(client: Client, args) -> int:
    session_id = resolve_session(client, args.session)
    switched = client.switch(session_id, args.message, None if args.version is None else args.version - 1)
    if args.json:
        print(json.dumps({"session_id": switched.session_id, "leaf_id": switched.leaf_id}))
    else:
        print(f"{switched.session_id}: the active branch now ends at {switched.leaf_id}")
    return EXIT_OK


def cmd_fork(client: Client, args) -> int:
    forked = client.fork(resolve_session(client, args.session), args.message)
    if args.json:
        print(json.dumps({"session_id": forked.session_id, "source_id": forked.source_id,
                          "message_count": forked.message_count}))
    else:
        print(f"{forked.session_id}: a copy of {forked.message_count} messages of {forked.source_id}")
    return EXIT_OK


def cmd_export(client: Client, args) -> int:
    """A session (or, with --all, every one) in Chatter's JSON Lines, as Markdown, or as OpenAI's messages."""
    from clients import transfer
    if args.all == bool(args.session):
        raise ChatterError("name one session to export, or give --all")
    if args.all and args.format != "json":
        raise ChatterError("--all exports in Chatter's own format (--format json), one session a line")
    ids = [row.session_id for row in client.sessions(limit=SESSIONS_PAGE)] if args.all else \
        [resolve_session(client, args.session)]
    render = {"json": transfer.chatter_json, "markdown": transfer.markdown,
              "openai": lambda export: json.dumps(transfer.openai_messages(export), ensure_ascii=False, indent=2)}
    out = open_private(args.output) if args.output else sys.stdout
    try:
        for session_id in ids:
            text = render[args.format](client.export(session_id))
            out.write(text if text.endswith("\n") else text + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output:
        print(f"exported {len(ids)} session{'s' if len(ids) != 1 else ''} to {args.output}", file=sys.stderr)
    return EXIT_OK


def open_private(path: str):
    """A file for conversations, readable by its owner alone (0600), whatever the umask."""
    import os
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8")


def cmd_import(client: Client, args) -> int:
    """Chatter's export or ChatGPT's conversations.json, read and checked whole first, then session by session;
    what is there already is not written twice."""
    from clients import transfer
    if args.file == "-":
        name, data = "<stdin>", sys.stdin.buffer.read()
    else:
        name = args.file
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ChatterError(f"cannot read {args.file}: {exc.strerror}") from None
    incoming = transfer.read_file(name, data)
    done = []
    for session in incoming:
        try:
            imported = client.import_session(session.session, session.messages)
        except ChatterError as exc:
            raise ChatterError(f"{name}:{session.line}: {exc}") from None
        done.append(imported)
        if not args.json:
            title = session.session.title or "(untitled)"
            print(f"{imported.session_id}  {title}: {imported.created} messages imported"
                  + (f", {imported.existing} there already" if imported.existing else ""))
    if args.json:
        print(json.dumps([{"session_id": d.session_id, "created": d.created, "existing": d.existing} for d in done]))
    return EXIT_OK


def cmd_users(client: Client, args) -> int:
    """The gateway's users: add (a token printed once; only its sha256 is stored), list, revoke."""
    import hashlib
    import secrets
    from clients.api import APPLIED_WAIT_MS
    from protocol import messages as m
    if args.users_command == "add":
        token = "chk_" + secrets.token_urlsafe(32)
        added = client.request(m.AddUser(next(client.req_ids), args.name, hashlib.sha256(token.encode()).hexdigest()),
                               timeout_ms=APPLIED_WAIT_MS).user
        if args.json:
            print(json.dumps({"name": added.name, "token": token}))
        else:
            print(f"user {added.name} added; their token, shown this once (only its sha256 is stored):",
                  file=sys.stderr)
            print(token)
        return EXIT_OK
    if args.users_command == "revoke":
        revoked = client.request(m.RevokeUser(next(client.req_ids), args.name), timeout_ms=APPLIED_WAIT_MS).user
        print(json.dumps({"name": revoked.name, "revoked_at": revoked.revoked_at}) if args.json else
              f"user {revoked.name} revoked: their token no longer signs in (their sessions stay)")
        return EXIT_OK
    users = client.request(m.Users(next(client.req_ids))).users
    if args.json:
        print(json.dumps([{"name": u.name, "created_at": u.created_at, "revoked_at": u.revoked_at} for u in users]))
    else:
        for user in users:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(user.created_at))
            print(f"{user.name}  added {stamp}" + ("  REVOKED" if user.revoked_at else ""))
        if not users:
            print("no users yet: chatter users add NAME")
    return EXIT_OK
