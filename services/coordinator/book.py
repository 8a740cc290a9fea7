"""The sessions the coordinator holds in memory, least recently active first, and what it last read of the
database's (the sessions list, a prefix's matches). Memory stays flat: idle sessions are dropped and read back
when asked for. Pure, like all of the machine."""
from __future__ import annotations

from protocol import answers
from services.coordinator.effects import RequestRefused
from services.coordinator.sessions import SessionState

# how long a session made for the message sent next (``NewSession.save`` false) waits for it, once the cache is
# full, before it is dropped: ``chatter send`` sends its message at once
UNSAVED_SESSION_KEEP_S = 60.0
GONE_KEPT = 100_000  # deleted session ids remembered, so that a read in flight cannot bring one back


class SessionBook:
    def __init__(self, max_cached: int, counters: dict) -> None:
        self.max_cached, self.counters = max_cached, counters
        self.sessions: dict[str, SessionState] = {}  # least recently active (or read) first
        self.message_sessions: dict[str, str] = {}  # message id -> session id
        # sessions in the database, as the shell last read them
        self.stored_summaries: dict[str, answers.SessionSummary] = {}
        # a prefix -> how many stored ids it matches, and the first few (the last read)
        self.stored_matches: dict[str, tuple[int, list[str]]] = {}
        self.gone: dict[str, None] = {}  # deleted (or being deleted) session ids, oldest first

    def get(self, session_id: str) -> SessionState:
        sess = self.sessions.get(session_id)
        if sess is None:
            if session_id in self.gone:
                raise RequestRefused(f"session {session_id} was deleted")
            raise RequestRefused(f"unknown session {session_id}")
        return sess

    def of_message(self, message_id: str) -> SessionState | None:
        return self.sessions.get(self.message_sessions.get(message_id, ""))

    def forget(self, session_id: str) -> SessionState | None:
        """A session deleted: gone from memory and from what was read of the database, and remembered as gone."""
        sess = self.sessions.pop(session_id, None)
        for record in sess.history if sess else ():
            self.message_sessions.pop(record.message_id, None)
        self.stored_summaries.pop(session_id, None)
        self.stored_matches.clear()
        self.gone[session_id] = None
        while len(self.gone) > GONE_KEPT:
            del self.gone[next(iter(self.gone))]
        return sess

    def add(self, sess: SessionState) -> None:
        self.sessions[sess.session_id] = sess
        for record in sess.history:
            self.message_sessions[record.message_id] = sess.session_id

    def touch(self, sess: SessionState, now: float) -> None:
        """A session active now: ``sessions`` holds them least recently active (or read) first."""
        sess.last_activity = now
        self.sessions[sess.session_id] = self.sessions.pop(sess.session_id)

    def load(self, data: dict, keep_streaming: bool) -> None:
        """Take in a session read from the database (after a restart, or evicted). With ``keep_streaming`` (replies
        may still be adopted), a streaming reply stays streaming, and holds its session."""
        if data["session_id"] not in self.sessions and data["session_id"] not in self.gone:
            self.add(SessionState.from_stored(data, keep_streaming=keep_streaming))

    def load_summaries(self, rows: list[dict]) -> None:
        """The database's sessions list, read by the shell for a ``Sessions`` request."""
        self.stored_summaries = {row["session_id"]: answers.SessionSummary(**row) for row in rows
                                 if row["session_id"] not in self.gone}

    def evict_idle(self, now: float, busy: set[str], unsaved_sessions, unsaved_messages) -> None:
        """Memory stays flat however many sessions pass through: the least recently active idle ones (nothing
        streaming or waiting for the persister: ``busy``, ``unsaved_sessions``, ``unsaved_messages``) are dropped
        and read back when asked for. They are taken from the front of ``sessions`` (``touch``), so a sweep reads
        the ones it drops and the busy ones before them, not every cached session (a sort of all 5,000 took
        ~0.7 ms, four times a second). A session with no message yet goes too once its row is durable: it reads
        back with its settings. One made for the message sent next (never saved) is only here: it is dropped once
        it has waited ``UNSAVED_SESSION_KEEP_S`` for that message, so that refused sends cannot fill memory with
        sessions no one will use."""
        excess = len(self.sessions) - self.max_cached
        if excess <= 0:
            return
        idle = []
        for sess in self.sessions.values():
            if len(idle) == excess:
                break
            if sess.session_id in busy or sess.session_id in unsaved_sessions:
                continue  # streaming, or its row as it stands now (``/config``) is not durable yet
            if sess.only_in_memory and now - sess.last_activity < UNSAVED_SESSION_KEEP_S:
                continue  # made for the message sent next, and stored with it: only here until then
            if any(r.message_id in unsaved_messages for r in sess.history):
                continue  # not all of it is durable yet
            idle.append(sess)
        for sess in idle:
            if sess.only_in_memory:
                self.counters["unsaved_sessions_dropped"] += 1
            del self.sessions[sess.session_id]
            for record in sess.history:
                self.message_sessions.pop(record.message_id, None)
