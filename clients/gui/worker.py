"""The window's worker: every socket, on one ``QThread``, with the CLI's own ``Client`` and ``ReplyView`` (the Clone
catch-up, offsets and cancel rule are the library's, written once). The window puts commands in its queue; the
worker answers with Qt signals, and follows a reply to its end unless a command detaches it."""
from __future__ import annotations

import queue
import uuid

import msgspec
from PySide6.QtCore import QObject, Signal

from clients.api import ChatterError, Client, SessionDeleted
from clients.output import outcome_json
from clients.view import ENDED


class Worker(QObject):
    """Runs on its own QThread with its own ``Client``. The window puts commands in ``commands``; the worker
    answers with signals, and follows a reply to its end unless a command detaches it."""

    sessions = Signal(object)  # a list of SessionSummary values (``object``: passed as it is, not converted)
    history = Signal(object)  # a History result
    reply_started = Signal(str, str, str)  # session id, generation id, the user's text
    text = Signal(str, str, int)  # generation id, fresh text, estimated tokens
    thinking = Signal(str, str, int)
    reply_ended = Signal(str, object, object)  # generation id, the outcome (as send --json) and its stats: dicts
    preview = Signal(object)
    settings = Signal(object)  # the settings after a change
    settings_read = Signal(object)  # the settings as they are, for the dialog
    failed = Signal(str)  # a sentence for the banner
    deleted = Signal(object)  # the ids of sessions deleted (here or by another client)
    found = Signal(object)  # a search's hits

    def __init__(self) -> None:
        super().__init__()
        self.commands: queue.Queue = queue.Queue()
        self.later: list = []  # commands that arrived while following a reply

    def run(self) -> None:
        try:
            self.client = Client()
        except ChatterError as exc:
            self.failed.emit(str(exc))
            return
        with self.client:
            while True:
                command = self.later.pop(0) if self.later else self.commands.get()
                if command[0] == "quit":
                    return
                try:
                    getattr(self, "do_" + command[0])(*command[1:])
                except ChatterError as exc:
                    self.failed.emit(str(exc))

    # ------------------------------------------------------------ commands

    def do_refresh(self) -> None:
        self.sessions.emit(self.client.sessions(limit=100))

    def do_new(self, system: str | None) -> None:
        session_id = self.client.new_session(system=system or None)
        self.do_switch(session_id)

    def do_switch(self, session_id: str) -> None:
        self.history.emit(self.client.history(session_id))
        self.client.subscribe(session_id)
        snap = self.client.snapshot(session_id)
        if snap.generation_id and not snap.final and snap.status not in ENDED:  # under way: follow it
            self.follow(session_id, snap.generation_id, snap.user_text or "", snap, attach=True)

    def do_send(self, session_id: str, text: str) -> None:
        self.client.subscribe(session_id)
        started = self.client.send(session_id, text, uuid.uuid4().hex)
        self.follow(session_id, started.generation_id, text, started)

    def do_regenerate(self, session_id: str) -> None:
        """A new reply beside the last: the transcript shows the branch up to its question, then the reply live."""
        self.client.subscribe(session_id)
        started = self.client.regenerate(session_id, uuid.uuid4().hex)
        self.history.emit(self.client.history(session_id))  # the reply under way is left out: it shows live
        self.follow(session_id, started.generation_id, "", started)

    def do_edit(self, session_id: str, message_id: str, text: str) -> None:
        """A message written again: its new branch shown up to it, then its reply live."""
        self.client.subscribe(session_id)
        started = self.client.edit(session_id, message_id, text, uuid.uuid4().hex)
        self.history.emit(self.client.history(session_id))
        self.follow(session_id, started.generation_id, "", started)

    def do_switch_branch(self, session_id: str, message_id: str, sibling: int) -> None:
        self.client.switch(session_id, message_id, sibling)
        self.do_switch(session_id)

    def do_continue(self, session_id: str) -> None:
        """The last reply goes on: the transcript shows it once, as the live reply growing from its text."""
        self.client.subscribe(session_id)
        started = self.client.continue_reply(session_id, uuid.uuid4().hex)
        history = self.client.history(session_id)
        self.history.emit(msgspec.structs.replace(history, messages=[
            msg for msg in history.messages if msg.message_id != started.message_id]))
        self.follow(session_id, started.generation_id, "", started, attach=True)

    def do_preview(self, session_id: str) -> None:
        last = next((msg for msg in reversed(self.client.history(session_id).messages) if msg.role == "assistant"),
                    None)
        if last is None:
            raise ChatterError("no reply yet: the preview is the prompt of a reply")
        self.preview.emit(self.client.preview(last.message_id))

    def do_read_settings(self, session_id: str) -> None:
        self.settings_read.emit(self.client.configure(session_id))  # nothing asked: a read, nothing written

    def do_configure(self, session_id: str, fields: dict) -> None:
        self.settings.emit(self.client.configure(session_id, **fields))

    def do_search(self, query: str) -> None:
        self.found.emit(self.client.search(query, limit=100))

    def do_rename(self, session_id: str, title: str) -> None:
        self.client.rename(session_id, title)
        self.sessions.emit(self.client.sessions(limit=100))

    def do_delete(self, session_ids: list) -> None:
        for session_id in session_ids:
            self.client.unsubscribe(session_id)
        self.deleted.emit(self.client.delete_sessions(list(session_ids)))
        self.sessions.emit(self.client.sessions(limit=100))

    def do_fork(self, session_id: str) -> None:
        forked = self.client.fork(session_id)
        self.sessions.emit(self.client.sessions(limit=100))
        self.do_switch(forked.session_id)

    def do_delete_branch(self, session_id: str, message_id: str) -> None:
        self.client.delete_branch(session_id, message_id)
        self.do_switch(session_id)

    def do_export(self, session_id: str, path: str) -> None:
        from clients import transfer
        from clients.manage import open_private
        text = transfer.chatter_json(self.client.export(session_id))
        try:
            with open_private(path) as out:
                out.write(text + "\n")
        except OSError as exc:
            raise ChatterError(f"cannot write {path}: {exc.strerror}") from None

    def do_import(self, path: str) -> None:
        from clients import transfer
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ChatterError(f"cannot read {path}: {exc.strerror}") from None
        for incoming in transfer.read_file(path, data):  # checked whole first: a malformed file imports nothing
            self.client.import_session(incoming.session, incoming.messages)
        self.sessions.emit(self.client.sessions(limit=100))

    def do_cancel(self) -> None:
        pass  # nothing is streaming

    # ------------------------------------------------------------ following a reply

    def follow(self, session_id: str, generation_id: str, user_text: str, started, attach: bool = False) -> None:
        self.reply_started.emit(session_id, generation_id, user_text)
        self.sessions.emit(self.client.sessions(limit=100))  # the session has a title and a message now

        def interrupt() -> str | None:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return None
            if command[0] == "cancel":
                return "cancel"
            self.later.append(command)  # anything else runs once we leave the reply (streaming on, on the server)
            return "detach"

        try:
            view = self.client.follow(session_id, generation_id, attach=attach, interrupt=interrupt,
                                      on_text=lambda fresh, v: self.text.emit(generation_id, fresh, v.tokens),
                                      on_thinking=lambda fresh, v: self.thinking.emit(generation_id, fresh, v.tokens))
        except SessionDeleted:  # by another client, while the reply streamed
            self.deleted.emit([session_id])
            self.sessions.emit(self.client.sessions(limit=100))
            return
        if view.final is not None:
            outcome = outcome_json(session_id, view, started)
            self.reply_ended.emit(generation_id, outcome, view.final.get("stats") or {})
        self.sessions.emit(self.client.sessions(limit=100))
