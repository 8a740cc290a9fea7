"""The ``chatter`` commands: each takes a connected client and the parsed arguments, and returns an exit
code. ``cli.py`` parses the arguments; ``show.py`` renders."""
from __future__ import annotations

import json
import sys
import uuid
from contextlib import nullcontext

from clients.api import ChatterError, Client
from protocol import answers
from clients.output import EXIT_OK, SigintFlag, outcome_json, resolve_session
from clients.show import (finish, print_history, print_preview, print_sessions, print_status, renderer_callbacks,
                          renderer_for, stream_reply)


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
                  else client.new_session(system=args.system, model=args.model, max_input_tokens=args.max_input_tokens,
                                          save=False))  # stored with this message: a refused one leaves none
    request_id = uuid.uuid4().hex
    renderer = renderer_for(args)
    with renderer or nullcontext():
        outcome, view = stream_reply(client, session_id,
                                     lambda: client.send(session_id, text, request_id, args.model),
                                     renderer=renderer)
        return finish(outcome, view, renderer)


def cmd_regenerate(client: Client, args) -> int:
    return follow_new_reply(client, args, client.regenerate)


def cmd_edit(client: Client, args) -> int:
    """A user message written again: a new branch, whose reply streams like a send's."""
    text = message_text(args.text)
    if not text.strip():
        raise ChatterError("the message is empty")
    return follow_new_reply(client, args, lambda session_id, request_id: client.edit(session_id, args.message, text,
                                                                                      request_id))


def cmd_continue(client: Client, args) -> int:
    """The session's last reply goes on where it was cut: the whole reply is shown, growing."""
    return follow_new_reply(client, args, client.continue_reply, attach=True)


def follow_new_reply(client: Client, args, start, attach: bool = False) -> int:
    """A reply that ``start(session_id, request_id)`` begins in ``args.session``, followed to its durable end;
    ``attach``: from a snapshot (it goes on from a text it already has)."""
    session_id = resolve_session(client, args.session)
    request_id = uuid.uuid4().hex
    renderer = renderer_for(args)
    with renderer or nullcontext():
        outcome, view = stream_reply(client, session_id, lambda: start(session_id, request_id), renderer=renderer,
                                     attach=attach)
        return finish(outcome, view, renderer)


def cmd_watch(client: Client, args) -> int:
    """Attach at any moment: print what a reply already has, then follow it live; any number of
    watchers see identical text. Ctrl+C stops watching, never the reply."""
    session_id = resolve_session(client, args.session)
    client.subscribe(session_id)
    seen: set[str] = set()
    last: tuple[str | None, str, str] = (None, "", "")  # the message last followed, and its texts as shown
    with SigintFlag() as sigint:
        while True:
            snap = client.next_generation(session_id, seen, stop=sigint)
            if snap is None:
                return EXIT_OK
            seen.add(snap.generation_id)
            # a continuation of the reply just shown goes on from its text, under its own heading
            continues = snap.message_id == last[0] and snap.text.startswith(last[1])
            shown = (last[1], last[2]) if continues else ("", "")
            renderer = renderer_for(args)
            if renderer is not None:
                renderer.adopt(snap.stats)
                renderer.heading(f"… continued ({len(last[1])} characters before)" if continues
                                 else f"› {snap.user_text or ''}")
            with renderer or nullcontext():
                def check() -> str | None:
                    if renderer is not None:
                        renderer.tick()
                    return "detach" if sigint.raised else None

                view = client.follow(session_id, snap.generation_id, attach=True, interrupt=check, shown=shown,
                                     **renderer_callbacks(renderer))
                if view.final is None:  # Ctrl+C: stop watching
                    return EXIT_OK
                last = (view.final.get("message_id"), view.text, view.reasoning)
                outcome = outcome_json(session_id, view, snap)
                if args.once:
                    return finish(outcome, view, renderer)
                renderer.finish(outcome, view.final.get("stats"), view.text)


def cmd_gui(args) -> int:
    """The window; its worker thread has its own client."""
    try:
        from clients import gui
    except ImportError as exc:
        raise ChatterError(f"chatter gui needs PySide6, which is not installed ({exc}); make run installs it, or "
                           "pip install -e '.[gui]'") from None
    if args.session is not None:
        with Client() as client:
            args.session = resolve_session(client, args.session)
    return gui.main(args)


def cmd_chat(client: Client, args) -> int:
    from clients.chat import Chat
    return Chat(client, args).run()


def show(args, value, print_text, **extra) -> int:
    """One JSON value with ``--json`` (a result's fields, and ``extra``), else its text form."""
    if args.json:
        plain = [answers.plain(v) for v in value] if isinstance(value, list) else extra | answers.plain(value)
        print(json.dumps(plain, ensure_ascii=False))
    else:
        print_text(value)
    return EXIT_OK


def cmd_keys_new(args) -> int:
    """A CURVE key pair; what to do with each file is said on standard error."""
    from transport import curve
    try:
        public, secret = curve.new_keys(args.name, args.dir)
    except (ValueError, OSError) as exc:
        raise ChatterError(str(exc)) from None
    print(public)
    print(secret)
    print(f"chatter: {secret} is {args.name}'s own (CHATTER_CURVE_SECRET, mode 0600); hand out {public}: "
          + ("every other process and client names it in CHATTER_CURVE_SERVER" if args.name == "coordinator"
             else "put it in the coordinator's CHATTER_CURVE_AUTHORIZED directory"), file=sys.stderr)
    return EXIT_OK


def cmd_sessions(client: Client, args) -> int:
    return show(args, client.sessions(limit=args.limit), print_sessions)


def cmd_status(client: Client, args) -> int:
    session_id = resolve_session(client, args.session) if args.session is not None else None
    return show(args, client.status(session_id), print_status, coordinator="up")


def cmd_history(client: Client, args) -> int:
    return show(args, client.history(resolve_session(client, args.session)),
                lambda history: print_history(history, args.show_thinking))


def cmd_preview(client: Client, args) -> int:
    return show(args, client.preview(args.message_id), print_preview)
