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

from protocol.records import THINK_CLOSE, THINK_OPEN
from services import config

# Mixed widths on purpose: offsets are counted in characters, and a 4-byte emoji, accents and
# newlines catch any code that counts bytes or splits text.
VOCABULARY = (
    "the", "stream", "token", "reply", "actor", "queue", "socket", "message", "offset", "durable", "cancel",
    "and", "of", "to", "a", "in", "is", "for", "with", "on", "café", "naïve", "señor", "über", "—", "…",
    "🙂", "数据", "**bold**", "`code`", "\n", "\n\n", "1.", "-", "(", ")", ",", ".", "?", "!",
)

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


def env_scenario(settings: config.MockSettings) -> Scenario:
    return Scenario(tokens=settings.tokens, tps=settings.tps, ttft_ms=settings.ttft_ms)


def _coerce(name: str, raw):
    kind = {f.name: f.type for f in fields(Scenario)}[name]
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
    known = {f.name for f in fields(Scenario)}
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
    return replace(base, **{k: _coerce(k, v) for k, v in overrides.items()})


def request_key(body: dict) -> str:
    """Identifies 'the same request' across retries."""
    canon = json.dumps({"messages": body.get("messages"), "model": body.get("model")}, sort_keys=True,
                       ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def reply_tokens(messages: list, model: str, n: int) -> list[str]:
    """The deterministic reply: n tokens chosen by a PRNG seeded from the request."""
    rng = random.Random(request_key({"messages": messages, "model": model}))
    out = []
    for i in range(n):
        word = rng.choice(VOCABULARY)
        out.append(word if i == 0 or word.startswith("\n") else " " + word)
    return out


def reasoning_tokens(messages: list, model: str, n: int) -> list[str]:
    """The deterministic thinking before a reply: n tokens of its own PRNG, so that it differs from the answer."""
    rng = random.Random("reasoning " + request_key({"messages": messages, "model": model}))
    return [(word if i == 0 or word.startswith("\n") else " " + word)
            for i, word in enumerate(rng.choice(VOCABULARY) for _ in range(n))]


def reasoning_text(messages: list, model: str, n: int) -> str:
    return "".join(reasoning_tokens(messages, model, n))


def inline_thinking(answer: list[str], thinking: list[str], after: int = 0) -> str:
    """The content of a reply that thinks inline (think_tags): the tagged thinking, after ``after`` answer tokens."""
    return "".join(answer[:after]) + THINK_OPEN + "".join(thinking) + THINK_CLOSE + "".join(answer[after:])


def reply_text(messages: list, model: str, n: int) -> str:
    return "".join(reply_tokens(messages, model, n))


def prompt_token_count(messages: list) -> int:
    """The mock's own prompt count for usage: whitespace-separated words. Exact by its own definition."""
    return sum(len(str(msg.get("content", "")).split()) for msg in messages if isinstance(msg, dict))
