"""A client's view of one reply, kept exact by offsets: the pure half of following a stream.

``apply`` takes stream events; a delta is applied only where its offset continues the text.
Anything else is a replay (ignored) or a gap, and a gap sends the caller to ``snapshot``,
the ZeroMQ guide's Clone pattern: subscribe first, then snapshot, then drop what it covers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from protocol import messages as m

APPLIED, IGNORED, GAP = "applied", "ignored", "gap"
ENDED = ("completed", "cancelled", "error", "interrupted")


@dataclass
class ReplyView:
    generation_id: str
    tokens: int = 0
    status: str = "queued"
    final: dict | None = None  # status, message_id, stats, error, content_hash once the reply is durable
    gaps: int = 0
    preview: str | None = None
    new_text: list[str] = field(default_factory=list)  # applied since the caller last took it
    # the text as parts, joined on demand: ``str +=`` on an attribute copies it all, O(n²) per reply
    _parts: list[str] = field(default_factory=list, repr=False)
    length: int = 0
    kept_text: str | None = None  # set by ``cancel``: what this client had when it asked to stop
    ended: object | None = None  # the snapshot of a reply that ended but is not durable yet

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @text.setter
    def text(self, value: str) -> None:
        self._parts[:] = [value] if value else []
        self.length = len(value)

    def take_new_text(self) -> str:
        """Text to render since the last call; nothing once this client cancelled."""
        out = "" if self.kept_text is not None else "".join(self.new_text)
        self.new_text.clear()
        return out

    def cancel(self) -> int:
        """This client stops the reply: the length to keep is what it has rendered, and nothing that
        arrives afterwards is rendered (the coordinator cuts the stored reply to the same length)."""
        self.take_new_text()  # rendered already by the caller's last turn, or never
        self.kept_text = self.text
        return self.length

    def apply(self, event: m.Message) -> str:
        if getattr(event, "generation_id", None) != self.generation_id:
            return IGNORED
        if isinstance(event, m.StreamDelta):
            return self._apply_delta(event.offset, event.text, event.tokens)
        if isinstance(event, m.Final):
            if event.length > self.length:
                self.gaps += 1
                return GAP  # the tail went missing: only a snapshot can supply it
            self.text = self.text[:event.length]  # a cancel may keep less than this view had
            self.status = event.status
            self.final = {"status": event.status, "message_id": event.message_id, "stats": event.stats,
                          "error": event.error, "content_hash": event.content_hash}
            return APPLIED
        if isinstance(event, m.Started):
            self.preview = event.preview
            return APPLIED
        return IGNORED

    def _apply_delta(self, offset: int, text: str, tokens: int) -> str:
        have = self.length
        if offset > have:
            self.gaps += 1
            return GAP
        if offset + len(text) <= have:
            return IGNORED  # a replay of text we have
        fresh = text[have - offset:]
        self._parts.append(fresh)
        self.length += len(fresh)
        self.new_text.append(fresh)
        self.tokens = tokens
        self.status = "streaming"
        return APPLIED

    def apply_snapshot(self, snap) -> str:
        # ``snap``: a protocol.results.Snapshot
        """Adopt a snapshot of the session taken after subscribing. Returns APPLIED or IGNORED."""
        if snap.generation_id != self.generation_id:
            return IGNORED
        text = snap.text
        if len(text) > self.length and text.startswith(self.text):
            self.new_text.append(text[self.length:])
            self.text = text
        elif len(text) < self.length and snap.final:
            self.text = text  # final and shorter: cut to the durable reply
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
