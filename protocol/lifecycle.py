"""A reply's life, in one place: its statuses, the moves allowed between them, which are final and which can be
continued, and the one rule of its texts: text at an offset is applied only where it continues what is there.
The coordinator, the persister, the store and every client follow these; none writes them again."""
from __future__ import annotations

import enum


class Status(enum.StrEnum):
    """A reply's status: its wire and column value is the word itself."""

    QUEUED = "queued"
    STREAMING = "streaming"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ERROR = "error"
    INTERRUPTED = "interrupted"


FINAL = frozenset({Status.COMPLETED, Status.CANCELLED, Status.ERROR, Status.INTERRUPTED})
# a reply ended by one of these can go on (``chatter continue``); a completed one only when cut by the length limit
CUT = frozenset({Status.CANCELLED, Status.ERROR, Status.INTERRUPTED})
# replies shown in history but never sent to the model again
NOT_PROMPTED = frozenset({Status.QUEUED, Status.STREAMING}) | CUT

# The moves a reply may make. Queued and streaming may go back to queued: a generator lost before the first
# token, or a restarted coordinator with no generator for it, runs it again. A final reply moves only when it is
# continued (queued again, the same message growing), or to error when its end could not be stored.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.QUEUED, Status.STREAMING}) | FINAL,
    Status.STREAMING: frozenset({Status.STREAMING, Status.QUEUED}) | FINAL,
    **{status: frozenset({status, Status.QUEUED, Status.ERROR}) for status in FINAL},
}


class IllegalMove(ValueError):
    """A status change the lifecycle does not allow: a bug, said in words."""


def move(current: str, new: str) -> Status:
    """``new``, once checked against the table: a reply in ``current`` may become it. Raises ``IllegalMove``."""
    try:
        to = Status(new)
        allowed = TRANSITIONS[Status(current)]
    except ValueError:
        raise IllegalMove(f"{current!r} -> {new!r}: not statuses of a reply") from None
    if to not in allowed:
        raise IllegalMove(f"a {current} reply cannot become {new}")
    return to


def is_final(status: str) -> bool:
    return status in FINAL


def continuable(status: str, finish_reason: str | None) -> bool:
    """Whether a reply that ended so can go on as the same message: one cut by a stop, an error, an interruption
    or the length limit."""
    return status in CUT or (status == Status.COMPLETED and finish_reason == "length")


def fresh_at(have: int, offset: int, text: str) -> str | None:
    """The part of ``text``, which begins at ``offset``, that continues a text ``have`` characters long: "" when it
    brings nothing new (a replay), None when it begins past the end (a gap)."""
    if offset > have:
        return None
    return text[have - offset:]
