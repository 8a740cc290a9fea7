"""persist and persist-acks: the coordinator's operations for the persister (PUSH -> PULL, offsets, applied
once) and its answers (acks of durable lengths, its hello, totals, rejections)."""
from __future__ import annotations

from typing import Optional

import msgspec

from protocol.codec import Int, Message
from protocol.conversation import PromptMessage


class ContinuedPrompt(msgspec.Struct, array_like=True):
    """The prompt of a continuation, for the message row's prompt columns: by reference (``prompt_ref``; the
    copies are None, and were what an earlier version sent)."""

    prompt_messages: Optional[list[PromptMessage]]
    prompt_hash: str
    preview: Optional[str]
    prompt_ref: Optional[dict] = None


class Copied(msgspec.Struct, array_like=True):
    """What a message copied whole (a fork, an import) has beside a new one's columns: it is written final."""

    reasoning: str = ""
    stats: Optional[dict] = None
    error: Optional[str] = None
    content_hash: Optional[str] = None
    tool_calls: Optional[list[dict]] = None


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
    session_title_set: bool = False  # as ``SaveSession``'s
    parent_id: Optional[str] = None  # the message it follows ("" for a first one); it becomes the active leaf
    copied: Optional[Copied] = None  # a message copied whole (a fork, an import), written final at once
    # the session's active leaf once it is written, when that is not this message (an import's, whatever its order)
    session_active_leaf: Optional[str] = None
    session_owner: Optional[str] = None  # the gateway's user whose session it is (None: the administrator's)
    tool_call_id: Optional[str] = None  # a tool's result: the call it answers
    chain: Optional[str] = None  # a user's message's or a tool's result's ``turn_chain``


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
    session_title_set: bool = False  # the title was given by hand (``RenameSession``): kept over the automatic one
    active_leaf: Optional[str] = None  # the last message of the active branch (None: the newest message)
    session_owner: Optional[str] = None  # as ``CreateMessage``'s


class SaveToolCalls(Message, tag=56):
    """A streaming reply's tool calls as they stand (a checkpoint: the final ones go with its ``Finalize``)."""

    message_id: str
    tool_calls: list[dict]


class PurgeSessions(Message, tag=57):
    """Delete these sessions in one transaction: their rows, every message, the chunk log's text of them and their
    search entries; on SQLite its log is then copied into the file and emptied, so that the text is in neither.
    Resent by the coordinator until the persister answers ``SessionsPurged`` with the same ``op_id``."""

    session_ids: list[str]
    op_id: str


class PurgeMessages(Message, tag=58):
    """Delete these messages of one session (a branch) like a deleted session's: rows, chunk log, search entries,
    and the session's active leaf set to ``active_leaf``. Answered by ``SessionsPurged`` with the same ``op_id``
    (``deleted``: the message ids found)."""

    session_id: str
    message_ids: list[str]
    active_leaf: Optional[str]
    op_id: str


class SaveUser(Message, tag=59):
    """A user of the gateway as it stands: its token's sha256 (never the token), and when it was revoked (None:
    it may sign in). Answered by ``UserSaved`` with the same ``op_id``."""

    name: str
    token_hash: str
    created_at: float
    revoked_at: Optional[float]
    op_id: str


PERSIST_OPS = (CreateMessage, Append, Finalize, InterruptOrphans, Reopen, SaveSession, SaveToolCalls,
               PurgeSessions, PurgeMessages, SaveUser)


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


class SessionsPurged(Message, tag=66):
    """A ``PurgeSessions`` is applied: ``deleted`` are the ids it found (and deleted), in the order asked."""

    op_id: str
    deleted: list[str]


class UserSaved(Message, tag=67):
    op_id: str


PERSIST_ACKS = (PersistAck, PersisterHello, OrphansInterrupted, PersisterStats, PersistRejected, SessionSaved,
                SessionsPurged, UserSaved)
