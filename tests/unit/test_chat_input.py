"""The chat client's pure input rules: keys typed during a reply, and its command table."""
from __future__ import annotations

from clients.chat import COMMANDS, Chat, TypedLine


def test_arrow_and_function_keys_are_dropped_whole_not_typed():
    line = TypedLine()
    assert line.feed("/sw\x1b[Aitch\x1b[1;5C\x1bOP x") == []
    assert line.text == "/switch x"
    assert line.feed("\x7fy\r") == ["/switch y"]
    assert line.text == ""


def test_an_escape_sequence_split_across_reads_is_still_dropped():
    line = TypedLine()
    line.feed("ab\x1b[")
    line.feed("15")
    assert line.feed("~c\n/stop\n") == ["abc", "/stop"]


def test_every_listed_command_has_a_handler():
    assert set(COMMANDS) <= set(Chat.COMMAND_HANDLERS)
