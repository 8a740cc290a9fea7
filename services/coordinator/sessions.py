"""Sessions as the coordinator keeps them in memory: their history records and the pure views of them
that clients ask for (snapshot, history, the sessions list, context use). No I/O."""
from __future__ import annotations

from dataclasses import dataclass, field

from protocol.lifecycle import Status, move
from protocol.conversation import DROPPED_SHOWN, MessageRecord
from protocol.answers import SessionSummary
from services.coordinator.prompt import CONTINUE_STYLES, REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE, in_prompt


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
    history: list[MessageRecord] = field(default_factory=list)  # one record per message, in order
    active_generation: str | None = None
    request_ids: dict[str, str] = field(default_factory=dict)  # client_request_id -> assistant message id
    created_at: float = 0.0
    last_activity: float = 0.0
    saved: bool = False  # its row was written (or asked to be) before any message: ``NewSession``, ``/config``
    title_set: bool = False  # given by hand (``chatter rename``): kept; else the first message's first line

    @classmethod
    def from_stored(cls, data: dict, keep_streaming: bool = False) -> SessionState:
        """A session read from the database: no generation of this coordinator is alive in it. A reply still
        streaming there is interrupted, unless ``keep_streaming`` (it may yet be adopted): then it stays
        streaming and holds the session, so no second reply starts beside it."""
        sess = cls(data["session_id"], data["title"], data["system"], data.get("model"),
                   max_input_tokens=data.get("max_input_tokens"), history=list(data["messages"]),
                   created_at=data.get("created_at", 0.0), last_activity=data.get("updated_at", 0.0),
                   saved=True, title_set=bool(data.get("title_set")))
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

    def record(self, message_id: str) -> MessageRecord | None:
        return next((r for r in reversed(self.history) if r.message_id == message_id), None)

    def last_reply(self) -> MessageRecord | None:
        return next((r for r in reversed(self.history) if r.role == "assistant"), None)

    def user_text_before(self, message_id: str) -> str | None:
        """The user turn a reply answers."""
        seen = False
        for record in reversed(self.history):
            seen = seen or record.message_id == message_id
            if seen and record.role == "user":
                return record.content
        return None

    def last_user_index(self) -> int | None:
        return next((i for i in range(len(self.history) - 1, -1, -1) if self.history[i].role == "user"), None)


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
    line = next((line for line in text.splitlines() if line.strip()), "")
    return " ".join(line.split())[:AUTO_TITLE_CHARS]


def user_record(message_id: str, session_id: str, text: str, now: float) -> MessageRecord:
    return MessageRecord(message_id=message_id, session_id=session_id, role="user", content=text,
                         status="completed", created_at=now)


def assistant_record(message_id: str, session_id: str, generation_id: str, prompt, now: float,
                     client_request_id: str | None) -> MessageRecord:
    return MessageRecord(message_id=message_id, session_id=session_id, role="assistant", content="",
                         status="queued", created_at=now, generation_id=generation_id,
                         prompt_hash=prompt.prompt_hash, model=prompt.model, prompt_ref=prompt.ref,
                         params=prompt.wire_params(), client_request_id=client_request_id,
                         dropped_message_ids=list(prompt.dropped_message_ids[-DROPPED_SHOWN:]),
                         dropped_count=len(prompt.dropped_message_ids))


def summary(sess: SessionState, streaming: bool) -> SessionSummary:
    last = sess.last_reply()
    status = "streaming" if streaming else (last.status if last else "empty")
    return SessionSummary(session_id=sess.session_id, title=sess.title, message_count=len(sess.history),
                          last_activity=sess.last_activity, status=status)


def context_tokens(sess: SessionState, model: str, count_tokens) -> int:
    """~tokens the whole history would take as the next prompt, before any trimming."""
    contents = ([sess.system] if sess.system else []) + [r.content for r in sess.history if in_prompt(r)]
    return sum(count_tokens(c, model) + TOKENS_PER_MESSAGE for c in contents) + REPLY_PRIMING_TOKENS
