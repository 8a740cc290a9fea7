"""The PromptPackage: assembled once per generation, frozen, and sent upstream unchanged."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

# Replies with these statuses are shown in history but never sent to the model again.
EXCLUDED_FROM_PROMPT = frozenset({"cancelled", "error", "interrupted", "streaming"})


def canonical_bytes(messages: list[dict], model: str, params: dict) -> bytes:
    """The canonical encoding that the prompt hash covers. Tests recompute it from the mock's journal."""
    return json.dumps(
        {"messages": messages, "model": model, "params": params},
        ensure_ascii=False, sort_keys=True, separators=(",", ":"),
    ).encode("utf-8")


def prompt_hash(messages: list[dict], model: str, params: dict) -> str:
    return hashlib.sha256(canonical_bytes(messages, model, params)).hexdigest()


def render_preview(messages: list[dict]) -> str:
    return "".join(f"[{m['role']}]\n{m['content']}\n\n" for m in messages)


@dataclass(frozen=True, slots=True)
class PromptPackage:
    messages: tuple[tuple[str, str], ...]  # (role, content), immutable
    model: str
    params: tuple[tuple[str, object], ...]
    preview: str
    prompt_hash: str
    prompt_tokens: int

    def wire_messages(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def wire_params(self) -> dict:
        return dict(self.params)


def assemble(system: str | None, history: list[dict], user_text: str, model: str, params: dict,
             count_tokens) -> PromptPackage:
    """System prompt, the history without cancelled/errored replies, then the new user turn.

    A user turn whose reply was left out stays in: the user did say it. ``count_tokens``
    is injected so this stays pure and cheap to test.
    """
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": system})
    for record in history:
        if record["role"] == "assistant" and record["status"] in EXCLUDED_FROM_PROMPT:
            continue
        messages.append({"role": record["role"], "content": record["content"]})
    messages.append({"role": "user", "content": user_text})
    preview = render_preview(messages)
    return PromptPackage(
        messages=tuple((m["role"], m["content"]) for m in messages),
        model=model,
        params=tuple(sorted(params.items())),
        preview=preview,
        prompt_hash=prompt_hash(messages, model, params),
        prompt_tokens=sum(count_tokens(m["content"], model) for m in messages),
    )
