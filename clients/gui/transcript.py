"""The window's transcript: a session's messages as rich text, and the reply being written drawn in place at its
end. Finished blocks go in once (``append_block``); the block being written is taken out and drawn again at each
repaint (``draw_live``), so a long reply costs the same per repaint as a short one."""
from __future__ import annotations

from PySide6.QtGui import QTextBlockFormat, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import QTextBrowser


class Transcript(QTextBrowser):
    def __init__(self) -> None:
        super().__init__()
        self.live_at: int | None = None  # where the block being written begins (None: nothing drawn there)

    def clear(self) -> None:
        super().clear()
        self.live_at = None

    def setHtml(self, markup: str) -> None:
        super().setHtml(markup)
        self.live_at = None

    def append_block(self, markup: str) -> None:
        """A block at the end, in a block format of its own: ``QTextBrowser.append`` carried the last block's format
        on, so a status after a reply that ended with a list became one more item of it."""
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.End)
        if not self.document().isEmpty():
            cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
        cursor.insertHtml(markup)

    def draw_live(self, markup: str) -> None:
        """The block being written, drawn again where it is: what was drawn there before is taken out first; ""
        only takes it out."""
        document = self.document()
        cursor = QTextCursor(document)
        if self.live_at is not None:
            cursor.setPosition(min(self.live_at, document.characterCount() - 1))
            cursor.movePosition(QTextCursor.End, QTextCursor.KeepAnchor)
            cursor.removeSelectedText()
            self.live_at = None
            # an empty block left at the end may have taken the removed block's list format (a stray "1." after
            # a table): it is a plain block again
            block = cursor.block()
            if not block.text() and block.textList() is not None:
                block.textList().remove(block)
                cursor.setBlockFormat(QTextBlockFormat())
        if markup:
            cursor.movePosition(QTextCursor.End)
            self.live_at = cursor.position()
            if not document.isEmpty():
                cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
            cursor.insertHtml(markup)

    def to_bottom(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())
