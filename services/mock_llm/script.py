"""What the mock says and how: pure functions of the request, importable by tests.

``reply_tokens(messages, model, n)`` is the exact text a request gets, token by token.
A scenario comes from env defaults, the ``mock`` body field, or a directive in the last user
message such as ``[[mock tokens=50 fail_status=503 fail_times=2]]``, so any client can
drive a fault without extra plumbing.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, fields, replace

from protocol.conversation import THINK_CLOSE, THINK_OPEN
from services import config

# Mixed widths on purpose: offsets are counted in characters, and a 4-byte emoji, accents and
# newlines catch any code that counts bytes or splits text.
VOCABULARY = (
    "the", "stream", "token", "reply", "actor", "queue", "socket", "message", "offset", "durable", "cancel",
    "and", "of", "to", "a", "in", "is", "for", "with", "on", "café", "naïve", "señor", "über", "—", "…",
    "🙂", "数据", "**bold**", "`code`", "\n", "\n\n", "1.", "-", "(", ")", ",", ".", "?", "!",
)

_SPACED = tuple(word if word.startswith("\n") else " " + word for word in VOCABULARY)  # as they follow a word

DIRECTIVE = re.compile(r"\[\[mock\s+([^\]]*)\]\]")
REASONING_FIELDS = ("reasoning_content", "reasoning", "think_tags")


@dataclass(frozen=True)
class Scenario:
    tokens: int = 40
    tps: float = 50.0
    ttft_ms: float = 50.0
    jitter_ms: float = 0.0
    fail_status: int = 0  # an error status before the first token
    fail_times: int = -1  # only the first K attempts of this request fail; -1: every attempt
    retry_after: float = -1.0  # seconds for the Retry-After header; -1: none
    drop_after: int = -1  # close the connection after N content chunks
    no_finish: bool = False  # end the stream without a finish reason
    malformed_after: int = -1  # send a chunk that is not JSON after N content chunks
    stall_after: int = -1  # stop sending after N content chunks...
    stall_ms: float = 3_600_000.0  # ...for this long
    reasoning_tokens: int = 0  # think this many tokens before the answer, as reasoning models do...
    reasoning_field: str = "reasoning_content"  # ...in this delta field (or "reasoning"), or "think_tags":
    # inline <think>...</think> at the start of the content, as llama-server with --reasoning-format none
    think_after: int = 0  # with think_tags: the tagged block after this many answer tokens (so not opening it)
    fault_times: int = -1  # the mid-stream faults above hit only the first K requests of a turn (its
    # continuations count too); -1: every one
    tool_call: str = ""  # after its answer, the reply calls this function (finish_reason tool_calls)
    chunk_tokens: int = 1  # answer tokens an event: events are paced at tps, so many make one huge event fast
    repeat_prefill: int = -1  # a continued reply starts by repeating the prefill: 1 yes, 0 no, -1 as the server
    # imitated does (llama-server does)
    say: str = ""  # the answer begins with this word (a test's marker; not part of the reply verify checks)
    markdown: bool = False  # the answer is MARKDOWN, whatever ``tokens`` says: the renderers at work


# ``[[mock markdown]]``'s answer: what a model writes when it formats, so that the demos and the tests see every
# renderer at work (headings, fenced code in two languages, a table, nested lists, a long line, emoji and CJK), and
# raw HTML and a javascript: link, which a client must show as text and never run. The same for every request.
MARKDOWN = """## Two ways to greet

Here is the same function in **Python** and in `JavaScript`:

```python
def greet(name: str) -> str:
    return f"hello, {name}"  # 🙂
```

```javascript
const greet = (name) => `hello, ${name}`;
```

| language | typing | first released |
|---|---|---|
| Python | dynamic, gradual | 1991 |
| JavaScript | dynamic | 1995 |

1. First, the setup
   - install it
     - from the package index
   - check the version
2. Then the text: 数据流 and 消息队列, señor, naïve, über 🙂🎉
3. A long line that a renderer must wrap rather than push off the side of the window, because nobody wants to scroll sideways to read the end of a sentence that goes on and on.

> Raw HTML is text: <b>not bold</b>, <script>alert("ran")</script>, <img src=x onerror="alert('ran')">,
> and [a javascript: link](javascript:alert('ran')) that goes nowhere.

That is all."""
MARKDOWN_TOKENS = re.findall(r"\s*\S+", MARKDOWN)  # words with the space or line breaks before them


def env_scenario(settings: config.MockSettings) -> Scenario:
    return Scenario(tokens=settings.tokens, tps=settings.tps, ttft_ms=settings.ttft_ms)


_KINDS = {f.name: f.type for f in fields(Scenario)}  # a scenario field's type, as its annotation names it


def _coerce(name: str, raw):
    kind = _KINDS[name]
    if kind == "bool":
        return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
    if kind == "str":
        if name == "reasoning_field" and raw not in REASONING_FIELDS:
            raise ValueError(f"reasoning_field must be one of {', '.join(REASONING_FIELDS)}, got {raw!r}")
        return str(raw)
    return int(raw) if kind == "int" else float(raw)


def scenario_for(body: dict, base: Scenario) -> Scenario:
    """Env defaults, then a directive in the last user message, then the ``mock`` body field."""
    overrides: dict = {}
    known = _KINDS
    users = [msg for msg in body.get("messages", []) if isinstance(msg, dict) and msg.get("role") == "user"]
    content = users[-1].get("content") if users else None
    if isinstance(content, str):
        for match in DIRECTIVE.finditer(content):
            for pair in match.group(1).split():
                key, _, value = pair.partition("=")
                if key in known:
                    overrides[key] = value or "true"
    if isinstance(body.get("mock"), dict):
        overrides.update({k: v for k, v in body["mock"].items() if k in known})
    messages = body.get("messages") or []
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        check_tool_results(messages)
        overrides["tool_call"] = ""  # a tool's result is answered in words, as a model does, not by calling again
    return replace(base, **{k: _coerce(k, v) for k, v in overrides.items()}) if overrides else base


def check_tool_results(messages: list) -> None:
    """As OpenAI checks them: each tool message answers a call of the assistant message before it
    (``ValueError``, a 400, when not)."""
    calls: set = set()
    for index, msg in enumerate(messages):
        if not isinstance(msg, dict):
            continue
        if msg.get("role") == "assistant":
            calls = {call.get("id") for call in msg.get("tool_calls") or ()}
        elif msg.get("role") == "tool":
            if msg.get("tool_call_id") not in calls:
                raise ValueError(f"messages[{index}]: a message with role 'tool' must answer a preceding message's "
                                 f"tool_calls, and {msg.get('tool_call_id')!r} is not one of them")
        else:
            calls = set()


def request_key(body: dict) -> str:
    """Identifies 'the same request' across retries."""
    canon = json.dumps({"messages": body.get("messages"), "model": body.get("model")}, sort_keys=True,
                       ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def reply_tokens(messages: list, model: str, n: int) -> list[str]:
    """The deterministic reply: n tokens chosen by a PRNG seeded from the request."""
    return tokens_of_key(request_key({"messages": messages, "model": model}), n)


def tokens_of_key(key: str, n: int) -> list[str]:
    """``reply_tokens`` of the request whose ``request_key`` is ``key`` (the server has it already)."""
    return _words(random.Random(key), n)


def _words(rng: random.Random, n: int) -> list[str]:
    """n words of the vocabulary, each after a space but the first and the line breaks. ``choices`` draws them
    in one call, from the words with their spaces already on: a choice and a concatenation each were 18% of
    the mock under a burst (py-spy). A reply's first words are still the shorter reply."""
    words = rng.choices(_SPACED, k=n)
    if words:
        words[0] = words[0].lstrip(" ")
    return words


def reasoning_tokens(messages: list, model: str, n: int) -> list[str]:
    """The deterministic thinking before a reply: n tokens of its own PRNG, so that it differs from the answer."""
    if n <= 0:
        return []
    return _words(random.Random("reasoning " + request_key({"messages": messages, "model": model})), n)


def reasoning_text(messages: list, model: str, n: int) -> str:
    return "".join(reasoning_tokens(messages, model, n))


def inline_thinking(answer: list[str], thinking: list[str], after: int = 0) -> str:
    """The content of a reply that thinks inline (think_tags): the tagged thinking, after ``after`` answer tokens."""
    return "".join(answer[:after]) + THINK_OPEN + "".join(thinking) + THINK_CLOSE + "".join(answer[after:])


def continued_prefix(body: dict, server: str) -> str | None:
    """The reply so far that this request asks to continue, or None when it asks for a new turn. A trailing
    assistant message is continued when the request says so in a way the imitated server reads: vLLM's
    ``continue_final_message`` (vllm, chatter), ``"prefix": true`` on it (deepseek, chatter), or always
    (llamacpp, which prefills it). openai reads none of these: a trailing assistant message is a finished turn."""
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        return None
    vllm = body.get("continue_final_message") is True and body.get("add_generation_prompt") is False
    prefix = last.get("prefix") is True
    if (server == "llamacpp" or (vllm and server in ("vllm", "chatter"))
            or (prefix and server in ("deepseek", "chatter"))):
        return last["content"]
    return None


def continued_tokens(messages: list, model: str, n: int, partial: str, markdown: bool = False) -> list[str]:
    """What a continuation streams: the whole reply to the request without its trailing message, after the
    ``partial`` it already has (the first piece may end a token that the partial cut). A partial that is not
    the start of that reply (edited) is continued anyway, deterministically: the reply to the whole request."""
    whole = MARKDOWN_TOKENS if markdown else reply_tokens(messages[:-1], model, n)
    if not "".join(whole).startswith(partial):
        return list(MARKDOWN_TOKENS) if markdown else reply_tokens(messages, model, n)
    pieces, at = [], 0
    for token in whole:
        if at + len(token) > len(partial):
            pieces.append(token[max(0, len(partial) - at):])
        at += len(token)
    return pieces


def turn_key(body: dict) -> str:
    """The turn a request belongs to, its continuations included: the request without a trailing assistant
    message."""
    messages = list(body.get("messages") or [])
    if _ends_with_reply(messages):
        messages = messages[:-1]
    return request_key({"messages": messages, "model": body.get("model")})


def request_keys(body: dict) -> tuple[str, str]:
    """``request_key`` and ``turn_key`` of a request, hashed once where they are the same (a list of messages
    without a trailing assistant message): three hashes of each request were 4% of the server under a burst."""
    key = request_key(body)
    messages = body.get("messages")
    same = isinstance(messages, list) and not _ends_with_reply(messages)
    return key, key if same else turn_key(body)


def _ends_with_reply(messages: list) -> bool:
    return bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant"


def tool_call_arguments(messages: list, model: str) -> str:
    """The arguments of the tool call a ``tool_call`` scenario makes: JSON, a pure function of the request."""
    return json.dumps({"query": "".join(reply_tokens(messages, model, 6)), "limit": 3}, ensure_ascii=False)


def reply_text(messages: list, model: str, n: int) -> str:
    return "".join(reply_tokens(messages, model, n))


def prompt_token_count(messages: list) -> int:
    """The mock's own prompt count for usage: whitespace-separated words. Exact by its own definition."""
    return sum(len(str(msg.get("content", "")).split()) for msg in messages if isinstance(msg, dict))
