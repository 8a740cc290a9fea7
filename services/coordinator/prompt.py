"""The PromptPackage: assembled once per generation, frozen, and sent upstream unchanged."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from protocol.conversation import MessageRecord, in_prompt, prompt_content, prompt_message


def canonical_bytes(messages: list[dict], model: str, params: dict) -> bytes:
    """The canonical encoding that the prompt hash covers. Tests recompute it from the mock's journal."""
    return json.dumps(
        {"messages": messages, "model": model, "params": params},
        ensure_ascii=False, sort_keys=True, separators=(",", ":"),
    ).encode("utf-8")


def prompt_hash(messages: list[dict], model: str, params: dict) -> str:
    return hashlib.sha256(canonical_bytes(messages, model, params)).hexdigest()


def render_preview(messages: list[dict], params: dict | None = None) -> str:
    """The request as a person reads it: each message, a trailing assistant message that the server is to
    continue marked so (with ``prefix: true`` where it carries it), and the fields that tell the server to
    continue it."""
    out = []
    for i, msg in enumerate(messages):
        role = msg["role"]
        if msg.get("prefix"):
            role += ", prefix: true"
        if i == len(messages) - 1 and msg["role"] == "assistant":
            role += ", to be continued"
        if msg["role"] == "tool":
            role += f" result for {msg.get('tool_call_id', '')}"
        calls = "".join(f"\n[tool call {call.get('id', '')}: {call['function']['name']}({call['function']['arguments']})]"
                        for call in msg.get("tool_calls") or ())
        out.append(f"[{role}]\n{msg['content']}{calls}\n\n")
    told = [f"{key}: {json.dumps(params[key])}" for key in CONTINUE_FIELDS if key in (params or {})]
    if (params or {}).get("tools"):
        told.append("tools: " + ", ".join(tool["function"]["name"] for tool in params["tools"]))
    if (params or {}).get("tool_choice") is not None:
        told.append(f"tool_choice: {json.dumps(params['tool_choice'])}")
    if told:
        out.append(f"[request: {', '.join(told)}]\n")
    return "".join(out)


# The continue styles (CHATTER_CONTINUE_STYLE): how a server is told to extend a trailing assistant message.
#   vllm     vLLM: continue_final_message and add_generation_prompt in the body
#   prefill  llama.cpp's llama-server: a trailing assistant message is prefilled as it is (its reply repeats it)
#   prefix   DeepSeek, Mistral: "prefix": true on the trailing assistant message
#   none     the server cannot (OpenAI): continuing is refused, never faked with a "Continue" user turn
CONTINUE_STYLES = ("vllm", "prefill", "prefix", "none")
VLLM_FIELDS = {"continue_final_message": True, "add_generation_prompt": False}
CONTINUE_FIELDS = tuple(VLLM_FIELDS)


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
    prefix_last: bool = False  # a continuation in the prefix style: its last message carries "prefix": true
    # how to build it again from the session (``rebuild``): what a reply stores instead of a copy of its prompt
    ref: dict | None = None
    tool_calls: tuple = ()  # (index, calls) of the messages that called tools: their "tool_calls", as sent
    tool_call_ids: tuple = ()  # (index, id) of the tools' results: the call each answers ("tool_call_id")

    def wire_messages(self) -> list[dict]:
        out = [{"role": role, "content": content} for role, content in self.messages]
        for index, calls in self.tool_calls:
            out[index]["tool_calls"] = [dict(call) for call in calls]
        for index, call_id in self.tool_call_ids:
            out[index]["tool_call_id"] = call_id
        if self.prefix_last:
            out[-1]["prefix"] = True
        return out

    def wire_params(self) -> dict:
        return dict(self.params)


def continuation(base: PromptPackage, partial: str, style: str, count_tokens, reply_id: str = "") -> PromptPackage:
    """The prompt that continues a reply: ``base``, the prompt the reply answered, then the reply so far as a
    trailing assistant message, and what ``style`` tells the server with it. Frozen and hashed like any other;
    its tokens count the partial reply, and a budget that it exceeds refuses it (``PromptTooLarge``)."""
    if style not in CONTINUE_STYLES or style == "none":
        raise ValueError(f"no continuation in style {style!r}")
    messages = [*base.wire_messages(), {"role": "assistant", "content": partial}]
    if style == "prefix":
        messages[-1]["prefix"] = True
    params = base.wire_params() | (VLLM_FIELDS if style == "vllm" else {})
    tokens = base.prompt_tokens + count_tokens(partial, base.model) + TOKENS_PER_MESSAGE
    if base.max_input_tokens and tokens > base.max_input_tokens:
        raise PromptTooLarge(f"the prompt with the reply so far is ~{tokens} tokens; the input budget is "
                             f"{base.max_input_tokens}")
    return PromptPackage(
        messages=tuple((msg["role"], msg["content"]) for msg in messages), model=base.model,
        tool_calls=base.tool_calls, tool_call_ids=base.tool_call_ids,
        params=tuple(sorted(params.items())), preview=render_preview(messages, params),
        prompt_hash=prompt_hash(messages, base.model, params), prompt_tokens=tokens,
        dropped_message_ids=base.dropped_message_ids, max_input_tokens=base.max_input_tokens,
        thinking_left_out=base.thinking_left_out, prefix_last=style == "prefix",
        ref=None if base.ref is None else base.ref | {"tail": {"id": reply_id, "length": len(partial), "style": style}})


def original_of(package: PromptPackage, count_tokens) -> PromptPackage:
    """The prompt a continuation extends: without its trailing assistant message and its style's fields (a
    reply continued twice extends the prompt it first answered, never a continuation of a continuation)."""
    if not package.messages or package.messages[-1][0] != "assistant":
        return package
    messages = package.wire_messages()[:-1]
    params = {k: v for k, v in package.params if k not in CONTINUE_FIELDS}
    return PromptPackage(
        messages=package.messages[:-1], model=package.model, params=tuple(sorted(params.items())),
        tool_calls=package.tool_calls, tool_call_ids=package.tool_call_ids,
        preview=render_preview(messages, params), prompt_hash=prompt_hash(messages, package.model, params),
        prompt_tokens=package.prompt_tokens - count_tokens(package.messages[-1][1], package.model) - TOKENS_PER_MESSAGE,
        dropped_message_ids=package.dropped_message_ids, max_input_tokens=package.max_input_tokens,
        thinking_left_out=package.thinking_left_out,
        ref=None if package.ref is None else {k: v for k, v in package.ref.items() if k != "tail"})


def sent_params(record: MessageRecord) -> dict:
    """The params a stored reply's request carried: the session's, and a vLLM continuation's fields."""
    params = record.params or {}
    tail = (record.prompt_ref or {}).get("tail")
    return params | VLLM_FIELDS if tail is not None and tail["style"] == "vllm" else params


def package_of(lineage: list[MessageRecord], record: MessageRecord, count_tokens) -> PromptPackage:
    """The frozen prompt of a stored reply, exactly as it was sent, built again from its session (``rebuild``):
    for a generation that a restarted coordinator adopts, and for a reply to continue. Its budget is not
    stored, so it reads 0 (none)."""
    messages, dropped, _ = rebuild(lineage, record)
    model, params = record.model or "", sent_params(record)
    tokens = sum(count_tokens(msg["content"], model) + TOKENS_PER_MESSAGE for msg in messages) + REPLY_PRIMING_TOKENS
    return PromptPackage(
        messages=tuple((msg["role"], msg["content"]) for msg in messages), model=model,
        tool_calls=tool_calls_of(messages), tool_call_ids=tool_call_ids_of(messages),
        params=tuple(sorted(params.items())), preview=record.preview or render_preview(messages, params),
        prompt_hash=record.prompt_hash or prompt_hash(messages, model, params), prompt_tokens=tokens,
        dropped_message_ids=tuple(dropped or record.dropped_message_ids),
        prefix_last=bool(messages and messages[-1].get("prefix")), ref=record.prompt_ref)


def rebuild(history: list[MessageRecord], record: MessageRecord) -> tuple[list[dict], list[str], str | None]:
    """The prompt of ``record`` (a reply; ``history`` its lineage, the messages from the session's first to it:
    ``SessionState.lineage``) as it was sent, from its reference: the system
    prompt it had, the user message it answered and the turns before it that were in the prompt, but for the
    oldest ``dropped`` of them, with their thinking or not; and a continuation's reply so far (its first
    ``length`` characters) as the trailing assistant message. Nothing is edited in place, and a message's
    ancestors never change (an edit is a new branch), so this is exact;
    where a message it needs is gone, the third value says so (and the messages are what could be found).
    Returns (messages, the ids left out, the problem or None). A reply stored by an earlier version kept a
    copy of its prompt: that is returned as it is."""
    ref = record.prompt_ref
    if ref is None:
        return list(record.prompt_messages or []), list(record.dropped_message_ids), None
    at = {r.message_id: i for i, r in enumerate(history)}
    messages: list[dict] = [{"role": "system", "content": ref["system"]}] if ref.get("system") else []
    user_at = at.get(ref["user"])
    if user_at is None:
        return messages, [], f"the message it answered ({ref['user']}) is no longer in the session"
    candidates = [r for r in history[:user_at] if in_prompt(r)]
    kept = candidates[ref.get("dropped", 0):]
    messages += [prompt_message(r, ref.get("thinking", False)) for r in kept]
    messages.append(prompt_message(history[user_at], ref.get("thinking", False)))
    problem = None
    tail = ref.get("tail")
    if tail is not None:
        reply = history[at[tail["id"]]] if tail["id"] in at else None
        if reply is None or len(reply.content) < tail["length"]:
            problem = f"the reply it continued ({tail['id']}) is no longer as it was"
        else:
            messages.append({"role": "assistant", "content": reply.content[:tail["length"]]})
            if tail["style"] == "prefix":
                messages[-1]["prefix"] = True
    return messages, [r.message_id for r in candidates[:ref.get("dropped", 0)]], problem


def tool_calls_of(messages: list[dict]) -> tuple:
    return tuple((i, tuple(msg["tool_calls"])) for i, msg in enumerate(messages) if msg.get("tool_calls"))


def tool_call_ids_of(messages: list[dict]) -> tuple:
    return tuple((i, msg["tool_call_id"]) for i, msg in enumerate(messages) if "tool_call_id" in msg)


def assemble(system: str | None, history: list[MessageRecord], newest: MessageRecord | str, model: str,
             params: dict, count_tokens, max_input_tokens: int = 0, keep_thinking: bool = False) -> PromptPackage:
    """System prompt, ``history`` (the branch the new turn follows) without cancelled or errored replies, then the
    newest message: the user's (a record, or its text), or a tool's result.

    When it does not fit ``max_input_tokens``, the oldest turns (a user message and its replies) are
    left out whole; the system prompt and the newest turn always stay (for a tool's result, the turn whose reply
    called the tool too: a result without its call is refused upstream). ``count_tokens`` is injected
    so this stays pure and cheap to test.
    """
    def cost(content: str) -> int:
        return count_tokens(content, model) + TOKENS_PER_MESSAGE

    last = {"role": "user", "content": newest} if isinstance(newest, str) else prompt_message(newest, keep_thinking)
    turns: list[list[MessageRecord]] = []
    for record in history:
        if not in_prompt(record):
            continue
        if record.role == "user" or not turns:
            turns.append([])
        turns[-1].append(record)
    fixed = (cost(system) if system else 0) + cost(last["content"]) + REPLY_PRIMING_TOKENS
    if last["role"] == "tool" and turns:
        fixed += sum(cost(prompt_content(r, keep_thinking)) for r in turns[-1])
        held = [turns.pop()]
    else:
        held = []
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
    kept += held
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    messages += [prompt_message(r, keep_thinking) for turn in kept for r in turn]
    messages.append(last)
    # ``user``, the id of the message it answers, is the caller's to add (``with_user``)
    ref = {"system": system or None, "dropped": sum(len(turn) for turn in turns[:len(turns) - len(kept)]),
           "thinking": keep_thinking}
    return PromptPackage(
        messages=tuple((msg["role"], msg["content"]) for msg in messages),
        tool_calls=tool_calls_of(messages), tool_call_ids=tool_call_ids_of(messages),
        model=model,
        params=tuple(sorted(params.items())),
        preview=render_preview(messages, params),
        prompt_hash=prompt_hash(messages, model, params),
        prompt_tokens=total,
        dropped_message_ids=dropped,
        max_input_tokens=max_input_tokens,
        thinking_left_out=0 if keep_thinking else sum(1 for turn in kept for r in turn if r.reasoning),
        ref=ref,
    )


def with_user(prompt: PromptPackage, user_id: str) -> PromptPackage:
    """The prompt's reference completed with the id of the user message it answers."""
    return dataclasses.replace(prompt, ref=(prompt.ref or {}) | {"user": user_id})
