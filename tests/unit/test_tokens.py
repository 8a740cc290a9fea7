"""Token counts: the short-delta memo gives exactly what the encoding gives, and stays bounded."""
from __future__ import annotations

from services import tokens


def test_short_and_long_texts_count_as_the_encoding_does(monkeypatch):
    monkeypatch.setattr(tokens, "_short_counts", {})
    encoding = tokens.encoding_for("mock-1")
    for text in ("the", " token", "🙂", "数据", "naïve", "x" * tokens.SHORT_TEXT, "a longer delta, past the memo's limit"):
        expected = len(encoding.encode(text, disallowed_special=()))
        assert tokens.count_tokens(text, "mock-1") == expected
        assert tokens.count_tokens(text, "mock-1") == expected  # the second time from the memo
    assert ("mock-1", "the") in tokens._short_counts
    assert all(len(text) <= tokens.SHORT_TEXT for _model, text in tokens._short_counts)
    assert tokens.count_tokens("", "mock-1") == 0


def test_the_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(tokens, "_short_counts", {})
    monkeypatch.setattr(tokens, "SHORT_CACHE_LIMIT", 10)
    for i in range(25):
        tokens.count_tokens(f"w{i}", "mock-1")
    assert 0 < len(tokens._short_counts) <= 10
