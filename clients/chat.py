"""``chatter chat``: an interactive conversation with slash commands.

While a reply streams, input is still read: Ctrl+C or ``/stop`` cancels the reply; any other
slash command (``/switch``, ``/new``, ``/regenerate``, ...) runs at once and leaves the reply
streaming on the server, to be found live or final on coming back.
"""
from __future__ import annotations

import os
import select
import sys
import uuid

from clients.api import ChatterError, Client
from clients.cli import print_history, print_preview, print_sessions, stream_reply, write_out
from clients.output import EXIT_OK, SigintFlag, outcome_json, resolve_session, stats_line

HELP = """commands:
  /new [SYSTEM]      a new session (optionally with a system prompt)
  /sessions          recent sessions
  /switch ID         go to a session (a unique prefix will do); a reply under way there shows live
  /history           this session's messages
  /preview           the exact prompt of the last reply
  /regenerate        answer the last message again (cancels a streaming reply)
  /system [TEXT]     set (or clear) this session's system prompt, from the next reply on
  /budget N          this session's input budget in tokens (0: the default)
  /stop              stop the streaming reply (Ctrl+C does too)
  /help, /quit       this text; leave (Ctrl+D does too)"""


class LineReader:
    """Lines from stdin without blocking the reply: select on the descriptor, split on newlines."""

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


class Chat:
    def __init__(self, client: Client, args) -> None:
        self.client = client
        self.model = args.model
        self.reader = LineReader()
        self.pending: str | None = None  # a command typed while a reply streamed
        if args.session:
            self.session_id = resolve_session(client, args.session)
        else:
            self.session_id = client.new_session(system=args.system, model=args.model,
                                                 max_input_tokens=args.max_input_tokens)

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def run(self) -> int:
        self.say(f"session {self.session_id} — /help for commands, Ctrl+C stops a reply, Ctrl+D quits")
        while True:
            line = self.pending
            self.pending = None
            if line is None:
                write_out("› ")
                with SigintFlag() as sigint:
                    line = self.reader.readline()
                if sigint.raised and not line:
                    continue
                if line is None:
                    self.say("")
                    return EXIT_OK
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if self.command(line) == "quit":
                        return EXIT_OK
                else:
                    self.turn(lambda: self.client.send(self.session_id, line, uuid.uuid4().hex, self.model))
            except ChatterError as exc:
                self.say(f"error: {exc}")

    def while_streaming(self) -> str | None:
        """Polled by the follow loop: /stop cancels, another command detaches and runs next."""
        line = self.reader.poll()
        if line is None:
            return "detach" if self.reader.eof else None
        line = line.strip()
        if line == "/stop":
            return "cancel"
        if line.startswith("/"):
            self.pending = line
            return "detach"
        if line:
            self.say("(a reply is streaming: wait, /stop it, or /switch away; your text was not sent)")
        return None

    def turn(self, start) -> None:
        outcome, view = stream_reply(self.client, self.session_id, start, render=True, interrupt=self.while_streaming)
        self.report(outcome, view)

    def report(self, outcome: dict, view) -> None:
        if view.final is None:
            self.say(f"(the reply goes on in session {self.session_id}; /switch back to see it)")
        else:
            self.say(stats_line(outcome, view.final.get("stats")))

    def catch_up(self) -> None:
        """Show the session's reply under way live, or its last reply as final."""
        self.client.subscribe(self.session_id)
        snap = self.client.snapshot(self.session_id)
        if snap["generation_id"] is None:
            return
        self.say(f"› {snap.get('user_text') or ''}")
        with SigintFlag() as sigint:
            def check():
                return "cancel" if sigint.raised else self.while_streaming()
            view = self.client.follow(self.session_id, snap["generation_id"], attach=True, on_text=write_out,
                                      interrupt=check)
        write_out("\n")
        self.report(outcome_json(self.session_id, view, snap), view)

    def command(self, line: str) -> str | None:
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        client = self.client
        if name in ("/quit", "/exit"):
            return "quit"
        if name == "/help":
            self.say(HELP)
        elif name == "/new":
            self.client.unsubscribe(self.session_id)
            self.session_id = client.new_session(system=rest or None, model=self.model)
            self.say(f"session {self.session_id}")
        elif name == "/sessions":
            print_sessions(client.sessions())
        elif name == "/switch":
            if not rest:
                raise ChatterError("/switch needs a session id")
            target = resolve_session(client, rest)
            self.client.unsubscribe(self.session_id)
            self.session_id = target
            self.say(f"session {self.session_id}")
            self.catch_up()
        elif name == "/history":
            print_history(client.history(self.session_id))
        elif name == "/preview":
            last = next((m for m in reversed(client.history(self.session_id)["messages"])
                         if m["role"] == "assistant"), None)
            if last is None:
                raise ChatterError("no reply yet")
            print_preview(client.preview(last["message_id"]))
        elif name == "/regenerate":
            request_id = uuid.uuid4().hex
            self.turn(lambda: client.regenerate(self.session_id, request_id))
        elif name == "/system":
            client.configure(self.session_id, system=rest)
            self.say("system prompt " + ("set" if rest else "cleared") + ", from the next reply on")
        elif name == "/budget":
            try:
                budget = int(rest)
            except ValueError:
                raise ChatterError("/budget needs a number of tokens") from None
            done = client.configure(self.session_id, max_input_tokens=budget)
            self.say(f"input budget {done['max_input_tokens']} tokens")
        elif name == "/stop":
            self.say("nothing is streaming")
        else:
            raise ChatterError(f"unknown command {name}; /help lists them")
        return None
