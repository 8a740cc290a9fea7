"""rpc: the requests a client sends the coordinator (DEALER -> ROUTER), each with its request id, and the
one ``Reply`` to each; what enters here is bounded at decode."""
from __future__ import annotations

from typing import Annotated, Optional, Union

import msgspec
from msgspec import Meta

from protocol import answers
from protocol.codec import Int, Message
from protocol.conversation import MessageRecord, SessionRecord


# What enters through rpc is bounded here, at decode: a request out of range is refused with the field's
# name, before any handler or database sees it. Counts and lengths fit a 32-bit integer column
# (PostgreSQL's ``integer``); ids and names fit their ``varchar`` columns.
Id = Annotated[str, Meta(max_length=64)]
RequestKey = Annotated[str, Meta(max_length=128)]
ModelName = Annotated[str, Meta(max_length=128)]
Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]
SessionsLimit = Annotated[int, Meta(ge=1, le=100_000)]
UserName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]


class NewSession(Message, tag=1):
    req_id: Int
    system: Optional[str] = None
    model: Optional[ModelName] = None
    max_input_tokens: Optional[Count] = None  # this session's input budget; default CHATTER_MAX_INPUT_TOKENS
    # saved at once (``SaveSession``); False: made for the message sent next, and stored with it (a refused
    # message then leaves no empty session behind: ``chatter send`` without ``--session``)
    save: bool = True
    owner: Optional[UserName] = None  # the gateway's user whose session it is (None: the administrator's)


class ToolOutput(msgspec.Struct, array_like=True, frozen=True):
    """A tool's result, for the call of that id in the reply it follows."""

    call_id: Annotated[str, Meta(min_length=1, max_length=128)]
    output: str


TOOLS_AT_MOST = 128  # function tools one request passes, and tool results it gives back


class Send(Message, tag=2):
    """A user message and a reply to it, after the active branch's last message, or after ``after`` (a branch
    from there: the gateway's ``previous_response_id``).

    Tools (the gateway's): ``tools`` and ``tool_choice`` go upstream with this reply's request, in Chat
    Completions' shape, and are part of its prompt (hash, preview); ``tool_results`` answer the calls of the
    reply it follows, each a message of its own (role "tool") before the user's, whose ``text`` may then be
    empty."""

    req_id: Int
    session_id: Id
    text: str
    client_request_id: RequestKey
    model: Optional[ModelName] = None
    after: Optional[Id] = None
    tools: Optional[Annotated[list[dict], Meta(max_length=TOOLS_AT_MOST)]] = None
    tool_choice: Optional[Union[str, dict]] = None
    tool_results: Optional[Annotated[list[ToolOutput], Meta(max_length=TOOLS_AT_MOST)]] = None


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
    owner: Optional[UserName] = None  # only this gateway user's sessions (None: everyone's, the administrator's view)


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


TITLE_CHARS = 500  # a session's title, at most
Title = Annotated[str, Meta(max_length=TITLE_CHARS)]
DELETE_AT_ONCE = 1000  # sessions one ``DeleteSessions`` names, at most (``chatter delete`` sends more in turn)


class RenameSession(Message, tag=14):
    """Give a session a title by hand, kept from then on; an empty title gives it back its automatic one (its
    first message's first line). Answered once the persister has applied it."""

    req_id: Int
    session_id: Id
    title: Title


class DeleteSessions(Message, tag=15):
    """Delete these sessions, every message, text and index entry of them: a reply streaming in one is stopped
    first (its upstream request too). Answered once the persister has applied it, with the ids it deleted (an id
    it did not find is left out)."""

    req_id: Int
    session_ids: Annotated[list[Id], Meta(min_length=1, max_length=DELETE_AT_ONCE)]


SEARCH_CHARS = 1000  # a search query, at most
SearchLimit = Annotated[int, Meta(ge=1, le=1000)]


class Search(Message, tag=16):
    """The messages that hold every word, phrase ("...") and prefix (word*) of ``query``, best first: everywhere, or
    in one session."""

    req_id: Int
    query: Annotated[str, Meta(max_length=SEARCH_CHARS)]
    session_id: Optional[Id] = None
    limit: SearchLimit = 20
    owner: Optional[UserName] = None  # only in this gateway user's sessions (None: in everyone's)


# A message named in a request: its id, a unique prefix of one in the session, or its number on the session's
# active branch as ``chatter history`` shows it (1 the first)
MessageRef = Annotated[str, Meta(min_length=1, max_length=64)]


class EditMessage(Message, tag=17):
    """A user message written again: a new message beside it (the same parent), on a branch of its own that
    becomes the active one, and a reply streamed to it. The old branch is kept whole."""

    req_id: Int
    session_id: Id
    message: MessageRef
    text: str
    client_request_id: RequestKey


class SwitchBranch(Message, tag=18):
    """Make the branch through a message active: its newest leaf. With ``sibling``, the branch through that
    sibling of the message instead (0-based, oldest first: the window's < 2/3 > arrows). Answered once the
    persister has applied it."""

    req_id: Int
    session_id: Id
    message: MessageRef
    sibling: Optional[Count] = None


class ForkSession(Message, tag=19):
    """A new session holding a copy of the active branch up to ``message`` (None: all of it), prompts and
    stats included. Answered once the persister has applied it."""

    req_id: Int
    session_id: Id
    message: Optional[MessageRef] = None


class SessionTree(Message, tag=70):  # rpc goes on at 70: 20-66 are the other channels
    """Every message of a session, every branch, as a tree's nodes (each with a first line of its text), paged
    from node ``offset`` in the order they were written."""

    req_id: Int
    session_id: Id
    offset: Count = 0


class DeleteBranch(Message, tag=71):
    """A message and every message after it on any branch, gone like a deleted session's (a reply streaming
    there is stopped first); the rest of the session stays. Answered once the persister has applied it."""

    req_id: Int
    session_id: Id
    message: MessageRef


class ExportSession(Message, tag=72):
    """A session whole, every branch and every field of its messages, paged like ``History``."""

    req_id: Int
    session_id: Id
    message_id: Optional[Id] = None
    offset: Count = 0
    reasoning_offset: Count = 0


IMPORT_PART_MESSAGES = 100_000  # messages one ``ImportSession`` carries, at most (a frame holds 4 MiB anyway)


class ImportSession(Message, tag=73):
    """A session given back whole (``chatter import``): in parts, each answered at once, the ``last`` one once
    every message it adds is applied. Its ids are kept: a message the session has already is not written again,
    so an import made twice makes no duplicates."""

    req_id: Int
    session: SessionRecord
    messages: Annotated[list[MessageRecord], Meta(max_length=IMPORT_PART_MESSAGES)]
    last: bool = True

    @property
    def session_id(self) -> str:  # the coordinator's shell reads the session first, as for any request naming one
        return self.session.session_id


class ReplyOf(Message, tag=74):
    """The snapshot of one reply named by its message id, paged as ``Snapshot``'s (the gateway's response ids)."""

    req_id: Int
    message_id: Id
    offset: Count = 0
    reasoning_offset: Count = 0


TokenHash = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]


class FindTurn(Message, tag=79):
    """The reply a conversation ends with, found by what it says (the gateway's Chat Completions calls, which
    send the whole conversation each time and name no session): the reply whose text has sha256 ``reply_hash``
    after the user's message (or tool's result) whose ``turn_chain`` is ``chain``, in a session of ``owner``'s.
    The newest such reply, or none."""

    req_id: Int
    chain: Sha256
    reply_hash: Sha256
    owner: Optional[UserName] = None


class AddUser(Message, tag=75):
    """A user of the gateway, who signs in with the token whose sha256 this is (the token itself never leaves the
    client that made it). Answered once stored."""

    req_id: Int
    name: UserName
    token_hash: TokenHash


class RevokeUser(Message, tag=76):
    """The user's token no longer signs in; its sessions stay. Answered once stored."""

    req_id: Int
    name: UserName


class Users(Message, tag=77):
    req_id: Int


class WhoIs(Message, tag=78):
    """The user whose token has this sha256 (the gateway's sign-in), or a refusal."""

    req_id: Int
    token_hash: TokenHash


class Reply(Message, tag=9):
    """The coordinator's answer to any rpc request."""

    req_id: Int
    ok: bool
    result: Optional[answers.ANY] = None  # typed by the request (protocol/answers.py); None when refused
    error: Optional[str] = None


RPC_REQUESTS = (NewSession, Send, Cancel, Snapshot, Status, History, Preview, Regenerate, Sessions,
                ConfigureSession, ResolveSession, Continue, RenameSession, DeleteSessions, Search, EditMessage,
                SwitchBranch, ForkSession, SessionTree, DeleteBranch, ExportSession, ImportSession, ReplyOf,
                AddUser, RevokeUser, Users, WhoIs, FindTurn)
