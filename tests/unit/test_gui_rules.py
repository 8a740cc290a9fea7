"""The window's pure rules: what Settings sends (only what changed), and which X libraries ``chatter gui`` says
are missing before Qt would abort; and ``chatter history``'s Markdown blocks."""
from __future__ import annotations

import pytest

from protocol import answers
from protocol.conversation import MessageView

pytest.importorskip("PySide6", reason="PySide6 is installed by make test (the gui extra)")


def settings(**over) -> answers.SessionSettings:
    base = dict(session_id="s", system="be brief", max_input_tokens=8192, model="mock-1",
                params={"temperature": 0.25}, stream=False, continue_style=None)
    return answers.SessionSettings(**(base | over))


def test_settings_send_only_what_the_user_changed_and_never_turn_streaming_back_on():
    from clients.gui.dialogs import changed_fields, current_values
    shown = current_values(settings())
    assert shown == {"model": "mock-1", "temperature": "0.25", "max_tokens": "", "max_input_tokens": "8192",
                     "system": "be brief", "stream": "off", "continue_style": ""}
    assert changed_fields(shown, dict(shown)) == {}  # OK without a change sends nothing: stream stays off
    assert changed_fields(shown, shown | {"model": "other"}) == {"model": "other"}
    assert changed_fields(shown, shown | {"temperature": "", "max_tokens": "64"}) == {
        "params": {"temperature": None, "max_tokens": 64}}
    assert changed_fields(shown, shown | {"stream": "on", "continue_style": "vllm"}) == {
        "params": {"stream": True, "continue_style": "vllm"}}
    assert changed_fields(shown, shown | {"stream": ""}) == {"params": {"stream": None}}
    assert changed_fields(shown, shown | {"system": "", "max_input_tokens": ""}) == {"system": "",
                                                                                    "max_input_tokens": 0}
    for bad in ({"temperature": "warm"}, {"max_tokens": "1.5"}, {"max_input_tokens": "lots"}):
        with pytest.raises(ValueError, match="must be"):
            changed_fields(shown, shown | bad)


def test_the_missing_x_libraries_are_named_only_where_a_window_would_open_on_x():
    from clients.gui import missing_x_libraries
    nothing = lambda name: None  # noqa: E731
    everything = lambda name: f"lib{name}.so"  # noqa: E731
    on_x = {"DISPLAY": ":0"}
    assert missing_x_libraries(on_x, nothing) == ["libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1"]
    assert missing_x_libraries(on_x, lambda name: None if name == "xcb-icccm" else "x") == ["libxcb-icccm4"]
    assert missing_x_libraries(on_x, everything) == []
    assert missing_x_libraries({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"}, nothing) == []
    assert missing_x_libraries({}, nothing) == []  # no display: Qt says so itself
    assert missing_x_libraries({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0"}, nothing) == []
    assert missing_x_libraries({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}, nothing)


def test_chatter_history_draws_your_message_as_markdown_in_a_box_apart_from_the_reply():
    from rich.console import Console
    from clients.show import print_history
    user = MessageView(message_id="u", session_id="s", role="user", created_at=0.0, status="completed",
                       content="two lines:\n\n- first\n- second\n\n```python\nprint('hi')\n```")
    reply = MessageView(message_id="a", session_id="s", role="assistant", created_at=0.0, status="completed",
                        content="**done**")
    history = answers.History(session_id="s", title="t", system=None, max_input_tokens=8192,
                              messages=[user, reply])
    console = Console(record=True, width=60, force_terminal=True)
    print_history(history, console=console)
    drawn = console.export_text()
    assert "╭─ you" in drawn and "• first" in drawn and "• second" in drawn and "print('hi')" in drawn
    assert "two lines:" in drawn and "done" in drawn and "**done**" not in drawn  # Markdown, not its marks
