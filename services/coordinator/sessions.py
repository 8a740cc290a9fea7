"""Sessions as the coordinator keeps them in memory: their history records and the pure views of them
that clients ask for (snapshot, history, the sessions list, context use). No I/O."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from protocol import messages as m
from protocol.lifecycle import Status, move
from protocol.conversation import DROPPED_SHOWN, MessageRecord, SessionRecord
from protocol.answers import SessionSummary
from protocol.conversation import in_prompt, turn_chain
from services.coordinator.effects import RequestRefused
from services.coordinator.prompt import CONTINUE_STYLES, REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE


@dataclass
class SessionState:
    session_id: str
    title: str
    system: str | None
    model: str | None
    max_input_tokens: int | None = None  # None: the coordinator's default
    params: dict = field(default_factory=dict)  # upstream request params: temperature, max_tokens
    stream: bool | None = None  # None: the generator's default
    continue_style: str | None = None  # None: CHATTER_CONTINUE_STYLE's
    # every message, every branch, in the order they were written; each names its parent (the tree: DESIGN.md,
    # "Sessions are trees"), and ``leaf`` is the last message of the active branch. Added to by ``add_record``.
    history: list[MessageRecord] = field(default_factory=list)
    leaf: str | None = None
    active_generation: str | None = None
    request_ids: dict[str, str] = field(default_factory=dict)  # client_request_id -> assistant message id
    created_at: float = 0.0
    last_activity: float = 0.0
    saved: bool = False  # its row was written (or asked to be) before any message: ``NewSession``, ``/config``
    title_set: bool = False  # given by hand (``chatter rename``): kept; else the first message's first line
    owner: str | None = None  # the gateway's user whose session it is (None: the administrator's)

    def __post_init__(self) -> None:
        self._index()

    def _index(self) -> None:
        self._at = {r.message_id: i for i, r in enumerate(self.history)}  # message id -> its place in history
        self.children: dict[str, list[str]] = {}  # parent id ("" for first messages) -> its children, oldest first
        for record in self.history:
            self.children.setdefault(record.parent_id or "", []).append(record.message_id)

    @classmethod
    def from_stored(cls, data: dict, keep_streaming: bool = False) -> SessionState:
        """A session read from the database: no generation of this coordinator is alive in it. A reply still
        streaming there is interrupted, unless ``keep_streaming`` (it may yet be adopted): then it stays
        streaming and holds the session, so no second reply starts beside it."""
        sess = cls(data["session_id"], data["title"], data["system"], data.get("model"),
                   max_input_tokens=data.get("max_input_tokens"), history=list(data["messages"]),
                   created_at=data.get("created_at", 0.0), last_activity=data.get("updated_at", 0.0),
                   saved=True, title_set=bool(data.get("title_set")), owner=data.get("owner"))
        newest_kept = place_in_order(sess.history)
        sess._index()
        leaf = data.get("active_leaf")
        sess.leaf = leaf if leaf in sess._at else newest_kept
        sess.take_settings(data.get("settings"))
        for record in sess.history:
            if record.status == "streaming" and keep_streaming:
                sess.active_generation = record.generation_id
            elif record.status == Status.STREAMING:  # the persister marks it too, once the sweep reaches it
                record.status = move(record.status, Status.INTERRUPTED)
            if record.client_request_id:
                sess.request_ids[record.client_request_id] = record.message_id
        return sess

    @property
    def only_in_memory(self) -> bool:
        """No message and never saved: made for the message sent next, which stores it."""
        return not self.history and not self.saved

    def settings(self) -> dict | None:
        """What ``/config`` set beside the model, as the session's row keeps it (None: all defaults)."""
        stored = {"params": dict(self.params)} if self.params else {}
        if self.stream is not None:
            stored["stream"] = self.stream
        if self.continue_style is not None:
            stored["continue_style"] = self.continue_style
        return stored or None

    def take_settings(self, stored) -> None:
        """The settings of ``settings()``, read back; a value that is not one ``/config`` could have set (a row
        edited by hand, a later version's) is left at its default rather than sent upstream."""
        stored = stored if isinstance(stored, dict) else {}
        params = stored.get("params") if isinstance(stored.get("params"), dict) else {}
        self.params = {key: value for key, value in params.items()
                       if key in REQUEST_PARAMS and value is not None and setting_ok(key, value)}
        self.stream = stored.get("stream") if setting_ok("stream", stored.get("stream")) else None
        style = stored.get("continue_style")
        self.continue_style = style if setting_ok("continue_style", style) else None

    # ------------------------------------------------------------ the tree

    def record(self, message_id: str) -> MessageRecord | None:
        at = self._at.get(message_id)
        return None if at is None else self.history[at]

    def add_record(self, record: MessageRecord) -> None:
        """A new message, after ``record.parent_id``: it is the active branch's last now. A user's message or a
        tool's result takes its chain (``turn_chain``), stored with it."""
        if record.role != "assistant" and record.chain is None:
            record.chain = turn_chain(self.chain_of(record.parent_id), record.role, record.content)
        self._at[record.message_id] = len(self.history)
        self.history.append(record)
        self.children.setdefault(record.parent_id or "", []).append(record.message_id)
        self.leaf = record.message_id

    def chain_of(self, message_id: str | None) -> str:
        """``turn_chain`` of the conversation up to a message ("" before the first): from the nearest one that
        knows its own, down (a reply's, and a row's of an earlier version, are worked out and kept in memory)."""
        unknown = []
        record = self.record(message_id) if message_id else None
        while record is not None and (record.chain is None or record.role == "assistant"):
            unknown.append(record)
            record = self.record(record.parent_id) if record.parent_id else None
        chain = record.chain if record is not None else ""
        for record in reversed(unknown):
            chain = turn_chain(chain, record.role, record.content)
            if record.role != "assistant":
                record.chain = chain
        return chain

    def lineage(self, message_id: str | None) -> list[MessageRecord]:
        """The messages from the first to this one, each the parent of the next."""
        out = []
        record = self.record(message_id) if message_id else None
        while record is not None:
            out.append(record)
            record = self.record(record.parent_id) if record.parent_id else None
        out.reverse()
        return out

    def path(self) -> list[MessageRecord]:
        """The active branch: what is shown, watched and sent to the model."""
        return self.lineage(self.leaf)

    def siblings(self, record: MessageRecord) -> list[str]:
        """The children of its parent, itself among them, oldest first."""
        return self.children.get(record.parent_id or "", [record.message_id])

    def newest_leaf_under(self, message_id: str) -> str:
        """The newest message of the branches through this one: where its subtree was last written (a message's
        children are newer than it, so the newest of a subtree has none)."""
        newest, stack = message_id, [message_id]
        while stack:
            node = stack.pop()
            if self._at[node] > self._at[newest]:
                newest = node
            stack.extend(self.children.get(node, ()))
        return newest

    def subtree(self, message_id: str) -> list[str]:
        """This message and every message after it on any branch, in the order they were written."""
        ids, stack = set(), [message_id]
        while stack:
            node = stack.pop()
            ids.add(node)
            stack.extend(self.children.get(node, ()))
        return [r.message_id for r in self.history if r.message_id in ids]

    def remove(self, message_ids: list[str]) -> None:
        """Messages deleted (a subtree): the active branch, if it ran through them, ends at the newest message
        left beside them (under their parent), else at the newest message of the session."""
        gone = set(message_ids)
        parent = next((r.parent_id for r in self.history if r.message_id in gone), "")
        self.history = [r for r in self.history if r.message_id not in gone]
        self.request_ids = {key: mid for key, mid in self.request_ids.items() if mid not in gone}
        self._index()
        if self.leaf in gone or self.leaf not in self._at:
            self.leaf = (self.newest_leaf_under(parent) if parent in self._at
                         else self.history[-1].message_id if self.history else None)

    def find(self, ref: str) -> MessageRecord:
        """A message named in a request: its number on the active branch (1 the first), its id, or a unique
        prefix of its id. Else the request is refused, in words for the client."""
        if ref.isdigit():
            path = self.path()
            number = int(ref)
            if not 1 <= number <= len(path):
                raise RequestRefused(f"no message {number} on the active branch of session {self.session_id} "
                                 f"(it has {len(path)})")
            return path[number - 1]
        record = self.record(ref)
        if record is not None:
            return record
        matches = [r for r in self.history if r.message_id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise RequestRefused(f"no message {ref} in session {self.session_id}")
        raise RequestRefused(f"{ref} matches {len(matches)} messages of session {self.session_id}; give more of the id")

    def last_reply(self) -> MessageRecord | None:
        return next((r for r in reversed(self.path()) if r.role == "assistant"), None)

    def user_text_before(self, message_id: str) -> str | None:
        """The user turn a reply answers."""
        return next((r.content for r in reversed(self.lineage(message_id)) if r.role == "user"), None)

    def last_user(self) -> MessageRecord | None:
        """The active branch's last message that a reply answers: the user's, or a tool's result."""
        return next((r for r in reversed(self.path()) if r.role != "assistant"), None)


def place_in_order(history: list[MessageRecord]) -> str | None:
    """Rows of an earlier version name no parent: read in order they are one branch, a user message after the
    message before it, a reply after the user message it answers, so that a reply an earlier version superseded
    (regenerate) is a sibling of its replacement. Returns the newest message not superseded: their active leaf."""
    last_user = newest_kept = None
    for record in history:
        if record.parent_id is None:
            before = last_user if record.role == "assistant" else newest_kept
            record.parent_id = before.message_id if before is not None else ""
        if record.role == "user":
            last_user = record
        if not record.superseded:
            newest_kept = record
    return newest_kept.message_id if newest_kept is not None else None


REQUEST_PARAMS = ("temperature", "max_tokens")  # the settings sent upstream with each request


def setting_ok(key: str, value) -> bool:
    """Whether ``/config`` may set ``key`` to ``value`` (None unsets it)."""
    if value is None:
        return key in (*REQUEST_PARAMS, "stream", "continue_style")
    if key == "temperature":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 2
    if key == "max_tokens":
        return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31
    if key == "stream":
        return isinstance(value, bool)
    if key == "continue_style":
        return value in CONTINUE_STYLES
    return False


AUTO_TITLE_CHARS = 60


def auto_title(text: str) -> str:
    """A session's title when none was given: its first message's first line that has words, cut to 60."""
    return first_words(text)[:AUTO_TITLE_CHARS]


def first_words(text: str) -> str:
    """A text's first line that has words, its spaces collapsed."""
    return " ".join(next((line for line in text.splitlines() if line.strip()), "").split())


def user_record(message_id: str, session_id: str, text: str, now: float, parent_id: str, role: str = "user",
                tool_call_id: str | None = None) -> MessageRecord:
    """A message a reply answers: the user's, or a tool's result (``role`` "tool", with the call it answers)."""
    return MessageRecord(message_id=message_id, session_id=session_id, role=role, content=text,
                         status="completed", created_at=now, parent_id=parent_id, tool_call_id=tool_call_id)


TOOLS_JSON_BYTES = 256 * 1024  # a request's tools, as JSON, at most: they go upstream in the job's first frame
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a function's name, as OpenAI takes it


def tool_params(tools: list | None, tool_choice) -> dict:
    """A request's function tools and its choice among them, checked, as the upstream request's params (Chat
    Completions' shape); a refusal (``ValueError``) says what is wrong."""
    params: dict = {}
    if tools:
        for index, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(function, dict):
                raise ValueError(f"tools[{index}]: Chatter passes function tools, as "
                                 '{"type": "function", "function": {"name", "parameters"}}')
            if not isinstance(function.get("name"), str) or not TOOL_NAME.match(function["name"]):
                raise ValueError(f"tools[{index}].function.name must be 1 to 64 letters, digits, _ or -")
            if not isinstance(function.get("parameters", {}), dict):
                raise ValueError(f"tools[{index}].function.parameters must be a JSON schema object")
        if len(json.dumps(tools)) > TOOLS_JSON_BYTES:
            raise ValueError(f"the tools are over {TOOLS_JSON_BYTES // 1024} KiB as JSON")
        params["tools"] = tools
    if tool_choice is not None:
        named = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
        if tool_choice not in ("auto", "none", "required") and not (
                isinstance(tool_choice, dict) and tool_choice.get("type") == "function" and isinstance(named, str)
                and any(t["function"]["name"] == named for t in tools or ())):
            raise ValueError('tool_choice must be "auto", "none", "required" or {"type": "function", "function": '
                             '{"name": ...}} naming one of the tools')
        params["tool_choice"] = tool_choice
    return params


def assistant_record(message_id: str, session_id: str, generation_id: str, prompt, now: float,
                     client_request_id: str | None, parent_id: str) -> MessageRecord:
    return MessageRecord(message_id=message_id, session_id=session_id, role="assistant", content="",
                         parent_id=parent_id,
                         status="queued", created_at=now, generation_id=generation_id,
                         prompt_hash=prompt.prompt_hash, model=prompt.model, prompt_ref=prompt.ref,
                         params=prompt.wire_params(), client_request_id=client_request_id,
                         dropped_message_ids=list(prompt.dropped_message_ids[-DROPPED_SHOWN:]),
                         dropped_count=len(prompt.dropped_message_ids))


def save_op(sess: SessionState, now: float):
    """The session's row as it stands, for the persister (``SaveSession``)."""
    return m.SaveSession(sess.session_id, sess.title, sess.system, sess.max_input_tokens, now, sess.model,
                         sess.settings(), sess.title_set, sess.leaf, sess.owner)


def session_record(sess: SessionState) -> SessionRecord:
    """The session's own fields, as an export carries them."""
    return SessionRecord(session_id=sess.session_id, title=sess.title, title_set=sess.title_set, system=sess.system,
                         model=sess.model, max_input_tokens=sess.max_input_tokens, settings=sess.settings(),
                         created_at=sess.created_at, updated_at=sess.last_activity, active_leaf=sess.leaf)


def summary(sess: SessionState, streaming: bool) -> SessionSummary:
    last = sess.last_reply()
    status = "streaming" if streaming else (last.status if last else "empty")
    return SessionSummary(session_id=sess.session_id, title=sess.title, message_count=len(sess.history),
                          last_activity=sess.last_activity, status=status, owner=sess.owner)


def context_tokens(sess: SessionState, model: str, count_tokens) -> int:
    """~tokens the whole history would take as the next prompt, before any trimming."""
    contents = ([sess.system] if sess.system else []) + [r.content for r in sess.path() if in_prompt(r)]
    return sum(count_tokens(c, model) + TOKENS_PER_MESSAGE for c in contents) + REPLY_PRIMING_TOKENS
