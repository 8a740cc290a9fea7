"""The window as a newcomer meets it, offscreen against a real stack: the controls follow the state; Settings shows
the session's values and sends only what changed; your message keeps its Markdown shape in a bubble of its own;
a reply's stats (and status) sit apart from its Markdown, stored stats shown again when the session is reopened;
the reply being written is drawn in place; long titles are cut with a tooltip; emoji and CJK have fonts; the size,
place and splitter are remembered; a think block of whitespace alone shows no thinking."""
from __future__ import annotations

import os

import pytest

from services.mock_llm.script import MARKDOWN
from tests.integration.test_gui import app, expected, new_session, pump, window  # noqa: F401 (fixtures)
from tests.integration.test_reasoning import whitespace_thinking
from tools.spawn import REPO
from tools.system import ensure_fonts

QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is installed by make test (the gui extra)")
ARTIFACTS = REPO / "test-artifacts" / "gui"


def shot(window, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(ARTIFACTS / f"{name}.png"))
    if os.environ.get("CHATTER_DOCS_SHOTS"):
        window.grab().save(os.path.join(os.environ["CHATTER_DOCS_SHOTS"], f"{name}.png"))


def last_text_block(document):
    """The last block with text (a table is followed by an empty block of the document's own)."""
    block = document.lastBlock()
    while block.isValid() and not block.text().strip():
        block = block.previous()
    return block


def enabled(window) -> dict[str, bool]:
    return {label: button.isEnabled() for label, button in window.buttons.items()}


def test_the_controls_follow_the_state(app, stack, window):
    assert not any(enabled(window)[label] for label in ("Stop", "Regenerate", "Continue", "Send"))  # no session
    session_id = new_session(app, window)
    with stack.client() as client:  # the module's mock reads vLLM's fields; this session is told to use them
        client.configure(session_id, params={"continue_style": "vllm"})
    state = enabled(window)
    assert state["Send"] and not state["Stop"] and not state["Regenerate"] and not state["Continue"]
    window.send("stop me, then go on [[mock tokens=300 tps=60]]")
    pump(app, lambda: len(window.shown.get(window.generation_id or "", "")) > 40, what="some text")
    state = enabled(window)
    assert state["Stop"] and not state["Regenerate"] and not state["Continue"] and not state["Send"]
    window.input.setPlainText("not now")
    window.send()  # Enter while it streams: refused in the banner, the text kept in the box
    assert window.input.toPlainText() == "not now" and "streaming" in window.banner.text()
    window.input.clear()
    window.stop()
    pump(app, lambda: window.last_outcome, what="the stop")
    state = enabled(window)
    assert not state["Stop"] and state["Regenerate"] and state["Continue"] and state["Send"]
    window.last_outcome = None
    window.continue_reply()
    pump(app, lambda: window.last_outcome, timeout=60, what="the continued reply's end")
    state = enabled(window)
    assert window.last_outcome["status"] == "completed" and state["Regenerate"] and not state["Continue"]
    line = window.stats.text()  # its stats count each segment, and tell its own TTFT from the continuation's
    assert " + " in line and "tokens |" in line and "continued after" in line, line


def test_settings_show_the_sessions_values_and_send_only_what_changed(app, stack, window):
    from clients.gui.dialogs import SettingsDialog
    session_id = new_session(app, window)
    with stack.client() as client:
        client.configure(session_id, system="be terse", params={"temperature": 0.25, "stream": False})
    window.edit_settings()
    dialog = pump(app, lambda: next((d for d in window.findChildren(SettingsDialog) if d.isVisible()), None),
                  what="the settings dialog")
    assert dialog.values() | {"model": ""} == {"model": "", "temperature": "0.25", "max_tokens": "",
                                               "max_input_tokens": "8192", "system": "be terse", "stream": "off",
                                               "continue_style": ""}
    shot(window, "gui-settings")
    dialog.fields["max_tokens"].setText("64")
    dialog.accept()
    pump(app, lambda: "max_tokens" in window.stats.text(), what="the change")
    with stack.client() as client:
        now = client.configure(session_id)
    assert (now.params, now.stream, now.system) == ({"temperature": 0.25, "max_tokens": 64}, False, "be terse")


def test_your_message_keeps_its_shape_and_the_stats_stay_apart_from_a_list_the_reply_ends_with(app, stack, window):
    from PySide6.QtGui import QTextCursor
    from clients.gui.markup import stats_html, to_html
    from clients.gui.transcript import Transcript
    new_session(app, window)
    text = "Two things:\n\n- a **list**\n- and code:\n\n```python\nprint('hi')\n```\n\n[[mock markdown tps=400]]"
    window.send(text)
    pump(app, lambda: window.last_outcome, what="the reply's end")
    assert window.last_outcome["content"] == MARKDOWN
    document = window.transcript.document()
    tables = [frame for frame in document.rootFrame().childFrames()]
    user = tables[0]  # your message: a shaded block of its own, its list and code kept
    cursor = QTextCursor(user)
    cursor.setPosition(user.firstPosition())
    cursor.setPosition(user.lastPosition(), QTextCursor.KeepAnchor)
    assert "Two things:" in cursor.selectedText() and "print('hi')" in cursor.selectedText()
    assert "**" not in cursor.selectedText() and "list" in cursor.selectedText()
    last = last_text_block(document)
    assert last.textList() is None and last.text().endswith("| completed")  # the stats, after the reply
    shot(window, "gui-markdown")
    lone = Transcript()  # a reply that ends with a list: its stats line does not become an item of it
    lone.append_block(to_html("1. one\n2. two\n"))
    lone.append_block(stats_html("2 tokens (server) | completed"))
    assert last_text_block(lone.document()).textList() is None
    assert last_text_block(lone.document()).text() == "2 tokens (server) | completed"
    window.switch(window.session_id)  # reopened: each reply's stored stats are shown again
    pump(app, lambda: "tokens (server)" in window.transcript.toPlainText() and window.stats.text(),
         what="the stored stats")
    assert window.stats.text().endswith("| completed")


def test_the_reply_being_written_is_drawn_in_place_at_the_transcripts_end(app, stack, window):
    from PySide6.QtGui import QTextDocument
    from clients.gui.markup import to_html
    new_session(app, window)
    window.send("in place [[mock tokens=300 tps=60]]")

    def drawn_at_the_end() -> bool:
        if not window.live_shown.strip():
            return False
        doc = QTextDocument()
        doc.setHtml(to_html(window.live_shown))
        return window.transcript.toPlainText().rstrip().endswith(doc.toPlainText().rstrip())

    pump(app, drawn_at_the_end, what="the block being written, in the transcript")
    window.stop()
    pump(app, lambda: window.last_outcome, what="the stop")


def test_long_titles_are_cut_with_their_whole_title_in_a_tooltip(app, stack, window):
    from PySide6.QtCore import Qt
    session_id = new_session(app, window)
    window.send("a title [[mock tokens=3]]")
    pump(app, lambda: window.last_outcome, what="the reply")
    title = "A very long title that goes on and on past the width of the list on the side " * 2
    window.rename_session(session_id, title.strip())
    item = pump(app, lambda: next((window.sessions_list.item(i) for i in range(window.sessions_list.count())
                                   if window.sessions_list.item(i).data(Qt.UserRole) == session_id
                                   and window.sessions_list.item(i).data(Qt.UserRole + 1) == title.strip()), None),
                what="the renamed session")
    assert item.toolTip().startswith(title.strip())
    assert window.sessions_list.textElideMode() == Qt.ElideRight
    assert window.sessions_list.horizontalScrollBarPolicy() == Qt.ScrollBarAlwaysOff
    shot(window, "gui-long-title")


def test_emoji_and_cjk_have_fonts(app, stack, window):
    from clients.gui import add_font_fallbacks
    families = ensure_fonts()
    assert "Noto Color Emoji" in families and "Noto Sans CJK" in families, "fonts-noto-* could not be installed"
    found = add_font_fallbacks(app)
    assert any("Emoji" in family for family in found) and any("CJK" in family for family in found), found
    new_session(app, window)
    window.send("emoji 🙂🎉 and CJK 数据流 消息队列 [[mock tokens=30 tps=300]]")
    pump(app, lambda: window.last_outcome, what="the reply")
    shot(window, "gui-fonts")


def test_the_window_remembers_its_size_place_and_splitter(app, stack, tmp_path, monkeypatch):
    from PySide6.QtCore import QSettings
    from clients.gui import Window
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(tmp_path))
    monkeypatch.setenv("CHATTER_RUN_DIR", str(stack.run_dir))
    first = Window()
    first.show()
    first.resize(760, 530)  # inside the offscreen screen (800 x 600)
    first.splitter.setSizes([280, 470])
    app.processEvents()
    sizes = first.splitter.sizes()
    first.close()
    again = Window()
    again.show()
    app.processEvents()
    try:
        assert (again.width(), again.height()) == (760, 530) and again.splitter.sizes() == sizes
        assert (tmp_path / "chatter" / "gui.ini").exists()
    finally:
        again.close()


def test_a_think_block_of_whitespace_alone_shows_no_thinking_in_the_window(app, stack, window):
    new_session(app, window)
    window.send(whitespace_thinking())
    pump(app, lambda: window.last_outcome, what="the reply")
    assert window.last_outcome["reasoning"] and not window.last_outcome["reasoning"].strip()
    assert "Thought" not in window.transcript.toPlainText() and "thought" not in window.stats.text()
    window.switch(window.session_id)
    pump(app, lambda: "tokens (" in window.transcript.toPlainText(), what="the history")
    assert "Thought" not in window.transcript.toPlainText()
