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
    background: bool = False
    store: bool = True
    previous_response_id: str | None = None
    instructions: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None

    @property
    def response_id(self) -> str:
        return response_id(self.message_id)

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def answering(self) -> bool:
        """The answer has begun (or the reply ended): the thinking, if any, is whole."""
        return bool(self.text) or self.ended


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
    out: list[dict] = []

    def emit(number: int, event: dict) -> None:
        if number > after:
            out.append(event | {"sequence_number": number})

    emit(0, {"type": "response.created", "response": response_object(reply, "in_progress")})
    emit(1, {"type": "response.in_progress", "response": response_object(reply, "in_progress")})
    if not reply.reasoning and not reply.answering:
        return out  # no text yet: whether it thinks first is not known
    if reply.reasoning:
        length = len(reply.reasoning)
        item = reasoning_item(reply, done=False)
        emit(2, {"type": "response.output_item.added", "output_index": 0, "item": item})
        start = min(max(after - 2, 0), length)
        if start < length:
            emit(2 + length, {"type": "response.reasoning_text.delta", "item_id": item["id"], "output_index": 0,
                              "content_index": 0, "delta": reply.reasoning[start:]})
        if not reply.answering:
            return out
        emit(3 + length, {"type": "response.reasoning_text.done", "item_id": item["id"], "output_index": 0,
                          "content_index": 0, "text": reply.reasoning})
        emit(4 + length, {"type": "response.output_item.done", "output_index": 0,
                          "item": reasoning_item(reply, done=True)})
    at, index = base(reply), 1 if reply.reasoning else 0
    item_id = message_item_id(reply)
    emit(at, {"type": "response.output_item.added", "output_index": index,
              "item": {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress",
                       "content": []}})
    emit(at + 1, {"type": "response.content_part.added", "item_id": item_id, "output_index": index,
                  "content_index": 0, "part": output_text("")})
    length = len(reply.text)
    start = min(max(after - (at + 1), 0), length)
    if start < length:
        emit(at + 1 + length, {"type": "response.output_text.delta", "item_id": item_id, "output_index": index,
                               "content_index": 0, "delta": reply.text[start:], "logprobs": []})
    if not reply.ended:
        return out
    emit(at + 2 + length, {"type": "response.output_text.done", "item_id": item_id, "output_index": index,
                           "content_index": 0, "text": reply.text, "logprobs": []})
    emit(at + 3 + length, {"type": "response.content_part.done", "item_id": item_id, "output_index": index,
                           "content_index": 0, "part": output_text(reply.text)})
    emit(at + 4 + length, {"type": "response.output_item.done", "output_index": index,
                           "item": message_item(reply)})
    status = response_status(reply)
    kind = {"completed": "response.completed", "failed": "response.failed"}.get(status, "response.incomplete")
    emit(at + 5 + length, {"type": kind, "response": response_object(reply, status)})
    return out


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
    status = "completed" if response_status(reply) == "completed" else (
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
    if reply.answering or reply.ended:
        output.append(message_item(reply))
    obj = {
        "id": reply.response_id, "object": "response", "created_at": reply.created_at, "status": status,
        "model": reply.model, "output": output, "parallel_tool_calls": False, "tool_choice": "auto", "tools": [],
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
                    "duration_ms": stats.get("duration_ms")},
    }
