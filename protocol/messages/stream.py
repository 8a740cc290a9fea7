"""stream: what the coordinator publishes to a session's watchers (PUB -> SUB, topic = session id): a reply's
start, its texts and tool calls at offsets, its durable end, and changes of the session itself."""
from __future__ import annotations

from typing import Optional

from msgspec import field

from protocol.codec import Int, Message


class Started(Message, tag=20):
    session_id: str
    generation_id: str
    message_id: str
    prompt_hash: str
    preview: str
    prompt_tokens: Int
    dropped_message_ids: list[str] = field(default_factory=list)  # left out to fit the input budget (the newest
    # conversation.DROPPED_SHOWN of ``dropped_count``)
    max_input_tokens: Int = 0
    thinking_left_out: Int = 0  # earlier replies whose thinking the prompt leaves out (CHATTER_PROMPT_THINKING)
    # a preview longer than a piece is not sent here (``preview`` is ""): this is its length, and ``chatter
    # preview`` (the Preview request, paged) has it; -1: ``preview`` is the whole of it
    preview_length: Int = -1
    dropped_count: Int = 0


class StreamDelta(Message, tag=21):
    """Text of a reply at character ``offset``. Apply only when offset == len(text so far). A reply has two
    texts, each with its own offsets: the answer, and (``thinking``) the model's thinking before it."""

    session_id: str
    generation_id: str
    offset: Int
    text: str
    tokens: Int  # estimated tokens so far, thinking included
    first_received_at: float = 0.0  # when the generator read the oldest chunk in this text: delivery latency
    thinking: bool = False


class Final(Message, tag=22):
    """Published only after the persister acked the finalize: this is durable."""

    session_id: str
    generation_id: str
    message_id: str
    status: str
    length: Int
    content_hash: str
    stats: dict
    error: Optional[str] = None
    reasoning_length: Int = 0  # the thinking's length


class StreamToolCall(Message, tag=23):
    """A tool call of a reply growing: call ``index`` (its ``call_id`` and ``name`` once known), its arguments'
    text at ``offset``. Apply only when offset == the length of that call's arguments so far."""

    session_id: str
    generation_id: str
    index: Int
    call_id: str
    name: str
    offset: Int
    arguments: str


class SessionChanged(Message, tag=24):
    """The session itself changed, once the persister applied it: ``renamed`` (its ``title`` now), ``deleted`` (a
    watcher of it is told, and ends), ``branched`` (its active branch is another: a switch, an edit, a branch
    deleted; ``message_id`` is its leaf now), so that every window on one session agrees."""

    session_id: str
    change: str  # "renamed", "deleted" or "branched"
    title: str = ""
    message_id: str = ""


STREAM_EVENTS = (Started, StreamDelta, Final, StreamToolCall, SessionChanged)
