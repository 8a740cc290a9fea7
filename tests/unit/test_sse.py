from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from services.generator.sse import DONE, SSEDecoder, UpstreamProtocolError


def feed(lines):
    decoder, out = SSEDecoder(), []
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            out.append(event)
    tail = decoder.close()
    if tail is not None:
        out.append(tail)
    return out


def chunk(content=None, finish=None, usage=None):
    obj = {"choices": [{"index": 0, "delta": {} if content is None else {"content": content}, "finish_reason": finish}]}
    if usage:
        obj = {"choices": [], "usage": usage}
    return "data: " + json.dumps(obj)


def test_content_finish_usage_and_done():
    events = feed([chunk("Hel"), "", chunk("lo"), "", ": keep-alive", "", chunk(finish="stop"), "",
                   chunk(usage={"prompt_tokens": 3, "completion_tokens": 2}), "", "data: [DONE]", ""])
    assert [e.text for e in events[:2]] == ["Hel", "lo"]
    assert events[2].finish_reason == "stop"
    assert (events[3].prompt_tokens, events[3].completion_tokens) == (3, 2)
    assert events[4] is DONE


def test_data_without_a_space_and_multi_line_data():
    events = feed(['data:{"choices": [{"delta": {"content": "a"}}]}', "",
                   'data: {"choices": [{"delta":', 'data: {"content": "b"}}]}', ""])
    assert [e.text for e in events] == ["a", "b"]


def test_an_event_without_its_blank_line_still_counts_at_the_end():
    assert [e.text for e in feed([chunk("x")])] == ["x"]


@pytest.mark.parametrize("lines, needle", [
    (['data: {"choices": [{"delta": {"content": "unterminated'], "malformed"),
    (['data: {"error": {"message": "overloaded"}}', ""], "overloaded"),
    (["event: error", 'data: {"message": "bad"}', ""], "bad"),
    (['data: [1, 2]', ""], "not an object"),
    (["data: " + "[" * 100_000 + "]" * 100_000, ""], "malformed"),  # nesting past the stack
    (['data: {"choices": [{"delta": {"content": "\\ud800"}}]}', ""], "malformed"),  # a lone surrogate
    (['data: {"choices": [], "usage": {"prompt_tokens": NaN}}', ""], "malformed"),
    (['data: {"usage": {"prompt_tokens": 1e999}}', ""], "malformed"),
])
def test_protocol_errors(lines, needle):
    with pytest.raises(UpstreamProtocolError, match=needle):
        feed(lines)


def test_null_content_and_role_only_chunks_carry_no_text():
    events = feed(['data: {"choices": [{"delta": {"role": "assistant", "content": null}}]}', ""])
    assert events[0].text == "" and events[0].finish_reason is None


STREAM = ("data: " + json.dumps({"choices": [{"delta": {"content": "naïve ☕ 日本"}}]}, ensure_ascii=False) + "\n\n"
          + ": keep-alive\n\n"
          + 'data: {"choices": [{"delta":\ndata: {"content": "two lines"}}]}\n\n'
          + chunk(finish="stop") + "\n\n" + "data: [DONE]\n\n")


def by_bytes(data: bytes, cuts: list[int]):
    decoder, out = SSEDecoder(), []
    for start, end in zip([0] + cuts, cuts + [len(data)]):
        out.extend(decoder.feed_bytes(data[start:end]))
    tail = decoder.close()
    return out + ([tail] if tail is not None else [])


def summary(events):
    return [e if e is DONE else (e.text, e.finish_reason) for e in events]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_bytes_cut_anywhere_decode_like_whole_lines(newline):
    data = STREAM.replace("\n", newline).encode()
    expected = summary(feed(STREAM.split("\n")))
    assert expected[0] == ("naïve ☕ 日本", None) and expected[-1] is DONE
    for cut in range(1, len(data)):  # every split point, including inside a UTF-8 character and a CRLF
        assert summary(by_bytes(data, [cut])) == expected, cut
    assert summary(by_bytes(data, list(range(1, len(data))))) == expected  # one byte at a time


def test_a_last_line_without_its_newline_still_counts():
    assert [e.text for e in by_bytes(chunk("x").encode(), [])] == ["x"]


def test_invalid_utf8_is_a_protocol_error():
    with pytest.raises(UpstreamProtocolError, match="UTF-8"):
        list(SSEDecoder().feed_bytes(b"data: \xff\xfe\n\n"))


def test_events_before_a_bad_line_in_the_same_read_come_out_first():
    decoder, got = SSEDecoder(), []
    with pytest.raises(UpstreamProtocolError, match="malformed"):
        for event in decoder.feed_bytes((chunk("kept") + "\n\n" + 'data: {"unterminated\n\n').encode()):
            got.append(event.text)
    assert got == ["kept"]


# The whole-event path (``SSEDecoder._whole``) against the lines' path: any value where the common chunk has its
# fields, of any JSON type, any key order, extra and doubled keys, errors, and text that is not ASCII or not UTF-8.
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                     st.text(max_size=6))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                       max_leaves=6)
_texts = st.one_of(st.none(), st.text(max_size=8), _values)


def _some(keys: dict) -> st.SearchStrategy:
    """A dict with a random subset of ``keys`` (each from its strategy) and maybe a stray key."""
    return st.fixed_dictionaries({}, optional={**keys, "stray": _values})


_deltas = st.one_of(_values, _some({"content": _texts, "reasoning_content": _texts, "reasoning": _texts,
                                    "role": st.just("assistant")}))
_choices = st.one_of(_values, st.lists(st.one_of(_values, _some({"delta": _deltas, "finish_reason": _texts,
                                                                   "index": st.integers(0, 2)})), max_size=2))
_usages = st.one_of(_values, _some({"prompt_tokens": _texts, "completion_tokens": _texts,
                                    "completion_tokens_details": st.one_of(_values, _some(
                                        {"reasoning_tokens": _values}))}))
_chunks = st.one_of(_values, _some({"choices": _choices, "usage": _usages, "error": _values, "id": _texts}))


def _lines_path(data: bytes):
    try:
        return list(SSEDecoder()._lines(data))
    except UpstreamProtocolError as exc:
        return exc


@settings(max_examples=3000, deadline=None)
@given(_chunks, st.booleans(), st.sampled_from(["", "dup", "bad-utf8", "lone-surrogate", "crlf", "two"]))
def test_the_whole_event_path_gives_what_the_lines_path_gives(obj, ascii_only, twist):
    text = json.dumps(obj, ensure_ascii=ascii_only)
    if twist == "dup" and text.startswith("{") and text != "{}":
        text = '{"choices": null, ' + text[1:]  # a doubled key: the last one counts, in both
    data = b"data: " + text.encode() + b"\n\n"
    if twist == "bad-utf8":
        data = data.replace(b'"', b'"\xff', 1)
    elif twist == "lone-surrogate":
        data = data.replace(b'"', b'"\\udc00', 1)
    elif twist == "crlf":
        data = data[:-2] + b"\r\n\r\n"
    elif twist == "two":
        data += data
    whole = SSEDecoder()._whole(data)
    if whole is not None:
        assert _lines_path(data) == [whole]


def test_a_common_chunk_and_done_take_the_whole_event_path():
    for data, text in ((chunk("naïve").encode() + b"\n\n", "naïve"),
                       (b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}'
                        b"\n\n", "")):
        event = SSEDecoder()._whole(data)
        assert event is not None and event.text == text and event == _lines_path(data)[0]
    both = b'data: {"choices": [{"delta": {"reasoning": "b", "reasoning_content": "a", "content": null}}]}\n\n'
    assert SSEDecoder()._whole(both).reasoning == "a" == _lines_path(both)[0].reasoning  # REASONING_FIELDS' order
    assert SSEDecoder()._whole(b"data: [DONE]\n\n") is DONE
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
    assert SSEDecoder()._whole(usage) == _lines_path(usage)[0]
    assert SSEDecoder()._whole(usage).completion_tokens == 2
    assert SSEDecoder()._whole(b'data: {"error": {"message": "x"}}\n\n') is None  # the lines' path raises it


@pytest.mark.parametrize("read_bytes", [1000, 16384])
def test_a_huge_event_read_in_small_pieces_decodes_whole(read_bytes):
    """A 5 MB event (a whole reply in one chunk) comes in thousands of reads without a line end: they are held,
    then decoded once, with a character split across reads kept whole."""
    text = "ab 🙂 数据 " * 400_000
    data = (chunk(text) + "\n\ndata: [DONE]\n\n").encode()
    assert len(data) > 5_000_000
    events = by_bytes(data, list(range(read_bytes, len(data), read_bytes)))
    assert summary(events) == [(text, None), DONE]
