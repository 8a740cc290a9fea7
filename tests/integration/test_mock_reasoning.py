"""The mock LLM thinks on demand, as reasoning models' servers stream it: in ``reasoning_content`` (DeepSeek,
llama-server's deepseek format, older vLLM), in ``reasoning`` (newer vLLM, SGLang), or inline in ``<think>``
tags at the start of the content; streaming and whole, with the reasoning tokens in the usage."""
from __future__ import annotations

import json
import urllib.request

import pytest

from services.mock_llm.script import reasoning_text, reply_text
from tools.spawn import LocalStack

MODEL = "mock-1"


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    stack = LocalStack(tmp_path_factory.mktemp("mock"))
    try:
        stack.start("mock_llm")  # the mock alone
        yield stack
    finally:
        stack.stop()


def ask(mock, text: str, stream: bool) -> tuple[list[dict], dict | None]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": stream,
            "stream_options": {"include_usage": True}}
    request = urllib.request.Request(f"http://127.0.0.1:{mock.port}/v1/chat/completions", method="POST",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        raw = resp.read().decode()
    if not stream:
        whole = json.loads(raw)
        return [whole["choices"][0]["message"]], whole["usage"]
    chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    usage = next((c["usage"] for c in chunks if c.get("usage")), None)
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]], usage


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_thinking_in_its_own_delta_field_then_the_answer(mock, field):
    text = f"think [[mock tokens=12 reasoning_tokens=9 reasoning_field={field} tps=1000]]"
    messages = [{"role": "user", "content": text}]
    deltas, usage = ask(mock, text, stream=True)
    thought = "".join(d.get(field) or "" for d in deltas)
    answer = "".join(d.get("content") or "" for d in deltas)
    assert thought == reasoning_text(messages, MODEL, 9) and answer == reply_text(messages, MODEL, 12)
    first_answer = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all(not d.get(field) for d in deltas[first_answer:])  # all the thinking comes first
    assert usage["completion_tokens"] == 21 and usage["completion_tokens_details"] == {"reasoning_tokens": 9}
    (message,), _ = ask(mock, text, stream=False)
    assert message[field] == thought and message["content"] == answer


def test_thinking_inline_in_think_tags_at_the_start_of_the_content(mock):
    text = "tags [[mock tokens=10 reasoning_tokens=6 reasoning_field=think_tags tps=1000]]"
    messages = [{"role": "user", "content": text}]
    deltas, usage = ask(mock, text, stream=True)
    content = "".join(d.get("content") or "" for d in deltas)
    expected = "<think>" + reasoning_text(messages, MODEL, 6) + "</think>" + reply_text(messages, MODEL, 10)
    assert content == expected and usage["completion_tokens_details"] == {"reasoning_tokens": 6}
    (message,), _ = ask(mock, text, stream=False)
    assert message["content"] == expected


def test_no_thinking_unless_asked(mock):
    deltas, usage = ask(mock, "plain [[mock tokens=5 tps=1000]]", stream=True)
    assert not any("reasoning_content" in d or "reasoning" in d for d in deltas)
    assert "completion_tokens_details" not in usage and usage["completion_tokens"] == 5
