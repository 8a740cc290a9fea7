"""``chatter gui``, offscreen (QT_QPA_PLATFORM=offscreen), against a real stack: the window's text is the
database's, Stop keeps what was shown, switching away and back follows the reply to its end, the stats bar goes
through its states, repaints are coalesced (counted, never timed), and no widget is touched off the GUI thread."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from services.mock_llm.script import reply_text
from tests.integration.stack import wait_until
from tools.system import ensure_fonts

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is installed by make test (the gui extra)")

MODEL = "mock-1"


def expected(text: str, tokens: int) -> str:
    return reply_text([{"role": "user", "content": text}], MODEL, tokens)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from PySide6.QtCore import QSettings
    # the window's remembered size and splitter go to a directory of the test's, not the user's config
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(tmp_path_factory.mktemp("config")))
    ensure_fonts()  # emoji and CJK fonts before Qt reads the font database, which it does once
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


@pytest.fixture
def window(app, stack, monkeypatch):
    from clients.gui import Window
    monkeypatch.setenv("CHATTER_RUN_DIR", str(stack.run_dir))
    win = Window(debug=True)
    win.show()
    yield win
    win.close()
    assert win.thread_violations == []  # no widget was touched off the GUI thread


def pump(app, predicate, timeout: float = 30, what: str = "the window"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.processEvents()
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError(f"{what} never got there")


def new_session(app, win) -> str:
    before = win.session_id
    win.ask("new", None)
    return pump(app, lambda: win.session_id if win.session_id != before else None, what="a new session")


def test_the_scripted_window_sends_saves_a_screenshot_and_exits_as_send_does(stack, tmp_path):
    png = tmp_path / "reply.png"
    text = "hello window [[mock tokens=40 tps=200]]"
    done = subprocess.run([*stack.cli_argv(), "gui", "--send", text, "--screenshot", str(png), "--quit-after-reply"],
                          env=stack.env | {"QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path)},
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    rows = stack.query("select content from message where role = 'assistant' order by created_at desc limit 1")
    assert rows[0]["content"] == expected(text, 40)


def test_the_window_shows_exactly_what_is_stored_and_the_stats_bar_goes_through_its_states(app, stack, window):
    new_session(app, window)
    text = "show me [[mock tokens=80 tps=100 ttft_ms=300]]"
    window.send(text)
    pump(app, lambda: window.last_outcome, what="the reply's end")
    outcome = window.last_outcome
    assert outcome["status"] == "completed" and outcome["content"] == expected(text, 80)
    assert window.shown[outcome["generation_id"]] == stack.db_message(outcome["message_id"])["content"]
    states = window.stats_seen
    assert states[0] == "Thinking…"
    assert any("tokens (estimated) |" in line and "TTFT" in line for line in states)
    assert "80 tokens (server)" in states[-1] and states[-1].endswith("| completed")
    assert "completed" in window.transcript.toPlainText().splitlines()[-1]


def test_stop_mid_reply_keeps_exactly_what_was_shown_marked_cancelled(app, stack, window):
    new_session(app, window)
    text = "stop me [[mock tokens=400 tps=50]]"
    window.send(text)
    pump(app, lambda: len(window.shown.get(window.generation_id or "", "")) > 40, what="some text")
    window.stop()
    pump(app, lambda: window.last_outcome, what="the reply's end")
    outcome = window.last_outcome
    assert outcome["status"] == "cancelled"
    stored = stack.wait_db_status(outcome["message_id"], ("cancelled",))["content"]
    assert window.shown[outcome["generation_id"]] == stored == outcome["content"]
    assert expected(text, 400).startswith(stored) and len(stored) < len(expected(text, 400))
    assert window.stats_seen[-1].endswith("| cancelled")


def test_switching_away_mid_reply_and_back_follows_it_live_to_its_end(app, stack, window):
    first = new_session(app, window)
    text = "keep going [[mock tokens=150 tps=50]]"
    window.send(text)
    pump(app, lambda: window.shown.get(window.generation_id or ""), what="the first text")
    generation_id = window.generation_id
    second = new_session(app, window)  # the reply goes on on the server
    assert second != first
    window.switch(first)
    pump(app, lambda: window.last_outcome, what="the reply's end")
    assert window.last_outcome["generation_id"] == generation_id
    assert window.last_outcome["status"] == "completed"
    assert window.shown[generation_id] == expected(text, 150)


def test_another_clients_watch_sees_the_same_text(app, stack, window):
    session_id = new_session(app, window)
    text = "watched [[mock tokens=120 tps=60]]"
    window.send(text)
    pump(app, lambda: window.shown.get(window.generation_id or ""), what="the first text")
    watch = stack.spawn_cli("watch", session_id, "--once", "--json")
    try:
        pump(app, lambda: window.last_outcome, what="the reply's end")
        watched = json.loads(watch.communicate(timeout=30)[0])
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watched["content"] == window.shown[window.last_outcome["generation_id"]] == expected(text, 120)


def test_a_fast_long_reply_renders_with_a_bounded_number_of_repaints(app, stack, window):
    from clients.gui import REPAINTS_PER_S
    new_session(app, window)
    text = "a long fast one [[mock tokens=2000 tps=200]]"
    before = window.repaints
    started = time.monotonic()
    window.send(text)
    pump(app, lambda: window.last_outcome, timeout=60, what="the reply's end")
    elapsed = time.monotonic() - started
    repaints = window.repaints - before
    assert window.shown[window.last_outcome["generation_id"]] == expected(text, 2000)
    assert 10 <= repaints <= REPAINTS_PER_S * elapsed + 5, (repaints, elapsed)  # coalesced: not one per token


def test_the_gui_thread_check_catches_a_call_from_another_thread(app, stack, window):
    caller = threading.Thread(target=window.repaint_reply)
    caller.start()
    caller.join()
    assert window.thread_violations == ["repaint_reply"]
    window.thread_violations.clear()  # the fixture asserts none were left


def test_a_stopped_coordinator_is_said_in_the_banner_in_plain_words(app, tmp_path, monkeypatch):
    from clients.gui import Window
    monkeypatch.setenv("CHATTER_RUN_DIR", str(tmp_path / "nobody-here"))
    monkeypatch.setenv("CHATTER_RPC_TIMEOUT_MS", "300")
    win = Window(debug=True)
    win.show()
    try:
        words = pump(app, lambda: win.banner.isVisible() and win.banner.text(), what="the banner")
        assert "did not answer" in words and "make run" in words
    finally:
        win.close()
    assert win.thread_violations == []


def test_the_preview_dialog_shows_the_exact_prompt_and_settings_reach_the_session(app, stack, window):
    session_id = new_session(app, window)
    window.send("preview me [[mock tokens=10 tps=200]]")
    pump(app, lambda: window.last_outcome, what="the reply's end")
    window.preview()
    dialog = pump(app, lambda: next((d for d in window.findChildren(QtWidgets.QDialog) if d.isVisible()), None),
                  what="the preview dialog")
    shown = dialog.findChild(QtWidgets.QPlainTextEdit).toPlainText()
    # the prompt is stored by reference: the dialog shows what preview builds again, checked against its sha256
    preview = stack.cli_json("preview", window.last_outcome["message_id"])
    assert shown == preview["preview"] and shown.startswith("[user]\npreview me") and preview["exact"]
    assert any(preview["prompt_hash"] in label.text() for label in dialog.findChildren(QtWidgets.QLabel))
    dialog.close()
    window.ask("configure", session_id, {"params": {"temperature": 0.25, "max_tokens": 64, "stream": True},
                                         "model": None, "max_input_tokens": 900, "system": "be brief"})
    pump(app, lambda: "budget 900" in window.stats.text(), what="the settings")
    history = json.loads(stack.cli("history", session_id, "--json").stdout)
    assert history["system"] == "be brief" and history["max_input_tokens"] == 900


def test_a_reasoning_models_thinking_folds_to_a_line_that_opens_it(app, stack, window):
    from PySide6.QtCore import QUrl
    new_session(app, window)
    window.send("think first [[mock tokens=20 reasoning_tokens=40 tps=200]]")
    pump(app, lambda: window.last_outcome, what="the reply's end")
    outcome = window.last_outcome
    assert "Thought for" in window.transcript.toPlainText()
    stored = stack.db_message(outcome["message_id"])
    assert stored["reasoning"] == outcome["reasoning"] and stored["reasoning"]
    assert window.shown[outcome["generation_id"]] == stored["content"]  # the answer alone
    window.open_link(QUrl(f"thought:{outcome['generation_id']}"))
    dialog = pump(app, lambda: next((d for d in window.findChildren(QtWidgets.QDialog) if d.isVisible()), None),
                  what="the thinking")
    assert dialog.findChild(QtWidgets.QPlainTextEdit).toPlainText() == stored["reasoning"]
    dialog.close()


def test_continue_on_a_stopped_reply_grows_it_once_in_the_transcript_to_the_whole_reply(app, stack, window):
    session_id = new_session(app, window)
    with stack.client() as client:  # the module's mock reads vLLM's fields; this session is told to use them
        client.configure(session_id, params={"continue_style": "vllm"})
    text = "stop, then go on [[mock tokens=200 tps=50]]"
    window.send(text)
    pump(app, lambda: len(window.shown.get(window.generation_id or "", "")) > 40, what="some text")
    window.stop()
    pump(app, lambda: window.last_outcome, what="the stop")
    stopped = window.last_outcome
    assert stopped["status"] == "cancelled"
    window.last_outcome = None
    window.continue_reply()
    pump(app, lambda: window.last_outcome, timeout=60, what="the continued reply's end")
    outcome = window.last_outcome
    assert outcome["status"] == "completed" and outcome["message_id"] == stopped["message_id"]
    assert window.shown[outcome["generation_id"]] == expected(text, 200) == outcome["content"]
    assert stack.wait_db_status(outcome["message_id"], ("completed",))["content"] == expected(text, 200)
    shown = window.transcript.toPlainText()
    # the cut reply is not left above its continuation: one reply, ended once
    assert "cancelled" not in shown and shown.count("completed") == 1


def test_the_session_list_renames_by_hand_and_deletes_when_confirmed(app, stack, window, monkeypatch):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QInputDialog, QMessageBox
    session = new_session(app, window)
    window.send("rename and delete me [[mock tokens=5]]")
    pump(app, lambda: window.last_outcome, what="the reply's end")

    def listed(session_id):
        items = [window.sessions_list.item(i) for i in range(window.sessions_list.count())]
        return next((item for item in items if item.data(Qt.UserRole) == session_id), None)

    pump(app, lambda: listed(session), what="the session in the list")
    monkeypatch.setattr(QInputDialog, "getText", staticmethod(lambda *a, **k: ("Renamed ✈", True)))
    window.sessions_list.ask_rename(session)  # as a double-click or F2 asks
    pump(app, lambda: (item := listed(session)) is not None and item.data(Qt.UserRole + 1) == "Renamed ✈",
         what="the new title in the list")
    assert stack.query("select title, title_set from session where id = ?", (session,))[0] == {
        "title": "Renamed ✈", "title_set": True}
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.Cancel))
    window.sessions_list.ask_delete(session)  # declined: nothing happens
    app.processEvents()
    time.sleep(0.3)
    app.processEvents()
    assert listed(session) is not None and stack.query("select id from session where id = ?", (session,))
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.Yes))
    window.sessions_list.ask_delete(session)  # as the Delete key or the list's menu asks
    pump(app, lambda: listed(session) is None and window.session_id is None, what="the session gone")
    assert f"session {session} was deleted" in window.banner.text()
    assert stack.query("select id from session where id = ?", (session,)) == []


def test_the_search_box_lists_hits_with_their_matches_and_opens_their_session(app, stack, window, tmp_path):
    from PySide6.QtCore import Qt
    session = new_session(app, window)
    window.send("a naïve question about zqgui sockets [[mock tokens=30]]")
    pump(app, lambda: window.last_outcome, what="the reply's end")
    window.search_edit.setText("naive zqgui")
    window.search_edit.returnPressed.emit()  # as Enter in the box does
    items = pump(app, lambda: [window.sessions_list.item(i) for i in range(window.sessions_list.count())
                               if "[naïve]" in window.sessions_list.item(i).text()], what="the hits")
    assert [item.data(Qt.UserRole) for item in items] == [session] and "[zqgui]" in items[0].text()
    shot = tmp_path / "search.png"
    window.grab().save(str(shot))
    assert shot.stat().st_size > 5000
    if os.environ.get("CHATTER_DOCS_SHOTS"):  # the README's picture: CHATTER_DOCS_SHOTS=DIR make test
        window.grab().save(os.path.join(os.environ["CHATTER_DOCS_SHOTS"], "gui-search.png"))
    window.search("")  # an empty search lists the sessions again
    pump(app, lambda: window.sessions_list.count() and all("\n" not in window.sessions_list.item(i).text()
                                                           for i in range(window.sessions_list.count())),
         what="the sessions listed again")  # a hit is two lines, a session one


def test_edit_and_the_branch_arrows_switch_what_the_window_shows(app, stack, window, monkeypatch, tmp_path):
    from PySide6.QtCore import QUrl
    from PySide6.QtWidgets import QInputDialog
    session = new_session(app, window)
    window.send("Plan a weekend in Lyon [[mock tokens=20]]")
    pump(app, lambda: window.last_outcome, what="the first reply")
    first_reply = window.last_outcome["content"]
    user_id = stack.cli_json("history", session)["messages"][0]["message_id"]
    window.last_outcome = None
    edited = "Plan a weekend in Annecy instead [[mock tokens=25]]"
    monkeypatch.setattr(QInputDialog, "getMultiLineText", staticmethod(lambda *a, **k: (edited, True)))
    window.open_link(QUrl(f"edit:{user_id}"))  # as a click on the message's Edit link does
    pump(app, lambda: window.last_outcome, what="the edited message's reply")
    assert window.last_outcome["content"] == expected(edited, 25)
    html = pump(app, lambda: "2/2" in (h := window.transcript.toHtml()) and h, what="the arrows")
    history = stack.cli_json("history", session)["messages"]
    assert f"branch:{history[0]['message_id']}/0" in html and "Annecy" in html and "Lyon" not in html
    assert [(h["content"], h["sibling_index"], h["sibling_count"]) for h in history][0] == (edited, 1, 2)
    shot = tmp_path / "branches.png"
    window.grab().save(str(shot))
    assert shot.stat().st_size > 5000
    if os.environ.get("CHATTER_DOCS_SHOTS"):  # the README's picture: CHATTER_DOCS_SHOTS=DIR make test
        window.grab().save(os.path.join(os.environ["CHATTER_DOCS_SHOTS"], "gui-branches.png"))
    window.open_link(QUrl(f"branch:{history[0]['message_id']}/0"))  # the < arrow: the first version again
    pump(app, lambda: "1/2" in window.transcript.toHtml() and "Lyon" in window.transcript.toHtml(),
         what="the first branch shown")
    assert "Annecy" not in window.transcript.toPlainText() and first_reply
    shown = stack.cli_json("history", session)["messages"]
    assert shown[0]["content"].startswith("Plan a weekend in Lyon")


def test_fork_export_import_and_delete_a_branch_from_the_window(app, stack, window, monkeypatch, tmp_path):
    from PySide6.QtCore import QUrl
    from PySide6.QtWidgets import QMessageBox
    session = new_session(app, window)
    window.send("to fork [[mock tokens=5]]")
    pump(app, lambda: window.last_outcome, what="the reply")
    window.sessions_list.forked.emit(session)  # as the list's menu asks
    fork = pump(app, lambda: window.session_id if window.session_id != session else None, what="the fork open")
    assert [h["content"] for h in stack.cli_json("history", fork)["messages"]] == \
        [h["content"] for h in stack.cli_json("history", session)["messages"]]
    path = tmp_path / "fork.jsonl"
    window.sessions_list.exported.emit(fork, str(path))
    pump(app, lambda: path.exists() and path.read_text().endswith("\n"), what="the export")
    assert oct(path.stat().st_mode & 0o777) == "0o600" and json.loads(path.read_text())["session"]["session_id"] == fork
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.Yes))
    first = stack.cli_json("history", fork)["messages"][0]["message_id"]
    window.open_link(QUrl(f"drop:{first}"))  # the first message, and so every message of the fork
    pump(app, lambda: stack.cli_json("history", fork)["messages"] == [], what="the branch deleted")
    window.sessions_list.imported.emit(str(path))  # and back, from the export
    pump(app, lambda: len(stack.cli_json("history", fork)["messages"]) == 2, what="the import")
