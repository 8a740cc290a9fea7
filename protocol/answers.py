"""What the coordinator answers to each rpc request (the ``result`` of a ``Reply``; the requests themselves are in
``messages``), typed. Each is a msgspec struct sent as a msgpack map tagged by ``kind``, so a client reads fields,
never a dict's keys with defaults, and a field that is missing or ill-typed fails at decode.

Not on the per-delta hot path: these go once per request."""
from __future__ import annotations

from typing import Optional, Union

import msgspec
from msgspec import field

from protocol.codec import Int
from protocol.conversation import MessageRecord, MessageView, PromptMessage, SessionRecord


class Result(msgspec.Struct, kw_only=True, tag_field="kind"):
    pass


class SessionCreated(Result, tag="session"):
    session_id: str


class ReplyStarted(Result, tag="started"):
    """A send or regenerate accepted (or, for a repeated request id, the reply it started the first time)."""

    session_id: str
    generation_id: Optional[str]
    message_id: str
    prompt_hash: Optional[str]
    dropped_message_ids: list[str] = field(default_factory=list)  # the newest conversation.DROPPED_SHOWN...
    dropped_count: Int = 0  # ...of this many


class Cancelled(Result, tag="cancelled"):
    generation_id: str
    length: Int


class Snapshot(Result, tag="snapshot"):
    """Exactly what clients were sent of a reply: its text (offset = its length), status and stats."""

    generation_id: Optional[str]
    message_id: Optional[str]
    status: Optional[str]
    text: str
    final: bool
    stats: dict
    error: Optional[str] = None
    prompt_hash: Optional[str] = None
    superseded: bool = False
    user_text: Optional[str] = None
    reasoning: str = ""  # the thinking, exactly as clients were sent it (offset = its length)
    tool_calls: list[dict] = field(default_factory=list)  # the tools it called, so far
    # a page: ``text`` and ``reasoning`` begin at these offsets (the request's, or the text's length when it is
    # shorter: a cancel cut it), and ``more`` says that the texts go on past what this page holds
    offset: Int = 0
    reasoning_offset: Int = 0
    more: bool = False
    session_id: Optional[str] = None  # the session it is in, and when and by which model it was asked
    created_at: float = 0.0
    model: Optional[str] = None
    owner: Optional[str] = None  # the session's owner (a gateway user; None: the administrator's)


class SessionSummary(msgspec.Struct, kw_only=True):
    session_id: str
    title: str
    message_count: Int
    last_activity: float
    status: str  # "streaming", the last reply's status, or "empty"
    owner: Optional[str] = None  # the gateway user whose session it is (None: the administrator's)


class SessionList(Result, tag="sessions"):
    sessions: list[SessionSummary]
    more: bool = False  # a page: more sessions are older than its last one


class HistoryCursor(msgspec.Struct, kw_only=True):
    """Where the next page of a history begins: this message, its texts from these offsets."""

    message_id: str
    offset: Int = 0
    reasoning_offset: Int = 0


class History(Result, tag="history"):
    session_id: str
    title: str
    system: Optional[str]
    max_input_tokens: Int
    messages: list[MessageView]  # as clients see them: without their prompts
    next: Optional[HistoryCursor] = None  # a page: where the next one begins (None: this is the last)
    created_at: float = 0.0  # the session's
    owner: Optional[str] = None  # the session's owner (a gateway user; None: the administrator's)


class Preview(Result, tag="preview"):
    message_id: str
    session_id: str
    preview: str
    messages: list[PromptMessage]
    prompt_hash: Optional[str]
    model: Optional[str]
    dropped_message_ids: list[str] = field(default_factory=list)  # the newest conversation.DROPPED_SHOWN...
    dropped_count: Int = 0  # ...of this many
    thinking_left_out: Int = 0  # earlier replies whose thinking this prompt left out (CHATTER_PROMPT_THINKING)
    # built again from the session, it is what was sent (its sha256 matches); else ``problem`` says why not
    exact: bool = True
    problem: Optional[str] = None
    preview_offset: Int = 0  # a page: ``preview`` begins here, and ``messages`` at ``index``...
    index: Int = 0
    offset: Int = 0  # ...the first of them at this offset of its content
    next: Optional[list[Int]] = None  # where the next page begins: [preview_offset, index, offset]; None: last
    params: dict = field(default_factory=dict)  # what the request carried beside its messages (temperature, tools)


class SessionResolved(Result, tag="resolved"):
    session_id: str


class SessionSettings(Result, tag="settings"):
    session_id: str
    system: Optional[str]
    max_input_tokens: Int
    model: str
    params: dict
    stream: Optional[bool]
    continue_style: Optional[str] = None  # this session's own (None: CHATTER_CONTINUE_STYLE's)


PERSISTER_SILENT_MS = 3000


class GeneratorView(msgspec.Struct, kw_only=True):
    generator_id: str
    capacity_free: Int
    active: Int
    seen_ms_ago: Int
    pid: Int


class ActiveGeneration(msgspec.Struct, kw_only=True):
    generation_id: str
    session_id: str
    status: str
    length: Int
    generator_id: Optional[str]
    prompt_tokens: Int
    max_input_tokens: Int
    reasoning_length: Int = 0  # characters of thinking so far


class PersisterTotals(msgspec.Struct, kw_only=True):
    pid: Int
    commits: Int
    ops: Int
    reply_text_bytes: Int
    failed_batches: Int
    ops_rejected: Int = 0
    failing_since: Optional[float] = None
    last_error: Optional[str] = None
    frames_dropped: Int = 0
    last_failed_at: Optional[float] = None  # the last failure of its database, kept once it passed
    last_failure: Optional[str] = None


class ContextUse(msgspec.Struct, kw_only=True):
    session_id: str
    max_input_tokens: Int
    history_tokens: Int


class Status(Result, tag="status"):
    generators: list[GeneratorView]
    coordinator_pid: Int
    persister_pid: Int
    persister: Optional[PersisterTotals]  # None until the persister reports
    active: list[ActiveGeneration]  # the first ACTIVE_SHOWN of them
    counters: dict[str, Int]
    context: Optional[ContextUse] = None
    persister_seen_ms_ago: Optional[Int] = None  # None: not heard from since the coordinator started
    persister_connected: bool = False  # heard from within PERSISTER_SILENT_MS (it reports every second)
    database_reachable: Optional[bool] = None  # as the persister last found it; None before it reports
    unsaved: Int = 0  # messages with operations the persister has not acked yet
    oldest_unsaved_ms: Optional[Int] = None  # how long the oldest of them has waited
    reads_failing_since: Optional[float] = None  # the coordinator's own database reads: None while they work
    reads_error: Optional[str] = None
    reads_last_failed_at: Optional[float] = None  # the last failure of those reads, kept once they work again
    reads_last_error: Optional[str] = None
    continue_style: str = "none"  # how a reply is continued (of the session asked about, if any), and why
    continue_style_why: str = ""
    active_total: Int = 0  # how many generations are active, shown or not


ACTIVE_SHOWN = 1000  # the status lists at most this many active generations: ~150 bytes each


class SessionRenamed(Result, tag="renamed"):
    session_id: str
    title: str  # the title now (the automatic one when the rename cleared it)


class SessionsDeleted(Result, tag="deleted"):
    deleted: list[str]  # the ids deleted, in the order asked; an id not found is left out


class SearchHit(msgspec.Struct, kw_only=True):
    session_id: str
    title: str
    message_id: str
    role: str
    created_at: float
    snippet: str  # the text around the matches, each between \x02 and \x03


class SearchResults(Result, tag="search"):
    hits: list[SearchHit]


class BranchSwitched(Result, tag="switched"):
    session_id: str
    leaf_id: str  # the active branch's last message now ("" when the session has none left)


class SessionForked(Result, tag="forked"):
    session_id: str  # the new session
    source_id: str  # the session it copies
    message_count: Int


class TreeNode(msgspec.Struct, kw_only=True, array_like=True):
    message_id: str
    parent_id: str  # "" for a first message
    role: str
    status: str
    created_at: float
    line: str  # its text's first line, cut to TREE_LINE_CHARS
    active: bool  # on the active branch


TREE_LINE_CHARS = 80


class Tree(Result, tag="tree"):
    session_id: str
    title: str
    leaf_id: str
    nodes: list[TreeNode]  # from ``offset``, in the order they were written
    offset: Int = 0
    total: Int = 0
    next: Optional[Int] = None  # where the next page begins (None: this is the last)


class BranchDeleted(Result, tag="branch_deleted"):
    session_id: str
    deleted: list[str]  # the message ids deleted
    leaf_id: str


class SessionExport(Result, tag="export"):
    """A session whole, every branch, each message with its prompt's reference, paged like a history."""

    session: SessionRecord
    messages: list[MessageRecord]  # in the order they were written
    next: Optional[HistoryCursor] = None


class ImportPart(Result, tag="import_part"):
    session_id: str
    received: Int  # messages of this import received so far


class SessionImported(Result, tag="imported"):
    session_id: str
    created: Int  # messages written
    existing: Int  # messages it had already (an import made before): written again they would be duplicates


class UserView(msgspec.Struct, kw_only=True):
    name: str
    created_at: float
    revoked_at: Optional[float] = None


class UserList(Result, tag="users"):
    users: list[UserView]


class UserChanged(Result, tag="user"):
    user: UserView


class SignedIn(Result, tag="signed_in"):
    name: str


class TurnFound(Result, tag="turn"):
    """``FindTurn``'s answer: the reply and its session, or None for both."""

    session_id: Optional[str] = None
    message_id: Optional[str] = None


ANY = Union[SessionCreated, ReplyStarted, Cancelled, Snapshot, SessionList, History, Preview, SessionSettings,
            Status, SessionResolved, SessionRenamed, SessionsDeleted, SearchResults, BranchSwitched,
            SessionForked, Tree, BranchDeleted, SessionExport, ImportPart, SessionImported, UserList, UserChanged,
            SignedIn, TurnFound]


def plain(result: Result) -> dict:
    """A result as JSON-ready values (``--json`` output): its fields, without the wire's ``kind``."""
    out = msgspec.to_builtins(result)
    out.pop("kind", None)
    return out
