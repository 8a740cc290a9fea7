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
])
def test_protocol_errors(lines, needle):
    with pytest.raises(UpstreamProtocolError, match=needle):
        feed(lines)


def test_null_content_and_role_only_chunks_carry_no_text():
    events = feed(['data: {"choices": [{"delta": {"role": "assistant", "content": null}}]}', ""])
    assert events[0].text == "" and events[0].finish_reason is None
