"""A client's view of one reply, kept exact by offsets: the pure half of following a stream.

``apply`` takes stream events; a delta is applied only where its offset continues the text. A reply has two
texts, each with its own offsets: its answer, and a reasoning model's thinking before it.
Anything else is a replay (ignored) or a gap, and a gap sends the caller to ``snapshot``,
the ZeroMQ guide's Clone pattern: subscribe first, then snapshot, then drop what it covers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from protocol import messages as m
from protocol.lifecycle import FINAL, fresh_at
from protocol.conversation import tool_call_at

APPLIED, IGNORED, GAP = "applied", "ignored", "gap"
ENDED = FINAL


@dataclass
class TextView:
    """One text of a reply as parts, joined on demand: ``str +=`` on an attribute copies it all, O(n²) per reply."""

    parts: list[str] = field(default_factory=list)
    length: int = 0
    new: list[str] = field(default_factory=list)  # applied since the caller last took it

    @property
    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def set(self, value: str) -> None:
        self.parts[:] = [value] if value else []
        self.length = len(value)

    def apply(self, offset: int, text: str) -> str:
        fresh = fresh_at(self.length, offset, text)
        if fresh is None:
            return GAP
        if not fresh:
            return IGNORED  # a replay of text we have
        self.parts.append(fresh)
        self.length += len(fresh)
        self.new.append(fresh)
        return APPLIED

    def adopt(self, text: str, final: bool) -> None:
        """A snapshot's text: longer and continuing ours, or (final) the durable text it is cut to."""
        if len(text) > self.length and text.startswith(self.text):
            self.new.append(text[self.length:])
            self.set(text)
        elif len(text) < self.length and final:
            self.set(text)

    def take_new(self) -> str:
        out = "".join(self.new)
        self.new.clear()
        return out


@dataclass
class ReplyView:
    generation_id: str
    tokens: int = 0
    status: str = "queued"
    final: dict | None = None  # status, message_id, stats, error, content_hash once the reply is durable
    gaps: int = 0
    preview: str | None = None
    thinking_left_out: int = 0  # earlier replies whose thinking the prompt left out
    answer: TextView = field(default_factory=TextView)
    thinking: TextView = field(default_factory=TextView)
    kept_text: str | None = None  # set by ``cancel``: what this client had when it asked to stop
    tool_calls: list[dict] = field(default_factory=list)  # the tools it called, as OpenAI's API has them
    ended: object | None = None  # the snapshot of a reply that ended but is not durable yet

    @property
    def text(self) -> str:
        return self.answer.text

    @property
    def length(self) -> int:
        return self.answer.length

    @property
    def reasoning(self) -> str:
        return self.thinking.text

    def take_new_text(self) -> str:
        """Answer text to render since the last call; nothing once this client cancelled."""
        out = self.answer.take_new()
        return "" if self.kept_text is not None else out

    def take_new_thinking(self) -> str:
        """Thinking to render since the last call; nothing once this client cancelled."""
        out = self.thinking.take_new()
        return "" if self.kept_text is not None else out

    def cancel(self) -> tuple[int, int]:
        """This client stops the reply: the lengths to keep (answer, thinking) are what it has rendered, and
        nothing that arrives afterwards is rendered (the coordinator cuts the stored reply to the same)."""
        self.take_new_text()  # rendered already by the caller's last turn, or never
        self.take_new_thinking()
        self.kept_text = self.text
        return self.answer.length, self.thinking.length

    def apply(self, event: m.Message) -> str:
        if getattr(event, "generation_id", None) != self.generation_id:
            return IGNORED
        if isinstance(event, m.StreamDelta):
            result = (self.thinking if event.thinking else self.answer).apply(event.offset, event.text)
            if result == GAP:
                self.gaps += 1
            elif result == APPLIED:
                self.tokens = event.tokens
                self.status = "streaming"
            return result
        if isinstance(event, m.Final):
            if event.length > self.answer.length or event.reasoning_length > self.thinking.length:
                self.gaps += 1
                return GAP  # the tail went missing: only a snapshot can supply it
            self.answer.set(self.text[:event.length])  # a cancel may keep less than this view had
            self.thinking.set(self.reasoning[:event.reasoning_length])
            self.status = event.status
            self.final = {"status": event.status, "message_id": event.message_id, "stats": event.stats,
                          "error": event.error, "content_hash": event.content_hash}
            return APPLIED
        if isinstance(event, m.StreamToolCall):
            return self._apply_tool_call(event)
        if isinstance(event, m.Started):
            self.preview = event.preview
            self.thinking_left_out = event.thinking_left_out
            return APPLIED
        return IGNORED

    def _apply_tool_call(self, event: m.StreamToolCall) -> str:
        """A tool call's arguments grow by offset, as a text does; a call's index past the next one is a gap."""
        call = tool_call_at(self.tool_calls, event.index, event.call_id, event.name)
        if call is None:
            self.gaps += 1
            return GAP
        have = len(call["function"]["arguments"])
        if event.offset > have:
            self.gaps += 1
            return GAP
        if event.offset + len(event.arguments) <= have:
            return IGNORED
        call["function"]["arguments"] += event.arguments[have - event.offset:]
        return APPLIED

    def apply_snapshot(self, snap) -> str:
        # ``snap``: a protocol.answers.Snapshot
        """Adopt a snapshot of the session taken after subscribing. Returns APPLIED or IGNORED."""
        if snap.generation_id != self.generation_id:
            return IGNORED
        self.thinking.adopt(snap.reasoning, snap.final)
        self.answer.adopt(snap.text, snap.final)
        if len(json.dumps(snap.tool_calls)) >= len(json.dumps(self.tool_calls)) or snap.final:
            self.tool_calls = [dict(call, function=dict(call["function"])) for call in snap.tool_calls]
        if snap.final:
            self.status = snap.status
            self.final = {"status": snap.status, "message_id": snap.message_id, "stats": snap.stats,
                          "error": snap.error, "content_hash": None}
        elif snap.status in ENDED:
            self.ended = snap  # its text is all here; only its saving is pending
        return APPLIED

    def stop_waiting_for_durability(self) -> None:
        """The reply ended but is still not durable (the persister or its database is away): end this view
        with what it has, marked unsaved. The reply is saved when they are back; this client stops waiting."""
        snap = self.ended
        self.status = snap.status
        self.final = {"status": snap.status, "message_id": snap.message_id, "stats": snap.stats,
                      "error": snap.error, "content_hash": None, "unsaved": True}
