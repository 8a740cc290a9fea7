"""What the coordinator has sent the persister and what it has acked, per message: pure.

At-least-once with idempotent apply: every create/append/finalize is resent from the acked length
until acked, and the persister applies text only where it continues the stored length. A reply's two
texts, its answer and its thinking, have a sent and an acked length each. The
tracker also owns the orphan sweep: only the coordinator knows which streaming messages are live.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from protocol import messages as m
from protocol.codec import PIECE_CHARS


@dataclass
class PersistState:
    message_id: str
    create: m.CreateMessage | m.Reopen | None  # None: adopted after a restart, its row long created; a Reopen:
    # a finalized reply continued, which streams again once the persister acks the reopen (not finalized)
    generation_id: str | None = None  # None for a user message, complete on creation
    created_acked: bool = False
    sent_len: int = 0
    acked_len: int = 0
    thinking_sent_len: int = 0
    thinking_acked_len: int = 0
    final: m.Finalize | None = None
    last_sent_at: float = 0.0
    unsaved_since: float = 0.0  # when the oldest operation not acked yet was sent (status: the oldest unsaved)

    @property
    def behind(self) -> bool:
        return (not self.created_acked or self.acked_len < self.sent_len or self.final is not None
                or self.thinking_acked_len < self.thinking_sent_len)


class PersistTracker:
    def __init__(self, resend_ms: float, instance: str) -> None:
        self.resend_s = resend_ms / 1000
        self.states: dict[str, PersistState] = {}
        # sessions saved before any message is in them: session id -> [its SaveSession, sent at, unsaved since]
        self.sessions: dict[str, list] = {}
        self.resends = 0
        self.instance = instance  # this coordinator's: it names our sweeps, so no answer to another's ends one
        self.sweeps = 0
        self.orphan_sweep: str | None = None  # the reason of the sweep to make, until the persister answers it
        self.orphan_sweep_at = 0.0
        self.sweep_held = False  # set by the machine while replies may still be adopted
        # deletions not applied yet: op id -> [its PurgeSessions, sent at, unsaved since]
        self.purges: dict[str, list] = {}
        self.user_saves: dict[str, list] = {}  # the same for the gateway's users: op id -> [its SaveUser, ...]
        # A new coordinator knows no live generation: every streaming message in the database is an orphan.
        self.new_sweep("coordinator restarted")

    @property
    def sweep_id(self) -> str:
        return f"{self.instance}.{self.sweeps}"

    def new_sweep(self, reason: str) -> None:
        self.sweeps += 1
        self.orphan_sweep, self.orphan_sweep_at = reason, 0.0

    def save_session(self, op: m.SaveSession, now: float) -> m.SaveSession:
        """Resent until the persister answers ``SessionSaved``; a later one of the session replaces it."""
        earlier = self.sessions.get(op.session_id)
        self.sessions[op.session_id] = [op, now, earlier[2] if earlier else now]
        return op

    def on_session_saved(self, session_id: str, saved_at: float | None = None) -> None:
        """The save of ``saved_at`` is applied; a later one of the same session (``/config`` again) is still
        resent until it is too."""
        entry = self.sessions.get(session_id)
        if entry is not None and (saved_at is None or entry[0].created_at <= saved_at):
            del self.sessions[session_id]

    def purge(self, op: m.PurgeSessions | m.PurgeMessages, message_ids: list[str], now: float):
        """Sessions (or a branch's messages) deleted: nothing of theirs is resent from now on (their messages'
        operations, a session's saves), and the deletion is resent until the persister answers ``SessionsPurged``."""
        for session_id in getattr(op, "session_ids", ()):
            self.sessions.pop(session_id, None)
        for message_id in message_ids:
            self.states.pop(message_id, None)
        self.purges[op.op_id] = [op, now, now]
        return op

    def save_user(self, op: m.SaveUser, now: float) -> m.SaveUser:
        """Resent until the persister answers ``UserSaved``."""
        self.user_saves[op.op_id] = [op, now, now]
        return op

    def on_user_saved(self, op_id: str) -> None:
        self.user_saves.pop(op_id, None)

    def on_purged(self, answered: m.SessionsPurged) -> bool:
        """True when this answer applied a deletion still waiting (not a resend's second answer)."""
        return self.purges.pop(answered.op_id, None) is not None

    def create(self, create: m.CreateMessage, now: float) -> m.CreateMessage:
        # the message's create writes its session's row as it stands now: an older SaveSession must not be
        # resent after it (it would put back the title and settings of before)
        self.sessions.pop(create.session_id, None)
        self.states[create.message_id] = PersistState(create.message_id, create, create.generation_id,
                                                      last_sent_at=now, unsaved_since=now)
        return create

    def adopt(self, message_id: str, generation_id: str, length: int, reasoning_length: int, now: float) -> None:
        """A streaming message that a restarted coordinator took over: its row exists, and these are its durable
        lengths as read from the database."""
        self.states[message_id] = PersistState(message_id, None, generation_id, created_acked=True, sent_len=length,
                                               acked_len=length, thinking_sent_len=reasoning_length,
                                               thinking_acked_len=reasoning_length, last_sent_at=now,
                                               unsaved_since=now)

    def reopen(self, reopen: m.Reopen, length: int, reasoning_length: int, now: float) -> m.Reopen:
        """A finalized reply is continued: its row exists with these durable lengths, and goes on once the
        persister has reopened it (resent until then, like a create)."""
        self.states[reopen.message_id] = PersistState(reopen.message_id, reopen, reopen.generation_id,
                                                      sent_len=length, acked_len=length,
                                                      thinking_sent_len=reasoning_length,
                                                      thinking_acked_len=reasoning_length, last_sent_at=now,
                                                      unsaved_since=now)
        return reopen

    def sent_len(self, message_id: str, thinking: bool = False) -> int:
        state = self.states[message_id]
        return state.thinking_sent_len if thinking else state.sent_len

    def append(self, message_id: str, text: str, now: float, thinking: bool = False) -> m.Append:
        """The next checkpoint of the answer (or the thinking): ``text`` continues what was sent of it."""
        state = self.states[message_id]
        if not state.behind:
            state.unsaved_since = now
        if thinking:
            op = m.Append(message_id, state.thinking_sent_len, text, True)
            state.thinking_sent_len += len(text)
        else:
            op = m.Append(message_id, state.sent_len, text)
            state.sent_len += len(text)
        state.last_sent_at = now
        return op

    def finalize(self, final: m.Finalize, now: float) -> m.Finalize:
        state = self.states[final.message_id]
        if not state.behind:
            state.unsaved_since = now
        state.final = final
        # a cancel may keep less than was checkpointed: the persister cuts it at finalize
        state.sent_len = min(state.sent_len, final.length)
        state.acked_len = min(state.acked_len, final.length)
        state.thinking_sent_len = min(state.thinking_sent_len, final.reasoning_length)
        state.thinking_acked_len = min(state.thinking_acked_len, final.reasoning_length)
        state.last_sent_at = now
        return final

    def on_ack(self, ack: m.PersistAck) -> PersistState | None:
        """Record an ack; returns the message's state when this ack made its finalize durable."""
        state = self.states.get(ack.message_id)
        if state is None:
            return None
        if isinstance(state.create, m.Reopen) and not state.created_acked and ack.finalized:
            return None  # of the reply as it was before it reopened: the reopen is not applied yet
        state.created_acked = True
        state.acked_len = max(state.acked_len, ack.length)
        state.thinking_acked_len = max(state.thinking_acked_len, ack.reasoning_length)
        if state.generation_id is None and state.acked_len >= len(state.create.content):
            del self.states[ack.message_id]
            return None
        if ack.finalized and state.final is not None and ack.length == state.final.length:
            del self.states[ack.message_id]
            return state
        return None

    def reject(self, message_id: str) -> PersistState | None:
        """The persister can never apply this message's operations (or this session's ``SaveSession``): forget
        them. Returns the message's state."""
        self.sessions.pop(message_id, None)
        return self.states.pop(message_id, None)

    def oldest_unsaved(self) -> tuple[int, float | None]:
        """How many messages (and new sessions) have operations not acked yet, and since when the oldest waits."""
        waiting = [state.unsaved_since for state in self.states.values() if state.behind]
        waiting += [unsaved_since for _, _, unsaved_since in self.sessions.values()]
        waiting += [unsaved_since for _, _, unsaved_since in (*self.purges.values(), *self.user_saves.values())]
        return len(waiting), min(waiting, default=None)

    def on_persister_hello(self) -> None:
        """A restarted persister: it must hear the live messages, and everything unacked goes again now."""
        self.new_sweep("persister restarted")
        for state in self.states.values():
            state.last_sent_at = 0.0
        for entry in (*self.sessions.values(), *self.purges.values(), *self.user_saves.values()):
            entry[1] = 0.0

    def on_orphans_interrupted(self, answered: m.OrphansInterrupted) -> None:
        """The persister applied a sweep: ours, the latest, ends; the answer to an earlier one (made before a
        persister restarted, or queued for the coordinator that ran before us) changes nothing."""
        if answered.sweep == self.sweep_id:
            self.orphan_sweep = None

    def due(self, now: float, text_of: Callable[[str, bool], str]) -> list[m.Message]:
        """Everything not acked within the resend time, from the acked length; and the orphan sweep."""
        ops: list[m.Message] = []
        for entry in (*self.sessions.values(), *self.purges.values(), *self.user_saves.values()):
            if now - entry[1] >= self.resend_s:
                self.resends += 1
                entry[1] = now
                ops.append(entry[0])
        for state in self.states.values():
            if now - state.last_sent_at < self.resend_s or not state.behind:
                continue
            self.resends += 1
            state.last_sent_at = now
            if not state.created_acked:
                ops.append(state.create)
            for thinking, acked, sent in ((True, state.thinking_acked_len, state.thinking_sent_len),
                                          (False, state.acked_len, state.sent_len)):
                if acked < sent:  # what was not acked, again, in pieces that each fit a frame
                    text = text_of(state.generation_id, thinking)
                    for at in range(acked, sent, PIECE_CHARS):
                        ops.append(m.Append(state.message_id, at, text[at:min(at + PIECE_CHARS, sent)], thinking))
            if state.final is not None:
                ops.append(state.final)
        if self.orphan_sweep is not None and now >= self.orphan_sweep_at and not self.sweep_held:
            self.orphan_sweep_at = now + self.resend_s
            live = [s.message_id for s in self.states.values() if s.generation_id is not None]
            ops.append(m.InterruptOrphans(self.orphan_sweep, live, self.sweep_id))
        return ops
