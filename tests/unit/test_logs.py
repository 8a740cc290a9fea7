"""What the log redacts: every kind of secret its patterns name, whatever the case, past the quick check that
lets a text without any of them through untouched."""
from __future__ import annotations

import pytest

from services.logs import redact


@pytest.mark.parametrize("text, secret", [
    ("Authorization: Bearer abc.def-123", "abc.def-123"),
    ("headers={'authorization': 'Bearer tok3n'}", "tok3n"),
    ("BEARER UPPER-token", "UPPER-token"),
    ("api_key=plainvalue1", "plainvalue1"),
    ("X-API-Key: hdrvalue2", "hdrvalue2"),
    ('{"apikey": "jsonvalue3"}', "jsonvalue3"),
    ("failed with sk-proj_ABCdef123456 in it", "ABCdef123456"),
    ("postgresql://chatter:hunter22@db.internal:5432/chatter", "hunter22"),
    ("REDIS://user:Pa55word@cache", "Pa55word"),
])
def test_each_kind_of_secret_is_redacted(text, secret):
    out = redact(text)
    assert secret not in out and "[redacted]" in out


def test_the_configured_key_is_redacted_wherever_it_is(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k3y-without-a-known-shape")
    assert redact("upstream said k3y-without-a-known-shape is wrong") == "upstream said [redacted] is wrong"


@pytest.mark.parametrize("text", ["generation_done", "g-01J2 length=200 seq=14", "a session about skiing",
                                  "http:/not-a-url", ""])
def test_a_text_without_a_secret_is_left_as_it_is(text):
    assert redact(text) == text
