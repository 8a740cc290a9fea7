"""Every message Chatter's processes exchange, defined once.

Type ids are the wire bytes and never change meaning. Channels (see ``transport``, the package of sockets and endpoints):
rpc (client <-> coordinator), stream (coordinator -> clients, topic = session id, see ``transport.published``),
jobs (coordinator -> generators), gen-events (generators -> coordinator),
control (coordinator -> generators), persist and persist-acks (coordinator <-> persister).
"""
from __future__ import annotations

from typing import Annotated, Optional

import msgspec
from msgspec import Meta, field

from protocol import codec
from protocol.codec import PIECE_CHARS, Int, Message
from protocol.records import MessageRecord, PromptMessage

__all_records__ = (MessageRecord,)  # part of this schema: m.MessageRecord
from protocol import results

# What enters through rpc is bounded here, at decode: a request out of range is refused with the field's
# name, before any handler or database sees it. Counts and lengths fit a 32-bit integer column
# (PostgreSQL's ``integer``); ids and names fit their ``varchar`` columns.
Id = Annotated[str, Meta(max_length=64)]
RequestKey = Annotated[str, Meta(max_length=128)]
ModelName = Annotated[str, Meta(max_length=128)]
Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]
SessionsLimit = Annotated[int, Meta(ge=1, le=100_000)]

# ---------------------------------------------------------------- rpc: client -> coordinator


class NewSession(Message, tag=1):
    req_id: Int
    system: Optional[str] = None
    model: Optional[ModelName] = None
    max_input_tokens: Optional[Count] = None  # this session's input budget; default CHATTER_MAX_INPUT_TOKENS
    # saved at once (``SaveSession``); False: made for the message sent next, and stored with it (a refused
    # message then leaves no empty session behind: ``chatter send`` without ``--session``)
    save: bool = True


class Send(Message, tag=2):
    req_id: Int
    session_id: Id
    text: str
    client_request_id: RequestKey
    model: Optional[ModelName] = None


class Cancel(Message, tag=3):
    """Stop a session's active generation. ``seen_len`` is how much text the canceller
    had rendered: the kept reply is cut to it, so what the user saw is what is stored."""

    req_id: Int
    session_id: Id
    generation_id: Optional[Id] = None
    seen_len: Optional[Count] = None
    seen_reasoning_len: Optional[Count] = None  # the same for the thinking: a cancel mid-thought keeps what was seen


class Snapshot(Message, tag=4):
    """A session's active (else last) reply, or one generation's when ``generation_id`` is given. Paged: the
    answer holds its texts from these offsets on, as much as fits a frame, and says if there is ``more``
    (``Client.snapshot`` asks for each page in turn)."""

    req_id: Int
    session_id: Id
    generation_id: Optional[Id] = None
    offset: Count = 0
    reasoning_offset: Count = 0


class Status(Message, tag=5):
    req_id: Int
    session_id: Optional[Id] = None  # also report this session's context use


class History(Message, tag=6):
    """A session's messages, paged: from ``message_id`` (None: the first), whose texts go on from these
    offsets, as many as fit a frame; the answer's ``next`` is where the next page starts."""

    req_id: Int
    session_id: Id
    message_id: Optional[Id] = None
    offset: Count = 0
    reasoning_offset: Count = 0


class Preview(Message, tag=7):
    """The exact prompt of a reply, paged: its preview text from ``preview_offset``, then its messages from
    ``index`` (the first one's content from ``offset``), as much as fits a frame."""

    req_id: Int
    message_id: Id
    preview_offset: Count = 0
    index: Count = 0
    offset: Count = 0


class Regenerate(Message, tag=8):
    """Cancel the session's streaming reply if any, supersede the last reply, answer the last user turn again."""

    req_id: Int
    session_id: Id
    client_request_id: RequestKey


class Continue(Message, tag=13):
    """Continue the session's last reply where it was cut (length, cancelled, error, interrupted): the same
    message grows, by a new generation whose prompt ends with the reply so far (CHATTER_CONTINUE_STYLE)."""

    req_id: Int
    session_id: Id
    client_request_id: RequestKey


class Sessions(Message, tag=10):
    """The most recently active sessions, a page of at most ``limit`` (fewer when a frame holds fewer): those
    before (``before``, ``before_id``), the last activity and id of the previous page's last one."""

    req_id: Int
    limit: SessionsLimit = 50
    before: Optional[Annotated[float, Meta(ge=0)]] = None
    before_id: Optional[Id] = None


class ResolveSession(Message, tag=12):
    """The one session whose id starts with ``prefix`` (in memory or in the database), or a refusal naming
    how many match."""

    req_id: Int
    prefix: Id


class ConfigureSession(Message, tag=11):
    """Change a session's settings from its next reply on. ``None`` leaves one as it is; an empty system
    prompt clears it; a budget of 0 means the default. ``params`` may set ``temperature``, ``max_tokens``
    and ``stream`` (a ``None`` value unsets one)."""

    req_id: Int
    session_id: Id
    system: Optional[str] = None
    max_input_tokens: Optional[Count] = None
    model: Optional[ModelName] = None
    params: Optional[Annotated[dict, Meta(max_length=16)]] = None


class Reply(Message, tag=9):
    """The coordinator's answer to any rpc request."""

    req_id: Int
    ok: bool
    result: Optional[results.ANY] = None  # typed by the request (protocol/results.py); None when refused
    error: Optional[str] = None


RPC_REQUESTS = (NewSession, Send, Cancel, Snapshot, Status, History, Preview, Regenerate, Sessions,
                ConfigureSession, ResolveSession, Continue)

# ---------------------------------------------------------------- stream: coordinator -> clients


class Started(Message, tag=20):
    session_id: str
    generation_id: str
    message_id: str
    prompt_hash: str
    preview: str
    prompt_tokens: Int
    dropped_message_ids: list[str] = field(default_factory=list)  # left out to fit the input budget (the newest
    # records.DROPPED_SHOWN of ``dropped_count``)
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


STREAM_EVENTS = (Started, StreamDelta, Final, StreamToolCall)

# ---------------------------------------------------------------- jobs and control


class Job(Message, tag=30):
    generation_id: str
    messages: list[PromptMessage]  # sent upstream as they are
    model: str
    params: dict  # sent upstream as they are (temperature, max_tokens, ...): part of the prompt hash
    prompt_hash: str
    stream: Optional[bool] = None  # None: the generator's default (CHATTER_STREAM)
    # a continuation (the prompt ends with the reply so far): its texts go on from these seqs and lengths...
    seq_from: Int = 0
    length_from: Int = 0
    reasoning_seq_from: Int = 0
    reasoning_length_from: Int = 0
    # ...the server may repeat the prefilled reply first (llama-server): stripped once, where the stream begins
    # with it; and thinking is over once an answer began (its <think> tags are not looked for)
    strip_prefix: str = ""
    think_tags: str = ""  # "": the generator's CHATTER_THINK_TAGS


class JobPiece(Message, tag=34):
    """More of a job's text: a job whose prompt is larger than a frame goes as one multipart message (zmq
    delivers its frames together, to one generator), the ``Job`` with each long text cut to its first piece, then
    these in order. ``message`` is the index of the message whose content ``text`` goes on, or -1 for the job's
    ``strip_prefix``."""

    message: Int
    text: str


def job_frames(job: Job) -> list[bytes]:
    """A job as the frames of one multipart message, each of which fits (one frame for the usual job)."""
    texts = [str(msg.get("content", "")) for msg in job.messages] + [job.strip_prefix]
    if sum(len(text) for text in texts) <= PIECE_CHARS:
        return [job.encode()]
    pieces = [codec.pieces(text) for text in texts]
    head = msgspec.structs.replace(
        job, messages=[{**msg, "content": parts[0]} for msg, parts in zip(job.messages, pieces)],
        strip_prefix=pieces[-1][0])
    frames = [head.encode()]
    for index, parts in enumerate(pieces):
        frames += [JobPiece(-1 if index == len(job.messages) else index, part).encode() for part in parts[1:]]
    return frames


def job_of(frames: list[bytes]) -> Job:
    """The job of a multipart message (``job_frames``); a ``FrameError`` for any frame that is not right."""
    job = codec.decode(frames[0], (Job,))
    more: dict[int, list[str]] = {}
    for frame in frames[1:]:
        piece = codec.decode(frame, (JobPiece,))
        if not -1 <= piece.message < len(job.messages):
            raise codec.BadField(f"JobPiece.message: {piece.message} is not a message of its job")
        more.setdefault(piece.message, []).append(piece.text)
    if more:
        for index, parts in more.items():
            if index == -1:
                job.strip_prefix += "".join(parts)
            else:
                job.messages[index] = {**job.messages[index], "content": job.messages[index]["content"] + "".join(parts)}
    return job


class CancelGeneration(Message, tag=31):
    generation_id: str


class CoordinatorHeartbeat(Message, tag=32):
    sent_at: float
    instance: str = ""  # random per coordinator start: a generator that sees it change announces its generations


class ResumeGeneration(Message, tag=33):
    """A restarted coordinator adopts a generation: its holder sends the text beyond these offsets (the durable
    ones) in one ``GenCatchUp``, then goes on (or resends how it ended). Others ignore it."""

    generation_id: str
    offset: Int
    reasoning_offset: Int = 0


CONTROL_TOPIC_ALL = b""  # generators subscribe to everything on control: cancels are rare

# ---------------------------------------------------------------- gen-events: generator -> coordinator


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

# ---------------------------------------------------------------- persist: coordinator -> persister


class ContinuedPrompt(msgspec.Struct, array_like=True):
    """The prompt of a continuation, for the message row's prompt columns: by reference (``prompt_ref``; the
    copies are None, and were what an earlier version sent)."""

    prompt_messages: Optional[list[PromptMessage]]
    prompt_hash: str
    preview: Optional[str]
    prompt_ref: Optional[dict] = None


class CreateMessage(Message, tag=50):
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
    prompt_messages: Optional[list[PromptMessage]] = None
    prompt_hash: Optional[str] = None
    preview: Optional[str] = None
    model: Optional[str] = None
    params: Optional[dict] = None
    client_request_id: Optional[str] = None
    supersedes: Optional[list[str]] = None  # earlier replies this one replaces (regenerate)
    session_max_input_tokens: Optional[Int] = None
    dropped_message_ids: Optional[list[str]] = None
    session_model: Optional[str] = None  # the session's own model and ``/config`` settings (None: defaults)
    session_settings: Optional[dict] = None
    prompt_ref: Optional[dict] = None  # the prompt by reference (``MessageRecord.prompt_ref``), not a copy


class Append(Message, tag=51):
    """Text at ``offset`` of a message's answer (or of its ``thinking``, a text of its own with its own
    offsets). Applied only where it continues the stored text."""

    message_id: str
    offset: Int
    text: str
    thinking: bool = False


class Finalize(Message, tag=52):
    message_id: str
    status: str
    length: Int
    content_hash: str
    stats: dict
    error: Optional[str] = None
    reasoning_length: Int = 0  # the thinking's length: a cancel may keep less than was checkpointed
    # a reply continued after a fault: the prompt of its last segment, which the row's prompt columns take
    prompt: Optional[ContinuedPrompt] = None
    tool_calls: Optional[list[dict]] = None  # the tools it called (``MessageRecord.tool_calls``)


class Reopen(Message, tag=54):
    """A finalized reply is continued (``chatter continue``): it streams again, as ``generation_id``, from its
    stored texts, with this prompt. The texts are the row's own, of ``length`` and ``reasoning_length``
    characters (the persister reads them: a long reply would not fit a frame); ``content`` and ``reasoning``
    carried them in an earlier version, and do when the lengths are -1."""

    message_id: str
    generation_id: str
    content: str
    reasoning: str
    prompt: ContinuedPrompt
    length: Int = -1
    reasoning_length: Int = -1


class InterruptOrphans(Message, tag=53):
    """Every streaming message not in ``live_message_ids`` has no generation behind it: mark it
    ``interrupted``. Resent by the coordinator until the persister answers ``OrphansInterrupted`` with the same
    ``sweep``: an answer queued for a coordinator that died (the persister's socket delivers it to the next one)
    answers that one's sweep, not the new coordinator's."""

    reason: str
    live_message_ids: list[str]
    sweep: str  # the coordinator instance's id and the sweep's number


class SaveSession(Message, tag=55):
    """A session's row as it stands, before any message is in it: a new session (``/new``, the window's New
    session) and changed settings (``/config``: the system prompt, input budget, model, request settings) are
    kept across a coordinator's restart. Resent by the coordinator until the persister answers
    ``SessionSaved``; a message's ``CreateMessage`` carries the same columns."""

    session_id: str
    session_title: str
    session_system: Optional[str]
    session_max_input_tokens: Optional[Int]
    created_at: float  # a new row's created_at; a stored one keeps its own and takes this as updated_at
    session_model: Optional[str] = None
    session_settings: Optional[dict] = None


class SaveToolCalls(Message, tag=56):
    """A streaming reply's tool calls as they stand (a checkpoint: the final ones go with its ``Finalize``)."""

    message_id: str
    tool_calls: list[dict]


PERSIST_OPS = (CreateMessage, Append, Finalize, InterruptOrphans, Reopen, SaveSession, SaveToolCalls)


class PersistAck(Message, tag=60):
    message_id: str
    length: Int
    finalized: bool
    reasoning_length: Int = 0  # the thinking's durable length


class PersisterHello(Message, tag=61):
    """A persister that (re)started: the coordinator answers with the live messages and resends."""

    started_at: float
    pid: Int = 0


class OrphansInterrupted(Message, tag=62):
    count: Int
    sweep: str  # the ``InterruptOrphans`` answered


class PersisterStats(Message, tag=63):
    """The persister's running totals, sent at most a few times a second while it commits."""

    pid: Int
    commits: Int
    ops: Int
    reply_text_bytes: Int  # UTF-8 bytes of reply text written: checkpoint appends plus final contents
    failed_batches: Int
    ops_rejected: Int = 0  # operations that failed alone and were dropped (their replies end as error)
    failing_since: Optional[float] = None  # wall clock of the first failure of the current run, None if healthy
    last_error: Optional[str] = None  # the database's own words for it
    frames_dropped: Int = 0  # answers it could not send while the coordinator was unreachable (resent since)
    last_failed_at: Optional[float] = None  # wall clock of the last failure of its database, kept once it passed
    last_failure: Optional[str] = None


class PersistRejected(Message, tag=64):
    """An operation on ``message_id`` (or a ``SaveSession``'s session id) failed alone, deterministically, and
    was dropped: the coordinator stops resending it and ends the reply as error with ``reason``."""

    message_id: str
    reason: str


class SessionSaved(Message, tag=65):
    """A ``SaveSession`` is applied: its session's row is in the database as of ``saved_at`` (the save's
    ``created_at``; an answer to an older save does not end the resending of a newer one)."""

    session_id: str
    saved_at: Optional[float] = None


PERSIST_ACKS = (PersistAck, PersisterHello, OrphansInterrupted, PersisterStats, PersistRejected, SessionSaved)


# ---------------------------------------------------------------- any point-to-point channel


class Bundle(Message, tag=90):
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


codec.register(*[cls for cls in list(globals().values())
                 if isinstance(cls, type) and issubclass(cls, Message) and cls is not Message])
