from __future__ import annotations

import json

import pytest

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
