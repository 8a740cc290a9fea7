"""The PromptPackage: assembled once per generation, frozen, and sent upstream unchanged."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from protocol.records import THINK_CLOSE, THINK_OPEN, MessageRecord

# Replies with these statuses are shown in history but never sent to the model again.
EXCLUDED_FROM_PROMPT = frozenset({"cancelled", "error", "interrupted", "streaming", "queued"})


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


# OpenAI's counting recipe: each message costs its content plus ~3 tokens of framing, and the reply
# is primed with 3 more. Real servers differ slightly, so every count we show is labelled "~".
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3


class PromptTooLarge(ValueError):
    """Even the system prompt and the newest turn alone exceed the input budget."""


@dataclass(frozen=True, slots=True)
class PromptPackage:
    messages: tuple[tuple[str, str], ...]  # (role, content), immutable
    model: str
    params: tuple[tuple[str, object], ...]
    preview: str
    prompt_hash: str
    prompt_tokens: int  # ~, with framing
    dropped_message_ids: tuple[str, ...] = ()  # oldest turns left out to fit the budget
    max_input_tokens: int = 0  # 0: no budget
    thinking_left_out: int = 0  # earlier replies in the prompt whose thinking it leaves out

    def wire_messages(self) -> list[dict]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def wire_params(self) -> dict:
        return dict(self.params)


def package_of(record: MessageRecord, count_tokens) -> PromptPackage:
    """The frozen prompt of a stored reply, exactly as it was sent: for a generation that a restarted
    coordinator adopts. Its budget is not stored, so it reads 0 (none)."""
    messages = record.prompt_messages or []
    model, params = record.model or "", record.params or {}
    tokens = sum(count_tokens(msg["content"], model) + TOKENS_PER_MESSAGE for msg in messages) + REPLY_PRIMING_TOKENS
    return PromptPackage(
        messages=tuple((msg["role"], msg["content"]) for msg in messages), model=model,
        params=tuple(sorted(params.items())), preview=record.preview or render_preview(messages),
        prompt_hash=record.prompt_hash or prompt_hash(messages, model, params), prompt_tokens=tokens,
        dropped_message_ids=tuple(record.dropped_message_ids))


def in_prompt(record: MessageRecord) -> bool:
    """User turns always count; a reply only if it completed and was not superseded."""
    if record.role != "assistant":
        return True
    return record.status not in EXCLUDED_FROM_PROMPT and not record.superseded


def prompt_content(record: MessageRecord, keep_thinking: bool) -> str:
    """What a message says in a prompt. An earlier reply's thinking is left out, as DeepSeek and Qwen advise
    (their chat templates drop it too); kept, it goes inline before the answer, as the model wrote it."""
    if keep_thinking and record.reasoning:
        return f"{THINK_OPEN}{record.reasoning}{THINK_CLOSE}{record.content}"
    return record.content


def assemble(system: str | None, history: list[MessageRecord], user_text: str, model: str, params: dict,
             count_tokens, max_input_tokens: int = 0, keep_thinking: bool = False) -> PromptPackage:
    """System prompt, the history without cancelled/errored/superseded replies, then the newest user turn.

    When it does not fit ``max_input_tokens``, the oldest turns (a user message and its replies) are
    left out whole; the system prompt and the newest turn always stay. ``count_tokens`` is injected
    so this stays pure and cheap to test.
    """
    def cost(content: str) -> int:
        return count_tokens(content, model) + TOKENS_PER_MESSAGE

    turns: list[list[MessageRecord]] = []
    for record in history:
        if not in_prompt(record):
            continue
        if record.role == "user" or not turns:
            turns.append([])
        turns[-1].append(record)
    fixed = (cost(system) if system else 0) + cost(user_text) + REPLY_PRIMING_TOKENS
    if max_input_tokens and fixed > max_input_tokens:
        raise PromptTooLarge(f"the system prompt and this message are ~{fixed} tokens; "
                             f"the input budget is {max_input_tokens}")
    kept: list[list[MessageRecord]] = []
    total = fixed
    for turn in reversed(turns):  # newest first, so the oldest are the ones left out
        turn_cost = sum(cost(prompt_content(r, keep_thinking)) for r in turn)
        if max_input_tokens and total + turn_cost > max_input_tokens:
            break
        kept.append(turn)
        total += turn_cost
    kept.reverse()
    dropped = tuple(r.message_id for turn in turns[:len(turns) - len(kept)] for r in turn)
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    messages += [{"role": r.role, "content": prompt_content(r, keep_thinking)} for turn in kept for r in turn]
    messages.append({"role": "user", "content": user_text})
    return PromptPackage(
        messages=tuple((msg["role"], msg["content"]) for msg in messages),
        model=model,
        params=tuple(sorted(params.items())),
        preview=render_preview(messages),
        prompt_hash=prompt_hash(messages, model, params),
        prompt_tokens=total,
        dropped_message_ids=dropped,
        max_input_tokens=max_input_tokens,
        thinking_left_out=0 if keep_thinking else sum(1 for turn in kept for r in turn if r.reasoning),
    )
