"""The window's list of sessions: each shown with its title and status; opened by a click, renamed by a double-click
or F2, deleted by the Delete key (asked first); both also in its menu (right-click), with Fork, Export… and
Import…."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QFileDialog, QInputDialog, QListWidget, QListWidgetItem, QMenu, QMessageBox

TITLE = Qt.UserRole + 1  # an item's title, as the session has it ("" before its first message)


class SessionList(QListWidget):
    opened = Signal(str)  # a session id
    renamed = Signal(str, str)  # a session id, its new title ("": the automatic one)
    deleted = Signal(object)  # the ids of sessions to delete (asked first)
    forked = Signal(str)  # a session id: copy its active branch into a new session
    exported = Signal(str, str)  # a session id, the file to write it to
    imported = Signal(str)  # a file to import

    def __init__(self) -> None:
        super().__init__()
        self.itemClicked.connect(lambda item: item.data(Qt.UserRole) and self.opened.emit(item.data(Qt.UserRole)))
        self.itemDoubleClicked.connect(lambda item: self.ask_rename(item.data(Qt.UserRole)))
        self.setContextMenuPolicy(Qt.CustomContextMenu)
        self.customContextMenuRequested.connect(self.menu)
        QShortcut(QKeySequence(Qt.Key_F2), self, activated=lambda: self.ask_rename(self.selected()))
        QShortcut(QKeySequence(Qt.Key_Delete), self, activated=lambda: self.ask_delete(self.selected()))
        # a long title is cut with "…" to the list's width (never behind its scrollbar); its tooltip has it whole
        self.setTextElideMode(Qt.ElideRight)
        self.setWordWrap(False)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)

    def show_rows(self, rows: list) -> None:
        self.clear()
        for row in rows:
            item = QListWidgetItem(f"{row.title or '(new)'}  ·  {row.status}")
            item.setToolTip(f"{row.title or '(new)'}\n{row.status}, {row.message_count} messages")
            item.setData(Qt.UserRole, row.session_id)
            item.setData(TITLE, row.title)
            self.addItem(item)

    def show_hits(self, hits: list) -> None:
        """Search hits in place of the sessions: each hit's session title and its snippet, the matches between
        brackets; a click opens its session."""
        self.clear()
        if not hits:
            self.addItem(QListWidgetItem("no message matches"))
            return
        for hit in hits:
            snippet = " ".join(hit.snippet.replace("\x02", "[").replace("\x03", "]").split())
            item = QListWidgetItem(f"{hit.title or '(untitled)'}\n  {hit.role}: {snippet}")
            item.setData(Qt.UserRole, hit.session_id)
            item.setData(TITLE, hit.title)
            item.setToolTip(snippet)
            self.addItem(item)

    def selected(self) -> str | None:
        item = self.currentItem()
        return item.data(Qt.UserRole) if item is not None else None

    def title_of(self, session_id: str) -> str:
        return next((self.item(i).data(TITLE) for i in range(self.count())
                     if self.item(i).data(Qt.UserRole) == session_id), "")

    def menu(self, at) -> None:
        item = self.itemAt(at)
        menu = QMenu(self)
        if item is not None and item.data(Qt.UserRole):
            session_id = item.data(Qt.UserRole)
            menu.addAction("Rename…", lambda: self.ask_rename(session_id))
            menu.addAction("Fork", lambda: self.forked.emit(session_id))
            menu.addAction("Export…", lambda: self.ask_export(session_id))
            menu.addAction("Delete…", lambda: self.ask_delete(session_id))
            menu.addSeparator()
        menu.addAction("Import…", self.ask_import)
        menu.exec(self.mapToGlobal(at))

    def ask_export(self, session_id: str) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export session", f"{session_id[:8]}.jsonl",
                                              "Chatter export (*.jsonl)")
        if path:
            self.exported.emit(session_id, path)

    def ask_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import sessions", "",
                                              "Chatter export or ChatGPT's conversations.json (*.jsonl *.json)")
        if path:
            self.imported.emit(path)

    def ask_rename(self, session_id: str | None) -> None:
        if session_id is None:
            return
        title, ok = QInputDialog.getText(self, "Rename session", "Title (empty: the automatic one):",
                                         text=self.title_of(session_id))
        if ok:
            self.renamed.emit(session_id, title)

    def ask_delete(self, session_id: str | None) -> None:
        if session_id is None:
            return
        answer = QMessageBox.question(self, "Delete session", "Delete this session with every message? Its text is "
                                      "gone from the database; this cannot be undone.",
                                      QMessageBox.Yes | QMessageBox.Cancel, QMessageBox.Cancel)
        if answer == QMessageBox.Yes:
            self.deleted.emit([session_id])
