"""``chatter chat``: an interactive conversation.

On a terminal, input comes from prompt_toolkit (history kept across runs, Alt+Enter or Esc Enter for
a new line, Tab completes commands) and replies render as live Markdown with a stats bar. Input is
still read while a reply streams: Ctrl+C or ``/stop`` cancels the reply; any other command (``/switch``,
``/new``, ``/regenerate``, ...) runs at once and leaves the reply streaming on the server, to be found
live or final on coming back. Piped input works line by line, with plain output.
"""
from __future__ import annotations

import os
import re
import select
import sys
import termios
import tty
import uuid
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from clients import chat_sessions
from clients.api import ChatterError, Client
from clients.show import print_history, print_preview, print_sessions, stream_reply
from clients.output import EXIT_OK, resolve_session
from clients.render import ReplyRenderer

COMMANDS = {
    "/help": "this list",
    "/new": "/new [SYSTEM] — a new session, optionally with a system prompt",
    "/sessions": "recent sessions",
    "/switch": "/switch ID — go to a session (a unique prefix will do); a reply under way there shows live",
    "/history": "this session's messages",
    "/search": "/search QUERY — the messages of every session that hold its words, \"phrases\" and prefix*",
    "/rename": "/rename TITLE — give this session a title (kept from then on); /rename alone gives back the "
               "automatic one",
    "/delete": "/delete [N] — delete this session with every message (asked first), and start a new one; with N, "
               "message N and every message after it on any branch",
    "/edit": "/edit N [TEXT] — write your message N again (TEXT, or the next line): a new branch, and its reply",
    "/branch": "/branch [N [K]] — the session's tree; with N, the branch through message N; with K, its K-th "
               "version",
    "/fork": "/fork [N] — a new session holding this branch (up to message N), and go there",
    "/preview": "the exact prompt of the last reply, and what was left out to fit the budget",
    "/regenerate": "answer the last message again (cancels a streaming reply)",
    "/continue": "continue the last reply where it was cut (length limit, stop, error): the same reply grows",
    "/system": "/system [TEXT] — set (or clear) this session's system prompt, from the next reply on",
    "/config": "/config [model=M] [temperature=T] [max_tokens=N] [stream=on|off] [continue_style=S] — this "
               "session's settings, applied from the next reply on; 'default' unsets one",
    "/budget": "/budget N — this session's input budget in tokens (0: the default)",
    "/tokens": "context use: ~tokens of the history against the input budget",
    "/status": "the coordinator, generators, active replies and counters",
    "/stop": "stop the streaming reply (Ctrl+C does too)",
    "/think": "show a reasoning model's thinking in full, or (again) fold it to its newest lines",
    "/quit": "leave (Ctrl+D does too)",
}


# commands that leave the session: a reply under way in it goes on there, unseen until /switch brings it back
SWITCHING = {"/new", "/switch", "/fork", "/delete", "/quit"}


def history_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    path = Path(base) / "chatter" / "history"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # what was typed is the conversation: private to its user, as the database is
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)
    return path


class LineReader:
    """Lines from piped stdin without blocking a reply: select on the descriptor, split on newlines."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.buffer = b""
        self.eof = False

    def poll(self) -> str | None:
        while b"\n" not in self.buffer and not self.eof and select.select([self.fd], [], [], 0)[0]:
            self._fill()
        return self._take()

    def readline(self) -> str | None:
        while b"\n" not in self.buffer and not self.eof:
            self._fill()
        return self._take()

    def _fill(self) -> None:
        data = os.read(self.fd, 65536)
        self.eof = not data
        self.buffer += data

    def _take(self) -> str | None:
        if b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
        elif self.eof and self.buffer:
            line, self.buffer = self.buffer, b""
        else:
            return None
        return line.decode("utf-8", errors="replace").rstrip("\r")


class TypedLine:
    """The line typed on a raw terminal while a reply streams: printable characters and backspace. An escape
    sequence (an arrow or function key: ``ESC [ ... final``, ``ESC O x``) is dropped whole, never typed."""

    def __init__(self) -> None:
        self.text = ""
        self.escape = ""  # an escape sequence under way

    def feed(self, data: str) -> list[str]:
        """Apply typed characters; returns the lines they finished."""
        done = []
        for ch in data:
            if self.escape:
                self.escape += ch
                if _escape_ended(self.escape):
                    self.escape = ""
            elif ch == "\x1b":
                self.escape = ch
            elif ch in "\r\n":
                done.append(self.text)
                self.text = ""
            elif ch in "\x7f\b":
                self.text = self.text[:-1]
            elif ch >= " ":
                self.text += ch
        return done


def _escape_ended(seq: str) -> bool:
    if len(seq) == 2:
        return seq[1] not in "[O"  # ESC x: a two-character sequence (Alt+x)
    if seq[1] == "O":
        return True  # SS3: ESC O x
    return "\x40" <= seq[-1] <= "\x7e"  # CSI: parameters and intermediates, then one final byte


class KeyReader:
    """Keys typed on the terminal while a reply streams, without echo (the stats bar shows them)."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.line = TypedLine()
        self.finished: list[str] = []
        self.saved = None

    @property
    def typed(self) -> str:
        return self.line.text

    def __enter__(self) -> KeyReader:
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)  # Ctrl+C still raises SIGINT
        attrs = termios.tcgetattr(self.fd)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        return self

    def __exit__(self, *exc) -> None:
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def poll(self) -> str | None:
        """A finished line, or None; the line being typed is in ``typed``."""
        while not self.finished and select.select([self.fd], [], [], 0)[0]:
            self.finished += self.line.feed(os.read(self.fd, 1024).decode("utf-8", errors="replace"))
        return self.finished.pop(0) if self.finished else None


class Chat:
    def __init__(self, client: Client, args) -> None:
        self.client = client
        self.model = args.model
        self.show_thinking = getattr(args, "show_thinking", False)
        self.terminal = sys.stdin.isatty() and sys.stdout.isatty()
        self.console = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)
        self.pending: str | None = None  # a command typed while a reply streamed
        self.left_reply: str | None = None  # the session whose reply streaming was left to run that command
        self.lines = None if self.terminal else LineReader()
        self.prompt = self._prompt_session() if self.terminal else None
        if args.session is not None:
            self.session_id = resolve_session(client, args.session)
        else:
            self.session_id = client.new_session(system=args.system, model=args.model,
                                                 max_input_tokens=args.max_input_tokens)

    # ------------------------------------------------------------ input

    def _prompt_session(self):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.completion import WordCompleter
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.key_binding import KeyBindings

        keys = KeyBindings()

        @keys.add("escape", "enter")  # Alt+Enter, or Esc then Enter: a new line instead of sending
        def _newline(event) -> None:
            event.current_buffer.insert_text("\n")

        completer = WordCompleter(list(COMMANDS), sentence=True, meta_dict=COMMANDS,
                                  pattern=re.compile(r"^(/\w*)"))
        return PromptSession(history=FileHistory(str(history_path())), completer=completer, key_bindings=keys,
                             complete_while_typing=False)

    def read_input(self) -> str | None:
        """The next message or command; None at the end (Ctrl+D). Ctrl+C at the prompt clears it."""
        if self.prompt is not None:
            while True:
                try:
                    return self.prompt.prompt("› ")
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    return None
        sys.stdout.write("› ")
        sys.stdout.flush()
        return self.lines.readline()

    def say(self, text: str, style: str = "dim") -> None:
        self.err.print(text, style=style, markup=False, highlight=False)

    def error(self, text: str) -> None:
        self.err.print(f"error: {text}", style="bold red", markup=False, highlight=False)

    # ------------------------------------------------------------ loop

    def run(self) -> int:
        self.say(f"session {self.session_id} — /help for commands, Ctrl+C stops a reply, Ctrl+D quits")
        while True:
            line, self.pending = self.pending, None
            if line is None:
                line = self.read_input()
                if line is None:
                    return EXIT_OK
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    left = self.left_reply
                    self.left_reply = None
                    if self.command(line) == "quit":
                        return EXIT_OK
                    if left == self.session_id:  # the command left the reply under way here: it shows again
                        self.catch_up()
                else:
                    text = line
                    self.turn(lambda: self.client.send(self.session_id, text, uuid.uuid4().hex, self.model))
            except ChatterError as exc:
                self.error(str(exc))

    def turn(self, start, attach: bool = False, stats: dict | None = None) -> None:
        renderer = ReplyRenderer(self.console, plain=not self.terminal, show_thinking=self.show_thinking)
        if stats:
            renderer.adopt(stats)
        keys = KeyReader() if self.terminal else None
        with renderer, (keys or nullcontext()):
            def while_streaming() -> str | None:
                """/stop cancels; another command detaches and runs next; text is not sent mid-reply."""
                line = keys.poll() if keys else self.lines.poll()
                if keys:
                    renderer.note = keys.typed
                if line is None:
                    return "detach" if self.lines is not None and self.lines.eof else None
                line = line.strip()
                if line == "/stop":
                    return "cancel"
                if line == "/think":  # the reply under way shows its thinking from now on, or folds it
                    self.toggle_thinking()
                    renderer.show_thinking = self.show_thinking
                    return None
                if line.startswith("/"):
                    self.pending = line
                    return "detach"
                if line:
                    renderer.note = "(a reply is streaming: wait, /stop it, or /switch away; that was not sent)"
                return None

            outcome, view = stream_reply(self.client, self.session_id, start, renderer=renderer,
                                         interrupt=while_streaming, attach=attach)
            renderer.note = ""
            if view.final is None:
                command = (self.pending or "").split(maxsplit=1)  # none: the input ended, and the chat with it
                switching = not command or command[0] in SWITCHING
                renderer.detached(self.session_id, switching)
                self.left_reply = None if switching else self.session_id
            else:
                renderer.finish(outcome, view.final.get("stats"), view.text)

    def catch_up(self) -> None:
        """Show the session's reply under way live, or its last reply as final."""
        self.client.subscribe(self.session_id)
        snap = self.client.snapshot(self.session_id)
        if snap.generation_id is None:
            return
        self.say(f"› {snap.user_text or ''}", style="bold")
        self.turn(lambda: snap, attach=True, stats=snap.stats)  # from the snapshot: what it has, then live

    # ------------------------------------------------------------ commands

    def command(self, line: str) -> str | None:
        """Run one /command; returns "quit" to leave."""
        name, _, rest = line.partition(" ")
        handler = Chat.COMMAND_HANDLERS.get(name)
        if handler is None:
            raise ChatterError(f"unknown command {name}; /help lists them")
        return handler(self, rest.strip())

    def show_help(self, rest: str) -> None:
        table = Table(show_header=False, box=None)
        for command, text in COMMANDS.items():  # escaped: rich read "[model=M]" as markup and dropped it
            table.add_row(escape(command), escape(text))
        self.err.print(table)

    def new_session(self, rest: str) -> None:
        self.client.unsubscribe(self.session_id)
        self.session_id = self.client.new_session(system=rest or None, model=self.model)
        self.say(f"session {self.session_id}")

    def switch(self, rest: str) -> None:
        if not rest:
            raise ChatterError("/switch needs a session id")
        target = resolve_session(self.client, rest)
        self.client.unsubscribe(self.session_id)
        self.session_id = target
        self.say(f"session {self.session_id}")
        self.catch_up()

    def preview(self, rest: str) -> None:
        last = next((m for m in reversed(self.client.history(self.session_id).messages)
                     if m.role == "assistant"), None)
        if last is None:
            raise ChatterError("no reply yet")
        print_preview(self.client.preview(last.message_id))

    def toggle_thinking(self) -> None:
        self.show_thinking = not self.show_thinking
        self.say("thinking: shown in full" if self.show_thinking else "thinking: folded to its newest lines")

    def regenerate(self, rest: str) -> None:
        request_id = uuid.uuid4().hex
        self.turn(lambda: self.client.regenerate(self.session_id, request_id))

    def continue_reply(self, rest: str) -> None:
        request_id = uuid.uuid4().hex
        self.turn(lambda: self.client.continue_reply(self.session_id, request_id), attach=True)

    def set_system(self, rest: str) -> None:
        self.client.configure(self.session_id, system=rest)
        self.say("system prompt " + ("set" if rest else "cleared") + ", from the next reply on")

    def set_budget(self, rest: str) -> None:
        try:
            budget = int(rest)
        except ValueError:
            raise ChatterError("/budget needs a number of tokens") from None
        done = self.client.configure(self.session_id, max_input_tokens=budget)
        self.say(f"input budget {done.max_input_tokens} tokens")

    def show_tokens(self, rest: str) -> None:
        ctx = self.client.status(self.session_id).context
        self.say(f"context ~{ctx.history_tokens}/{ctx.max_input_tokens} tokens (the oldest turns are "
                 f"left out when the history does not fit)")

    def show_status(self, rest: str) -> None:
        status = self.client.status()
        gens = ", ".join(f"{g.generator_id} ({g.capacity_free} free)" for g in status.generators)
        self.say(f"coordinator up; generators: {gens or 'none'}; active replies: {len(status.active)}; "
                 + ", ".join(f"{k}={v}" for k, v in sorted(status.counters.items())))

    def configure(self, rest: str) -> None:
        """/config key=value ...: model, temperature, max_tokens, stream; 'default' unsets one."""
        model, params = None, {}
        for pair in rest.split():
            key, _, value = pair.partition("=")
            if not value:
                raise ChatterError(f"/config takes key=value pairs, got {pair!r}")
            unset = value == "default"
            try:
                if key == "model":
                    model = "" if unset else value
                elif key == "temperature":
                    params[key] = None if unset else float(value)
                elif key == "max_tokens":
                    params[key] = None if unset else int(value)
                elif key == "stream":
                    params[key] = None if unset else {"on": True, "true": True, "off": False,
                                                      "false": False}[value.lower()]
                elif key == "continue_style":
                    params[key] = None if unset else value.lower()
                else:
                    raise ChatterError(f"unknown setting {key}: model, temperature, max_tokens, stream or "
                                       "continue_style")
            except (ValueError, KeyError):
                raise ChatterError(f"bad value for {key}: {value}") from None
        done = self.client.configure(self.session_id, model=model, params=params or None)
        self.model = None  # the session's model now decides
        stream = {True: "on", False: "off", None: "default"}[done.stream]
        self.say(f"model {done.model}, temperature {done.params.get('temperature', 'default')}, max_tokens "
                 f"{done.params.get('max_tokens', 'default')}, stream {stream}, input budget "
                 f"{done.max_input_tokens}, continue style {done.continue_style or 'default'} — from the next "
                 "reply on")

    # ------------------------------------------------------------ the commands, one line each (help in COMMANDS)
    COMMAND_HANDLERS = {
        "/help": show_help,
        "/new": new_session,
        "/sessions": lambda self, rest: print_sessions(self.client.sessions()),
        "/switch": switch,
        "/history": lambda self, rest: print_history(self.client.history(self.session_id), self.show_thinking),
        "/preview": preview,
        "/search": chat_sessions.search,
        "/rename": chat_sessions.rename,
        "/delete": chat_sessions.delete,
        "/edit": chat_sessions.edit,
        "/branch": chat_sessions.branch,
        "/fork": chat_sessions.fork,
        "/regenerate": regenerate,
        "/continue": continue_reply,
        "/system": set_system,
        "/config": lambda self, rest: self.configure(rest),
        "/budget": set_budget,
        "/tokens": show_tokens,
        "/status": show_status,
        "/stop": lambda self, rest: self.say("nothing is streaming"),
        "/think": lambda self, rest: self.toggle_thinking(),
        "/quit": lambda self, rest: "quit",
        "/exit": lambda self, rest: "quit",
    }
