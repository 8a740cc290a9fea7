"""What the log redacts: every kind of secret its patterns name, whatever the case, past the quick check that
lets a text without any of them through untouched, and an event's values as each would be alone."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from services.logs import _ANY_PATTERN, _may_hold_secret, _redact_event, redact


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


# texts near the patterns: their words in any case, with the characters that case-insensitive matching treats as
# letters of them (a Kelvin sign, a dotted capital I, a long s), among ordinary text
_PIECES = st.sampled_from(["bearer", "authorization", "api", "-", "_", "key", "sk-", "://", "apikey", "x", " ",
                           "\u212a", "\u0130", "\u017f", "é", "k3y-without-a-known-shape", ":", "=", "'", "@"])
_NEAR = st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=12).map("".join)
_CASED = _NEAR.flatmap(lambda text: st.lists(st.booleans(), min_size=len(text), max_size=len(text)).map(
    lambda upper: "".join(c.upper() if u else c for c, u in zip(text, upper))))


@pytest.mark.parametrize("text", ["\u017fk-abcdefgh", "S\u212a-abcdefgh", "API\u212aEY=x", "see HTTPS://h"])
def test_the_quick_check_says_yes_where_case_insensitive_search_finds_a_look_alike(text):
    assert _ANY_PATTERN.search(text) is not None and _may_hold_secret(text)  # a long s is an s to the search


@given(_CASED)
def test_the_quick_check_never_lets_through_what_the_search_would_find(text):
    if _ANY_PATTERN.search(text) is not None:
        assert _may_hold_secret(text)


@given(st.dictionaries(st.sampled_from(["event", "error", "url", "n", "detail", "ok", "none", "items"]),
                       st.one_of(_CASED, st.integers(), st.none(), st.booleans(), st.lists(_CASED, max_size=2)),
                       max_size=6), st.sampled_from(["", "abc", "k3y-without-a-known-shape"]))
def test_an_events_values_are_redacted_as_each_would_be_alone(event, key):
    import os
    before = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = key
    try:
        alone = {k: v if isinstance(v, (int, float, bool, type(None))) else redact(str(v)) for k, v in event.items()}
        assert _redact_event(None, None, dict(event)) == alone
    finally:
        if before is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = before
