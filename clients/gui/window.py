"""The window: its widgets and what they show, on the GUI thread alone. What it asks of Chatter goes to the worker
(``worker.py``) as commands; what comes back arrives as Qt signals. Repaints are coalesced: text is gathered as it
arrives and drawn at most ``REPAINTS_PER_S`` times a second; finished Markdown blocks go into the transcript once,
and only the block being written is drawn again, in place at the transcript's end. The controls follow the state:
Stop only while a reply streams, Regenerate once there is a reply, Continue when the last reply was cut."""
from __future__ import annotations

import html
import os
import sys
import time

from PySide6.QtCore import QSettings, QThread, QTimer, Qt
from PySide6.QtGui import QDesktopServices, QKeySequence, QShortcut
from PySide6.QtWidgets import (QDialog, QHBoxLayout, QInputDialog, QLabel, QLineEdit, QMainWindow, QMessageBox,
                               QPlainTextEdit, QPushButton, QSplitter, QVBoxLayout, QWidget)

from clients.gui.dialogs import SettingsDialog, preview_dialog, text_dialog
from clients.gui.markup import branch_arrows, stats_html, to_html, tool_call_html, user_bubble_html, user_message_html
from clients.gui.sessions import SessionList
from clients.gui.transcript import Transcript
from clients.gui.worker import Worker
from clients.render import final_stats_line, live_stats_line, split_finished, stored_stats_line

REPAINTS_PER_S = 30
THINKING_LINES = 4


class Window(QMainWindow):
    def __init__(self, session_id: str | None = None, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug or os.environ.get("CHATTER_GUI_DEBUG") == "1"
        self.thread_violations: list[str] = []
        self.repaints = 0  # redraws of the block being written (the coalesced repaints)
        self.stats_seen: list[str] = []  # the first line of each state the stats bar went through, in order
        self._stats_state: str | None = None
        self.session_id = session_id
        self.generation_id: str | None = None
        self.tail = ""  # the reply's block being written (Markdown), not yet in the transcript
        self.thought = ""
        self.dirty = False
        self.reply_t0 = self.first_token_at = self.thinking_at = self.thought_s = None
        self.tokens = 0
        self.last_outcome: dict | None = None
        self.shown_parts: dict[str, list[str]] = {}  # generation id -> its text as shown, as parts (``shown``)
        self.thoughts: dict[str, str] = {}  # a "Thought for …" link's key -> the thinking it opens
        self.user_texts: dict[str, str] = {}  # the shown branch's user messages: id -> text (what Edit starts from)
        self.live_shown = ""  # what the last repaint drew there (for tests)
        self.last_reply: dict | None = None  # the shown branch's last reply: its status and finish reason
        self.buttons: dict[str, QPushButton] = {}
        self.on_reply_end = None  # scripted mode's hook: (outcome) -> None
        self.send_when_open: str | None = None  # scripted mode's message, sent once a session is open
        self.on_repaint = None  # scripted mode's hook, after each coalesced repaint
        self._build()
        self.worker_thread = QThread()
        self.worker = Worker()
        self.worker.moveToThread(self.worker_thread)
        self.worker_thread.started.connect(self.worker.run)
        for signal, slot in ((self.worker.sessions, self.show_sessions), (self.worker.history, self.show_history),
                             (self.worker.reply_started, self.reply_started), (self.worker.text, self.add_text),
                             (self.worker.thinking, self.add_thinking), (self.worker.reply_ended, self.reply_ended),
                             (self.worker.preview, self.show_preview), (self.worker.settings, self.show_settings),
                             (self.worker.failed, self.show_error), (self.worker.deleted, self.sessions_deleted),
                             (self.worker.settings_read, self.show_settings_dialog),
                             (self.worker.found, self.show_hits)):
            signal.connect(slot, Qt.QueuedConnection)
        self.timer = QTimer(self)
        self.timer.setInterval(-(-1000 // REPAINTS_PER_S))  # at most REPAINTS_PER_S a second
        self.timer.timeout.connect(self.repaint_reply)
        self.timer.start()
        self.worker_thread.start()
        self.ask("refresh")
        if session_id:
            self.ask("switch", session_id)

    def _build(self) -> None:
        self.setWindowTitle("Chatter")
        self.resize(1000, 700)
        self.sessions_list = SessionList()
        self.sessions_list.opened.connect(self.switch)
        self.sessions_list.renamed.connect(self.rename_session)
        self.sessions_list.deleted.connect(self.delete_sessions)
        self.sessions_list.forked.connect(lambda session_id: self.ask("fork", session_id))
        self.sessions_list.exported.connect(lambda session_id, path: self.ask("export", session_id, path))
        self.sessions_list.imported.connect(lambda path: self.ask("import", path))
        new = QPushButton("New session")
        new.clicked.connect(self.new_session)
        self.system_edit = QLineEdit()
        self.system_edit.setPlaceholderText("system prompt of a new session (optional)")
        side = QWidget()
        side_layout = QVBoxLayout(side)
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search messages (Ctrl+K): words, \"a phrase\", prefix*")
        self.search_edit.setClearButtonEnabled(True)
        self.search_edit.returnPressed.connect(lambda: self.search(self.search_edit.text()))
        QShortcut(QKeySequence("Ctrl+K"), self, activated=self.search_edit.setFocus)
        side_layout.addWidget(self.system_edit)
        side_layout.addWidget(new)
        side_layout.addWidget(self.search_edit)
        side_layout.addWidget(self.sessions_list)
        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background: #fde2e1; color: #8a1c1c; padding: 6px;")
        self.banner.hide()
        self.transcript = Transcript()
        self.transcript.setOpenLinks(False)  # a thought's link opens it here; other links, in the browser
        self.transcript.anchorClicked.connect(self.open_link)
        self.stats = QLabel("")
        self.stats.setStyleSheet("color: #666;")
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("Message (Enter sends, Shift+Enter for a new line)")
        self.input.setFixedHeight(80)
        self.input.installEventFilter(self)
        buttons = QHBoxLayout()
        for label, slot in (("Send", self.send), ("Stop", self.stop), ("Regenerate", self.regenerate),
                            ("Continue", self.continue_reply), ("Preview", self.preview),
                            ("Settings", self.edit_settings)):
            button = QPushButton(label)
            button.clicked.connect(slot)
            buttons.addWidget(button)
            self.buttons[label] = button
        QShortcut(QKeySequence(Qt.Key_Escape), self, activated=self.stop)
        main = QWidget()
        layout = QVBoxLayout(main)
        for widget in (self.banner, self.transcript, self.stats, self.input):
            layout.addWidget(widget)
        layout.addLayout(buttons)
        self.splitter = QSplitter()
        self.splitter.addWidget(side)
        self.splitter.addWidget(main)
        self.splitter.setSizes([260, 740])
        self.setCentralWidget(self.splitter)
        remembered = window_state()  # the size, place and splitter of the last run
        if remembered.value("geometry") is not None:
            self.restoreGeometry(remembered.value("geometry"))
        if remembered.value("splitter") is not None:
            self.splitter.restoreState(remembered.value("splitter"))
        self.update_controls()

    def eventFilter(self, obj, event) -> bool:
        if obj is self.input and event.type() == event.Type.KeyPress and event.key() in (Qt.Key_Return, Qt.Key_Enter):
            if not event.modifiers() & Qt.ShiftModifier:
                self.send()
                return True
        return super().eventFilter(obj, event)

    def _on_gui_thread(self) -> None:
        """Debug mode: every method that touches a widget says so; one called off the GUI thread is recorded."""
        if self.debug and QThread.currentThread() is not self.thread():
            self.thread_violations.append(sys._getframe(1).f_code.co_name)

    def ask(self, *command) -> None:
        self.worker.commands.put(command)

    # ------------------------------------------------------------ actions

    def new_session(self) -> None:
        self.ask("new", self.system_edit.text().strip() or None)

    def switch(self, session_id: str) -> None:
        self.session_id = session_id
        self.ask("switch", session_id)

    def search(self, query: str) -> None:
        """Hits in the session list for a query; an empty one lists the sessions again."""
        if query.strip():
            self.ask("search", query.strip())
        else:
            self.ask("refresh")

    def show_hits(self, hits: list) -> None:
        self._on_gui_thread()
        self.sessions_list.show_hits(hits)

    def rename_session(self, session_id: str, title: str) -> None:
        self.ask("rename", session_id, title)

    def delete_sessions(self, session_ids: list[str]) -> None:
        self.ask("delete", session_ids)

    def sessions_deleted(self, session_ids: list) -> None:
        """Sessions deleted (here, or by another client while this window followed one): the one open is closed."""
        self._on_gui_thread()
        if self.session_id in session_ids:
            gone = self.session_id
            self.session_id, self.generation_id, self.tail, self.thought = None, None, "", ""
            self.transcript.clear()
            self.last_reply = None
            self._show_stats("")
            self.update_controls()
            self.show_error(f"session {gone} was deleted")

    def send(self, text: str | None = None) -> None:
        self._on_gui_thread()
        text = text if isinstance(text, str) else self.input.toPlainText()
        if not text.strip():
            return
        if self.session_id is None:
            self.show_error("pick a session, or make a new one, first")
            return
        if self.generation_id is not None:  # Enter while a reply streams: the text stays in the box
            self.show_error("a reply is streaming: wait for it, or Stop it, then send")
            return
        self.input.clear()
        self.ask("send", self.session_id, text)

    def stop(self) -> None:
        self.ask("cancel")

    def regenerate(self) -> None:
        if self.session_id:
            self.ask("regenerate", self.session_id)

    def continue_reply(self) -> None:
        if self.session_id:
            self.ask("continue", self.session_id)

    def preview(self) -> None:
        if self.session_id:
            self.ask("preview", self.session_id)

    def edit_settings(self) -> None:
        """The session's settings as they are now (asked of Chatter first), in a dialog; only what is changed there
        is sent (``show_settings``)."""
        if self.session_id is not None:
            self.ask("read_settings", self.session_id)

    def show_settings_dialog(self, settings) -> None:
        self._on_gui_thread()
        if settings.session_id != self.session_id:
            return
        dialog = SettingsDialog(self, settings)

        def done(result: int) -> None:
            if result != QDialog.Accepted:
                return
            try:
                update = dialog.update()
            except ValueError as exc:
                self.show_error(f"bad setting: {exc}")
                return
            if update:
                self.ask("configure", settings.session_id, update)

        dialog.finished.connect(done)
        dialog.open()

    def update_controls(self) -> None:
        """Each control enabled only when it can act: Stop while a reply streams; Send, Regenerate, Continue, Preview
        and Settings in a session, and only when no reply streams; Regenerate and Preview once there is a reply;
        Continue when the last reply was cut (stopped, failed, interrupted, or at the length limit)."""
        streaming = self.generation_id is not None
        last = self.last_reply
        cut = last is not None and (last["status"] in ("cancelled", "error", "interrupted") or (
            last["status"] == "completed" and last.get("finish_reason") == "length"))
        idle = self.session_id is not None and not streaming
        for label, on in (("Stop", streaming), ("Send", idle), ("Regenerate", idle and last is not None),
                          ("Continue", idle and cut), ("Preview", idle and last is not None), ("Settings", idle)):
            self.buttons[label].setEnabled(on)

    # ------------------------------------------------------------ what the worker says

    def show_sessions(self, rows: list) -> None:
        self._on_gui_thread()
        self.sessions_list.show_rows(rows)

    def show_history(self, history) -> None:
        self._on_gui_thread()
        self.session_id = history.session_id
        self.setWindowTitle(f"Chatter — {history.title or history.session_id}")
        self.generation_id, self.tail, self.thought, self.last_reply = None, "", "", None
        parts = [f"<p style='color:#666'>[system] {html.escape(history.system)}</p>"] if history.system else []
        self.user_texts = {msg.message_id: msg.content for msg in history.messages if msg.role == "user"}
        for msg in history.messages:
            if msg.role == "user":
                parts.append(user_message_html(msg))
            elif msg.role == "tool":
                parts.append(f"<p style='color:#666'>← {html.escape(msg.tool_call_id or '')}: "
                             f"{html.escape(msg.content)}</p>")
            elif msg.generation_id and msg.status in ("queued", "streaming"):
                continue  # under way: it shows live
            else:
                if msg.sibling_count > 1:
                    parts.append(f"<p>{branch_arrows(msg)}</p>")
                if msg.reasoning.strip():  # a think block of whitespace alone is no thinking
                    seconds = (msg.stats or {}).get("thinking_ms")
                    parts.append(self._thought_link(msg.message_id, msg.reasoning,
                                                    f"{seconds / 1000:.1f} s" if seconds is not None else None))
                parts.append(to_html(msg.content))
                parts += [tool_call_html(call) for call in msg.tool_calls]
                parts.append(stats_html(stored_stats_line(msg)))  # its own stats, stored with it
                self.last_reply = {"status": msg.status, "finish_reason": (msg.stats or {}).get("finish_reason")}
        self.transcript.setHtml("".join(parts))
        self.stats.setText(stored_stats_line(history.messages[-1]) if history.messages
                           and history.messages[-1].role == "assistant" and history.messages[-1].status not in
                           ("queued", "streaming") else "")
        self.update_controls()
        if self.send_when_open:
            text, self.send_when_open = self.send_when_open, None
            self.send(text)

    def reply_started(self, session_id: str, generation_id: str, user_text: str) -> None:
        self._on_gui_thread()
        self.banner.hide()
        if user_text:
            self.transcript.append_block(user_bubble_html(user_text))
        self.generation_id, self.tail, self.thought, self.tokens = generation_id, "", "", 0
        self.update_controls()
        self.shown_parts[generation_id] = []  # a follow (again, after a switch) delivers the whole text from the start
        self.reply_t0, self.first_token_at, self.thinking_at, self.thought_s = time.monotonic(), None, None, None
        self.dirty = True

    def add_text(self, generation_id: str, fresh: str, tokens: int) -> None:
        now = self._arrived(generation_id, tokens)
        if now is None:
            return
        if self.thinking_at is not None and self.thought_s is None:
            self.thought_s = now - self.thinking_at
        self.tail += fresh  # cut at every repaint to the block being written: it stays short
        self.shown_parts[generation_id].append(fresh)

    def add_thinking(self, generation_id: str, fresh: str, tokens: int) -> None:
        now = self._arrived(generation_id, tokens)
        if now is not None:
            self.thought += fresh
            if self.thought.strip():  # a think block of whitespace alone is no thinking
                self.thinking_at = self.thinking_at or now

    def _arrived(self, generation_id: str, tokens: int) -> float | None:
        """Text of the reply being shown arrived (of either kind): its clock, else None (another reply's)."""
        if generation_id != self.generation_id:
            return None
        now = time.monotonic()
        self.first_token_at = self.first_token_at or now
        self.tokens, self.dirty = tokens, True
        return now

    @property
    def shown(self) -> dict[str, str]:
        """generation id -> the reply's text as it was shown (for tests)."""
        return {gen_id: "".join(parts) for gen_id, parts in self.shown_parts.items()}

    def repaint_reply(self) -> None:
        """The coalesced repaint: finished blocks into the transcript once, the block being written redrawn in place
        at its end."""
        self._on_gui_thread()
        if self.generation_id is None:
            return
        if self.dirty:
            self.dirty = False
            self.repaints += 1
            self.transcript.draw_live("")
            if self.thought_s is not None and self.thought:
                self.transcript.append_block(self._thought_link(self.generation_id, self.thought, f"{self.thought_s:.1f} s"))
                self.thought = ""
            cut = split_finished(self.tail)
            if cut:
                self.transcript.append_block(to_html(self.tail[:cut]))
                self.tail = self.tail[cut:]
            if self.thinking_at is not None and self.thought_s is None:
                newest = "\n".join(self.thought.split("\n")[-THINKING_LINES:])
                self.transcript.draw_live(f"<p><i style='color:#888'>{html.escape(newest)}</i></p>")
            else:
                self.transcript.draw_live(to_html(self.tail))
                self.live_shown = self.tail
            self.transcript.to_bottom()
        line = live_stats_line(self.tokens, self.reply_t0, self.first_token_at, self.thinking_at, self.thought_s,
                               time.monotonic())
        self._show_stats(line)
        if self.on_repaint is not None:
            self.on_repaint()

    def _thought_link(self, key: str, thinking: str, took: str | None) -> str:
        """The thinking folded to one line above its answer; a click opens it."""
        self.thoughts[key] = thinking
        label = f"▸ Thought for {took}" if took else f"▸ Thought ({len(thinking)} characters)"
        return f"<p><a href='thought:{html.escape(key)}' style='color:#888'><i>{label}</i></a></p>"

    def open_link(self, url) -> None:
        self._on_gui_thread()
        if url.scheme() == "branch":  # < 2/3 >: the branch through another version of a message
            message_id, _, sibling = url.path().partition("/")
            self.ask("switch_branch", self.session_id, message_id, int(sibling))
            return
        if url.scheme() == "edit":
            self.edit_message(url.path())
            return
        if url.scheme() == "drop":  # this message and every message after it, on every branch
            answer = QMessageBox.question(self, "Delete", "Delete this message and every message after it, on every "
                                          "branch? Their text is gone from the database; this cannot be undone.",
                                          QMessageBox.Yes | QMessageBox.Cancel, QMessageBox.Cancel)
            if answer == QMessageBox.Yes and self.session_id:
                self.ask("delete_branch", self.session_id, url.path())
            return
        if url.scheme() != "thought":
            QDesktopServices.openUrl(url)
            return
        text_dialog(self, "Thinking", self.thoughts.get(url.path(), "")).show()

    def edit_message(self, message_id: str) -> None:
        """Your message written again: a new branch beside the old one (kept whole), and its reply."""
        text, ok = QInputDialog.getMultiLineText(self, "Edit message", "Your message, written again (a new branch; "
                                                 "the old one is kept):", self.user_texts.get(message_id, ""))
        if ok and text.strip() and self.session_id:
            self.ask("edit", self.session_id, message_id, text)

    def _show_stats(self, line: str, final: bool = False) -> None:
        """Show a stats line; ``stats_seen`` keeps the first line of each state the bar goes through."""
        if self.stats.text() != line:
            self.stats.setText(line)
        state = "final" if final else "waiting" if line == "Thinking…" else (
            "thinking" if line.startswith("Thinking… ") else "live")
        if state != self._stats_state:
            self._stats_state = state
            self.stats_seen.append(line)

    def reply_ended(self, generation_id: str, outcome: dict, stats: dict) -> None:
        self._on_gui_thread()
        if generation_id != self.generation_id:
            return
        self.dirty = True
        if self.thinking_at is not None and self.thought_s is None:  # it ended mid-thought (a stop)
            self.thought_s = time.monotonic() - self.thinking_at
        self.repaint_reply()
        self.transcript.draw_live("")
        if self.tail:
            self.transcript.append_block(to_html(self.tail))
        for call in outcome.get("tool_calls") or ():
            self.transcript.append_block(tool_call_html(call))
        line = final_stats_line(outcome, stats)
        self.transcript.append_block(stats_html(line))  # under the reply, apart from its Markdown, as history shows it
        self.transcript.to_bottom()
        self.generation_id, self.tail = None, ""
        self.last_reply = {"status": outcome["status"], "finish_reason": outcome.get("finish_reason")}
        self._show_stats(line, final=True)
        self.last_outcome = outcome
        self.update_controls()
        if outcome.get("error"):
            self.show_error(f"the reply ended {outcome['status']}: {outcome['error']}")
        if self.on_reply_end is not None:
            self.on_reply_end(outcome)

    def show_preview(self, preview) -> None:
        self._on_gui_thread()
        preview_dialog(self, preview).show()

    def show_settings(self, settings) -> None:
        """Settings changed: the stats bar says what is in force from the next reply on."""
        self._on_gui_thread()
        self.stats.setText(f"model {settings.model}, budget {settings.max_input_tokens}, params {settings.params} "
                           "— from the next reply on")

    def show_error(self, words: str) -> None:
        self._on_gui_thread()
        self.banner.setText(words)
        self.banner.show()
        if self.on_reply_end is not None and self.generation_id is None and self.last_outcome is None:
            self.on_reply_end({"status": "error", "error": words, "saved": True})

    def closeEvent(self, event) -> None:
        """Closing leaves replies streaming on the server: the worker detaches and its client closes."""
        self.ask("quit")
        remembered = window_state()
        remembered.setValue("geometry", self.saveGeometry())
        remembered.setValue("splitter", self.splitter.saveState())
        remembered.sync()
        self.timer.stop()
        self.worker_thread.quit()
        self.worker_thread.wait(3000)
        super().closeEvent(event)



def window_state() -> QSettings:
    """Where the window's size, place and splitter are kept between runs: an INI file in the user's config
    directory ($XDG_CONFIG_HOME/chatter/gui.ini)."""
    return QSettings(QSettings.IniFormat, QSettings.UserScope, "chatter", "gui")
