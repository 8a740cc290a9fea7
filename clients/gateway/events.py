"""A reply as OpenAI's Responses API streams it: its events and their ``sequence_number``s, as a pure function of
what is persisted of the reply (DESIGN.md, "The HTTP face"). Pure: no sockets, no clock.

The numbers come from the data, not from a process, so that every gateway, before and after any restart, gives
the same event the same number, and ``starting_after=N`` resumes at exactly the text position event N ended at:

- 0 ``response.created``, 1 ``response.in_progress``;
- then, once the reply has text, either a reasoning item first (a reasoning model's thinking, its ``R``
  characters): 2 ``output_item.added``, a ``reasoning_text.delta`` numbered ``2 + e`` where ``e`` is the offset
  its text ends at, and once the answer begins, ``3 + R`` ``reasoning_text.done`` and ``4 + R``
  ``output_item.done``; the message item then begins at ``base = 5 + R`` (``base = 2`` without thinking);
- the message item: ``base`` ``output_item.added``, ``base + 1`` ``content_part.added``, an
  ``output_text.delta`` numbered ``base + 1 + E`` where ``E`` is the offset its text ends at, and once the reply
  ends (``A`` characters), ``base + 2 + A`` ``output_text.done``, ``+ 3 + A`` ``content_part.done``, ``+ 4 + A``
  ``output_item.done`` and ``+ 5 + A`` the last: ``response.completed``, ``response.incomplete`` or
  ``response.failed``.
- a reply that calls tools (``tool_calls``, OpenAI's shape) has, after its message item (which it has only when
  it wrote text, and which closes as the first call begins: a model writes its words, then its calls), a
  ``function_call`` item for each call in order, from ``s`` (``base`` without text, else the number after the
  message item's ``output_item.done``): ``s`` ``output_item.added``, a ``function_call_arguments.delta``
  numbered ``s + E`` (``E`` where its arguments' text ends), and once the next call begins or the reply ends
  (``L`` characters), ``s + L + 1`` ``function_call_arguments.done`` and ``s + L + 2`` ``output_item.done``; the
  next call begins at ``s + L + 3``, and the last event follows the last call.

However the text was cut into deltas (coalescing differs between runs), a delta's number is where it ends, so a
resume from N sends the text from that position on, cutting a delta where N falls inside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Chatter's statuses and how the Responses API says them
ENDED = ("completed", "cancelled", "error", "interrupted")


@dataclass
class ReplyState:
    """What the gateway knows of one reply (one assistant message): its texts so far and how it stands."""

    message_id: str
    session_id: str
    model: str
    created_at: float
    reasoning: str = ""  # the thinking so far
    text: str = ""  # the answer so far
    status: str = "queued"  # Chatter's: queued, streaming, completed, cancelled, error, interrupted
    finish_reason: str | None = None
    error: str | None = None
    stats: dict = field(default_factory=dict)
    tool_calls: list = field(default_factory=list)  # the calls so far, OpenAI's Chat Completions shape
    background: bool = False
    store: bool = True
    previous_response_id: str | None = None
    instructions: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    tools: list = field(default_factory=list)  # as the request gave them (the Responses API's shape)
    tool_choice: str | dict = "auto"

    @property
    def response_id(self) -> str:
        return response_id(self.message_id)

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def answering(self) -> bool:
        """The answer has begun (words or calls, or the reply ended): the thinking, if any, is whole."""
        return bool(self.text) or bool(self.tool_calls) or self.ended

    @property
    def has_message(self) -> bool:
        """The reply has a message item: it wrote words, or ended without calling a tool."""
        return bool(self.text) or (self.ended and not self.tool_calls)


def response_id(message_id: str) -> str:
    return f"resp_{message_id}"


def message_of(response_id_: str) -> str | None:
    """The message id a response id names, or None when it is not one of ours."""
    if not response_id_.startswith("resp_") or not 1 <= len(response_id_) - 5 <= 64:
        return None
    return response_id_[5:]


def base(reply: ReplyState) -> int:
    """The number of the message item's ``output_item.added``."""
    return 5 + len(reply.reasoning) if reply.reasoning else 2


def last_number(reply: ReplyState) -> int:
    """The number of the reply's last event so far."""
    return events_after(reply, -1)[-1]["sequence_number"]


def events_after(reply: ReplyState, after: int) -> list[dict]:
    """Every event of the reply as it stands whose number is greater than ``after``, in order: the whole stream
    for -1, a resume for ``starting_after``, and, called again as the reply grows with the last number sent, just
    what is new. Each text is one delta from the position ``after`` falls at to its end."""
    if after > 1 and reply.text and not reply.ended and not reply.tool_calls:
        at = base(reply)
        if after >= at + 1:  # the message item began, and nothing closes yet: only its text can be new
            return _live_delta(reply, after, at)
    out: list[dict] = []

    def emit(number: int, event) -> None:
        """``event``: the event, or what makes it (built only when it is sent: a stream's every turn asks
        for what is new, and most of the layout is not)."""
        if number > after:
            out.append((event() if callable(event) else event) | {"sequence_number": number})

    emit(0, lambda: {"type": "response.created", "response": response_object(reply, "in_progress")})
    emit(1, lambda: {"type": "response.in_progress", "response": response_object(reply, "in_progress")})
    if not reply.reasoning and not reply.answering:
        return out  # no text yet: whether it thinks first is not known
    if reply.reasoning:
        length = len(reply.reasoning)
        item = reasoning_item(reply, done=False)
        emit(2, lambda: {"type": "response.output_item.added", "output_index": 0, "item": item})
        start = min(max(after - 2, 0), length)
        if start < length:
            emit(2 + length, {"type": "response.reasoning_text.delta", "item_id": item["id"], "output_index": 0,
                              "content_index": 0, "delta": reply.reasoning[start:]})
        if not reply.answering:
            return out
        emit(3 + length, lambda: {"type": "response.reasoning_text.done", "item_id": item["id"], "output_index": 0,
                          "content_index": 0, "text": reply.reasoning})
        emit(4 + length, lambda: {"type": "response.output_item.done", "output_index": 0,
                                  "item": reasoning_item(reply, done=True)})
    at, index = base(reply), 1 if reply.reasoning else 0
    if reply.has_message:
        at = _message_events(reply, after, at, index, emit)
        if at is None:
            return out
        index += 1
    for number, call in enumerate(reply.tool_calls):
        at = _call_events(reply, after, at, index + number, number, call,
                          done=reply.ended or number < len(reply.tool_calls) - 1, emit=emit)
        if at is None:
            return out
    if not reply.ended:
        return out
    status = response_status(reply)
    kind = {"completed": "response.completed", "failed": "response.failed"}.get(status, "response.incomplete")
    emit(at, lambda: {"type": kind, "response": response_object(reply, status)})
    return out


def _live_delta(reply: ReplyState, after: int, at: int) -> list[dict]:
    """A streaming answer's one new delta after ``after`` (the common case, each time a stream moves on)."""
    start, length = after - (at + 1), len(reply.text)
    if start >= length:
        return []
    return [{"type": "response.output_text.delta", "item_id": message_item_id(reply),
             "output_index": 1 if reply.reasoning else 0, "content_index": 0, "delta": reply.text[start:],
             "logprobs": [], "sequence_number": at + 1 + length}]


def _message_events(reply: ReplyState, after: int, at: int, index: int, emit) -> int | None:
    """The message item's events from ``at``; the number after them once it is whole, else None."""
    item_id = message_item_id(reply)
    emit(at, lambda: {"type": "response.output_item.added", "output_index": index,
                      "item": {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress",
                               "content": []}})
    emit(at + 1, lambda: {"type": "response.content_part.added", "item_id": item_id, "output_index": index,
                          "content_index": 0, "part": output_text("")})
    length = len(reply.text)
    start = min(max(after - (at + 1), 0), length)
    if start < length:
        emit(at + 1 + length, {"type": "response.output_text.delta", "item_id": item_id, "output_index": index,
                               "content_index": 0, "delta": reply.text[start:], "logprobs": []})
    if not reply.ended and not reply.tool_calls:
        return None
    emit(at + 2 + length, lambda: {"type": "response.output_text.done", "item_id": item_id, "output_index": index,
                           "content_index": 0, "text": reply.text, "logprobs": []})
    emit(at + 3 + length, lambda: {"type": "response.content_part.done", "item_id": item_id, "output_index": index,
                           "content_index": 0, "part": output_text(reply.text)})
    emit(at + 4 + length, lambda: {"type": "response.output_item.done", "output_index": index,
                                   "item": message_item(reply)})
    return at + 5 + length


def _call_events(reply: ReplyState, after: int, at: int, index: int, number: int, call: dict, done: bool,
                 emit) -> int | None:
    """The events of function call ``number`` (output item ``index``) from ``at``; the number after them once it
    is whole, else None."""
    item = function_call_item(reply, number, call, done=False)
    emit(at, {"type": "response.output_item.added", "output_index": index, "item": item | {"arguments": ""}})
    arguments = call["function"]["arguments"]
    start = min(max(after - at, 0), len(arguments))
    if start < len(arguments):
        emit(at + len(arguments), {"type": "response.function_call_arguments.delta", "item_id": item["id"],
                                   "output_index": index, "delta": arguments[start:]})
    if not done:
        return None
    emit(at + len(arguments) + 1, {"type": "response.function_call_arguments.done", "item_id": item["id"],
                                   "output_index": index, "arguments": arguments, "name": call["function"]["name"]})
    emit(at + len(arguments) + 2, lambda: {"type": "response.output_item.done", "output_index": index,
                                           "item": function_call_item(reply, number, call, done=True)})
    return at + len(arguments) + 3


def function_call_item(reply: ReplyState, number: int, call: dict, done: bool) -> dict:
    """The reply's call ``number`` (0 its first) as an output item."""
    return {"id": f"fc_{reply.message_id}_{number}", "type": "function_call", "call_id": call.get("id") or "",
            "name": call["function"]["name"], "arguments": call["function"]["arguments"],
            "status": "completed" if done else "in_progress"}


def response_status(reply: ReplyState) -> str:
    """The Responses API's status of a reply: queued, in_progress, completed, incomplete (cut by the length
    limit), cancelled or failed."""
    if reply.status == "queued" and not reply.text and not reply.reasoning:
        return "queued"
    if not reply.ended:
        return "in_progress"
    if reply.status == "completed":
        return "incomplete" if reply.finish_reason == "length" else "completed"
    return {"cancelled": "cancelled"}.get(reply.status, "failed")


def message_item_id(reply: ReplyState) -> str:
    return f"msg_{reply.message_id}"


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_item(reply: ReplyState, done: bool) -> dict:
    return {"id": f"rs_{reply.message_id}", "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": reply.reasoning if done else ""}],
            "status": "completed" if done else "in_progress"}


def message_item(reply: ReplyState) -> dict:
    status = "completed" if response_status(reply) == "completed" or reply.tool_calls else (
        "in_progress" if not reply.ended else "incomplete")
    return {"id": message_item_id(reply), "type": "message", "role": "assistant", "status": status,
            "content": [output_text(reply.text)]}


def response_object(reply: ReplyState, status: str | None = None) -> dict:
    """The ``Response`` object: its output as it stands, and once the reply ended, its usage (each count labelled
    server-reported or estimated, in the ``chatter`` field) and its error."""
    status = status or response_status(reply)
    output = []
    if reply.reasoning:
        output.append(reasoning_item(reply, done=reply.answering))
    if reply.has_message:
        output.append(message_item(reply))
    output += [function_call_item(reply, number, call,
                                  done=reply.ended or number < len(reply.tool_calls) - 1)
               for number, call in enumerate(reply.tool_calls)]
    obj = {
        "id": reply.response_id, "object": "response", "created_at": reply.created_at, "status": status,
        "model": reply.model, "output": output, "parallel_tool_calls": True, "tool_choice": reply.tool_choice,
        "tools": reply.tools,
        "background": reply.background, "store": reply.store, "instructions": reply.instructions,
        "previous_response_id": reply.previous_response_id, "temperature": reply.temperature,
        "max_output_tokens": reply.max_output_tokens, "conversation": {"id": reply.session_id},
        "error": None, "incomplete_details": None, "usage": None, "metadata": {},
    }
    if status == "incomplete":
        obj["incomplete_details"] = {"reason": "max_output_tokens"}
    if status == "failed":
        obj["error"] = {"code": "server_error", "message": reply.error or f"the reply ended {reply.status}"}
    if reply.ended:
        obj["usage"] = usage(reply.stats)
        obj["completed_at"] = reply.created_at + (reply.stats.get("duration_ms") or 0) / 1000
    return obj


def usage(stats: dict) -> dict:
    """OpenAI's usage from a reply's stats, with Chatter's labels beside it: which counts the server reported and
    which were estimated, and the timings."""
    output_tokens = stats.get("tokens") or 0
    input_tokens = stats.get("prompt_tokens") or 0
    return {
        "input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": stats.get("reasoning_tokens") or 0},
        "total_tokens": input_tokens + output_tokens,
        "chatter": {"output_tokens_source": stats.get("tokens_source", "estimated"),
                    "input_tokens_source": stats.get("prompt_tokens_source", "estimated"),
                    "reasoning_tokens_source": stats.get("reasoning_tokens_source"),
                    "ttft_ms": stats.get("ttft_ms"), "tok_per_s": stats.get("tok_per_s"),
                    "duration_ms": stats.get("duration_ms"), "thinking_ms": stats.get("thinking_ms")},
    }
