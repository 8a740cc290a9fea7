"""gen-events: what the generators tell the coordinator (PUSH -> PULL): a stream's start, its deltas (seq),
tool calls, end or error, heartbeats, and after a coordinator's restart their live generations and catch-ups."""
from __future__ import annotations

from typing import Optional

import msgspec

from protocol.codec import Int, Message
from protocol.messages.rpc import Count


class GenStarted(Message, tag=40):
    generation_id: str
    generator_id: str


class GenDelta(Message, tag=41):
    """Text of a generation. The answer and the thinking (``thinking``) are two texts, each numbered by its
    own seq from 1."""

    generation_id: str
    seq: Int
    text: str
    tokens: Int
    received_at: float  # wall clock when the generator read the upstream chunk
    thinking: bool = False


class DeltaItem(msgspec.Struct, array_like=True):
    """One delta inside a ``GenDeltaBatch``: the fields of ``GenDelta``, without a type of its own (an answer's
    item leaves ``thinking`` out)."""

    generation_id: str
    seq: Int
    text: str
    tokens: Int
    received_at: float
    thinking: bool = False


class GenDeltaBatch(Message, tag=46):
    """Deltas of many generations in one frame, in order: a generator sends one frame per event-loop
    turn instead of one per chunk. Each item is ``[generation_id, seq, text, tokens, received_at]``; a
    batch with a bad item is a bad frame (its deltas' generations then see a gap, and end as error)."""

    deltas: list[DeltaItem]


class GenToolCall(Message, tag=49):
    """A tool call's delta from upstream: call ``index``, its id and function name when the server first sends
    them (else ""), and more of its arguments' text."""

    generation_id: str
    index: Int
    call_id: str
    name: str
    arguments: str


class GenDone(Message, tag=42):
    generation_id: str
    last_seq: Int
    length: Int
    finish_reason: str
    completion_tokens: Int
    tokens_source: str  # "server" or "estimated"
    prompt_tokens: Optional[Int] = None
    streamed: bool = True  # False: one non-streaming request, so no speed or first token was measured
    reasoning_last_seq: Int = 0  # the thinking's own seq and length
    reasoning_length: Int = 0
    reasoning_tokens: Int = 0  # part of completion_tokens
    reasoning_tokens_source: str = "estimated"  # "server": usage's completion_tokens_details.reasoning_tokens


class GenError(Message, tag=43):
    generation_id: str
    last_seq: Int
    reason: str
    attempts: Int


class GenCancelled(Message, tag=44):
    generation_id: str
    last_seq: Int


class GeneratorHeartbeat(Message, tag=45):
    generator_id: str
    capacity_free: Int
    active: Int
    retries: Int
    pid: Int = 0
    contexts: Optional[dict[str, Count]] = None  # model -> context length in tokens, as the server tells it
    server: str = ""  # what its server says it is (/v1/models owned_by: "vllm", "llamacpp"): the continue style


class LiveGeneration(msgspec.Struct, array_like=True):
    """One generation a generator holds, in a ``GenAnnounce``: its seqs and lengths, and whether its stream
    already ended (its end is resent after the catch-up)."""

    generation_id: str
    seq: Int
    length: Int
    reasoning_seq: Int = 0
    reasoning_length: Int = 0
    ended: bool = False


class GenAnnounce(Message, tag=47):
    """A generator that saw a new coordinator instance: the generations it holds, live or recently ended, so
    that the new coordinator adopts them instead of sweeping them as orphans."""

    generator_id: str
    generations: list[LiveGeneration]


class GenCatchUp(Message, tag=48):
    """The answer to ``ResumeGeneration``: each text from the asked offset to what the generator has, and the
    seq it has reached in each; deltas after it continue from those seqs."""

    generation_id: str
    seq: Int
    offset: Int
    text: str
    reasoning_seq: Int = 0
    reasoning_offset: Int = 0
    reasoning: str = ""
    more: bool = False  # a text longer than a frame comes in several catch-ups, each going on from the last
    tool_calls: Optional[list[dict]] = None  # the last one's: every tool call the generator has, whole


GEN_EVENTS = (GenStarted, GenDelta, GenDeltaBatch, GenDone, GenError, GenCancelled, GeneratorHeartbeat, GenAnnounce,
              GenCatchUp, GenToolCall)
