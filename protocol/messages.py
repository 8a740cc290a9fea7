"""Every message Chatter's processes exchange, defined once.

Type ids are the wire bytes and never change meaning. Channels (see ``protocol.transport``):
rpc (client <-> coordinator), stream (coordinator -> clients, topic = session id, see ``transport.published``),
jobs (coordinator -> generators), gen-events (generators -> coordinator),
control (coordinator -> generators), persist and persist-acks (coordinator <-> persister).
"""
from __future__ import annotations

from dataclasses import field
from typing import Annotated, Optional

from protocol import codec
from protocol.codec import MaxLen, Message, Range, message

# What enters through rpc is bounded here, at decode: a request out of range is refused with the field's
# name, before any handler or database sees it. Counts and lengths fit a 32-bit integer column
# (PostgreSQL's ``integer``); ids and names fit their ``varchar`` columns.
Id = Annotated[str, MaxLen(64)]
RequestKey = Annotated[str, MaxLen(128)]
ModelName = Annotated[str, MaxLen(128)]
Count = Annotated[int, Range(0, 2**31 - 1)]
SessionsLimit = Annotated[int, Range(1, 100_000)]

# ---------------------------------------------------------------- rpc: client -> coordinator


@message(1)
class NewSession(Message):
    req_id: int
    system: Optional[str] = None
    model: Optional[ModelName] = None
    max_input_tokens: Optional[Count] = None  # this session's input budget; default CHATTER_MAX_INPUT_TOKENS


@message(2)
class Send(Message):
    req_id: int
    session_id: Id
    text: str
    client_request_id: RequestKey
    model: Optional[ModelName] = None


@message(3)
class Cancel(Message):
    """Stop a session's active generation. ``seen_len`` is how much text the canceller
    had rendered: the kept reply is cut to it, so what the user saw is what is stored."""

    req_id: int
    session_id: Id
    generation_id: Optional[Id] = None
    seen_len: Optional[Count] = None


@message(4)
class Snapshot(Message):
    """A session's active (else last) reply, or one generation's when ``generation_id`` is given."""

    req_id: int
    session_id: Id
    generation_id: Optional[Id] = None


@message(5)
class Status(Message):
    req_id: int
    session_id: Optional[Id] = None  # also report this session's context use


@message(6)
class History(Message):
    req_id: int
    session_id: Id


@message(7)
class Preview(Message):
    req_id: int
    message_id: Id


@message(8)
class Regenerate(Message):
    """Cancel the session's streaming reply if any, supersede the last reply, answer the last user turn again."""

    req_id: int
    session_id: Id
    client_request_id: RequestKey


@message(10)
class Sessions(Message):
    req_id: int
    limit: SessionsLimit = 50


@message(11)
class ConfigureSession(Message):
    """Change a session's settings from its next reply on. ``None`` leaves one as it is; an empty system
    prompt clears it; a budget of 0 means the default. ``params`` may set ``temperature``, ``max_tokens``
    and ``stream`` (a ``None`` value unsets one)."""

    req_id: int
    session_id: Id
    system: Optional[str] = None
    max_input_tokens: Optional[Count] = None
    model: Optional[ModelName] = None
    params: Optional[Annotated[dict, MaxLen(16)]] = None


@message(9)
class Reply(Message):
    """The coordinator's answer to any rpc request."""

    req_id: int
    ok: bool
    result: dict = field(default_factory=dict)
    error: Optional[str] = None


RPC_REQUESTS = (NewSession, Send, Cancel, Snapshot, Status, History, Preview, Regenerate, Sessions,
                ConfigureSession)

# ---------------------------------------------------------------- stream: coordinator -> clients


@message(20)
class Started(Message):
    session_id: str
    generation_id: str
    message_id: str
    prompt_hash: str
    preview: str
    prompt_tokens: int
    dropped_message_ids: list = field(default_factory=list)  # left out to fit the input budget
    max_input_tokens: int = 0


@message(21)
class StreamDelta(Message):
    """Text of a reply at character ``offset``. Apply only when offset == len(text so far)."""

    session_id: str
    generation_id: str
    offset: int
    text: str
    tokens: int  # estimated tokens so far
    first_received_at: float = 0.0  # when the generator read the oldest chunk in this text: delivery latency


@message(22)
class Final(Message):
    """Published only after the persister acked the finalize: this is durable."""

    session_id: str
    generation_id: str
    message_id: str
    status: str
    length: int
    content_hash: str
    stats: dict
    error: Optional[str] = None


STREAM_EVENTS = (Started, StreamDelta, Final)

# ---------------------------------------------------------------- jobs and control


@message(30)
class Job(Message):
    generation_id: str
    messages: list
    model: str
    params: dict  # sent upstream as they are (temperature, max_tokens, ...): part of the prompt hash
    prompt_hash: str
    stream: Optional[bool] = None  # None: the generator's default (CHATTER_STREAM)


@message(31)
class CancelGeneration(Message):
    generation_id: str


@message(32)
class CoordinatorHeartbeat(Message):
    sent_at: float


CONTROL_TOPIC_ALL = b""  # generators subscribe to everything on control: cancels are rare

# ---------------------------------------------------------------- gen-events: generator -> coordinator


@message(40)
class GenStarted(Message):
    generation_id: str
    generator_id: str


@message(41)
class GenDelta(Message):
    generation_id: str
    seq: int
    text: str
    tokens: int
    received_at: float  # wall clock when the generator read the upstream chunk


@message(46)
class GenDeltaBatch(Message):
    """Deltas of many generations in one frame, in order: a generator sends one frame per event-loop
    turn instead of one per chunk. Each item is ``[generation_id, seq, text, tokens, received_at]``."""

    deltas: list


_DELTA_ITEM_TYPES = (str, int, str, int, (float, int))


def unpack_deltas(batch: GenDeltaBatch) -> tuple[list[GenDelta], int]:
    """The batch's valid deltas, and how many items were malformed (dropped and counted, like bad frames)."""
    good, bad = [], 0
    for item in batch.deltas:
        if (isinstance(item, (list, tuple)) and len(item) == 5
                and all(isinstance(v, t) and v is not True and v is not False
                        for v, t in zip(item, _DELTA_ITEM_TYPES))):
            good.append(GenDelta(*item))
        else:
            bad += 1
    return good, bad


@message(42)
class GenDone(Message):
    generation_id: str
    last_seq: int
    length: int
    finish_reason: str
    completion_tokens: int
    tokens_source: str  # "server" or "estimated"
    prompt_tokens: Optional[int] = None


@message(43)
class GenError(Message):
    generation_id: str
    last_seq: int
    reason: str
    attempts: int


@message(44)
class GenCancelled(Message):
    generation_id: str
    last_seq: int


@message(45)
class GeneratorHeartbeat(Message):
    generator_id: str
    capacity_free: int
    active: int
    retries: int
    pid: int = 0


GEN_EVENTS = (GenStarted, GenDelta, GenDeltaBatch, GenDone, GenError, GenCancelled, GeneratorHeartbeat)

# ---------------------------------------------------------------- persist: coordinator -> persister


@message(50)
class CreateMessage(Message):
    """Create a session (if new) and one message in it. Idempotent by message id."""

    message_id: str
    session_id: str
    session_title: str
    session_system: Optional[str]
    role: str
    content: str
    status: str
    created_at: float
    generation_id: Optional[str] = None
    prompt_messages: Optional[list] = None
    prompt_hash: Optional[str] = None
    preview: Optional[str] = None
    model: Optional[str] = None
    params: Optional[dict] = None
    client_request_id: Optional[str] = None
    supersedes: Optional[list] = None  # earlier replies this one replaces (regenerate)
    session_max_input_tokens: Optional[int] = None
    dropped_message_ids: Optional[list] = None


@message(51)
class Append(Message):
    """Text at ``offset`` of a message. Applied only where it continues the stored text."""

    message_id: str
    offset: int
    text: str


@message(52)
class Finalize(Message):
    message_id: str
    status: str
    length: int
    content_hash: str
    stats: dict
    error: Optional[str] = None


@message(53)
class InterruptOrphans(Message):
    """Every streaming message not in ``live_message_ids`` has no generation behind it: mark it
    ``interrupted``. Resent by the coordinator until the persister answers ``OrphansInterrupted``."""

    reason: str
    live_message_ids: list


PERSIST_OPS = (CreateMessage, Append, Finalize, InterruptOrphans)


@message(60)
class PersistAck(Message):
    message_id: str
    length: int
    finalized: bool


@message(61)
class PersisterHello(Message):
    """A persister that (re)started: the coordinator answers with the live messages and resends."""

    started_at: float
    pid: int = 0


@message(62)
class OrphansInterrupted(Message):
    count: int


@message(63)
class PersisterStats(Message):
    """The persister's running totals, sent at most a few times a second while it commits."""

    pid: int
    commits: int
    ops: int
    reply_text_bytes: int  # UTF-8 bytes of reply text written: checkpoint appends plus final contents
    failed_batches: int
    ops_rejected: int = 0  # operations that failed alone and were dropped (their replies end as error)
    failing_since: Optional[float] = None  # wall clock of the first failure of the current run, None if healthy
    last_error: Optional[str] = None  # the database's own words for it


@message(64)
class PersistRejected(Message):
    """An operation on ``message_id`` failed alone, deterministically, and was dropped: the coordinator stops
    resending it and ends the reply as error with ``reason``."""

    message_id: str
    reason: str


PERSIST_ACKS = (PersistAck, PersisterHello, OrphansInterrupted, PersisterStats, PersistRejected)


# ---------------------------------------------------------------- any point-to-point channel


@message(90)
class Bundle(Message):
    """Several encoded frames in one, in order: a sender with many messages for one peer in a loop turn
    sends them with one zmq call (the persist and persist-acks channels). Each item is validated as a
    frame of its own when it is unbundled; a bundle never holds a bundle."""

    frames: list


BUNDLE_BYTES = 1 << 20  # a bundle stays well under the frame limit


def bundle(frames: list[bytes]) -> list[bytes]:
    """The frames to send for ``frames``: one bundle per ~1 MiB, or a frame alone when only one is left."""
    out, group, size = [], [], 0
    for frame in frames:
        if group and size + len(frame) > BUNDLE_BYTES:
            out.append(_pack(group))
            group, size = [], 0
        group.append(frame)
        size += len(frame) + 5  # msgpack's bin header
    if group:
        out.append(_pack(group))
    return out


def _pack(group: list[bytes]) -> bytes:
    return group[0] if len(group) == 1 else Bundle(group).encode()


def unbundle(msg, expect: tuple) -> tuple[list, list]:
    """A decoded frame as the messages it carries: itself, or a bundle's items (each validated against
    ``expect``). Returns (messages, FrameErrors of the items that were dropped)."""
    if not isinstance(msg, Bundle):
        return [msg], []
    good, errors = [], []
    for item in msg.frames:
        try:
            if not isinstance(item, bytes):
                raise codec.BadField(f"Bundle item must be bytes, got {type(item).__name__}")
            good.append(codec.decode(item, expect))
        except codec.FrameError as err:
            errors.append(err)
    return good, errors
