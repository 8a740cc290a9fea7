"""The coordinator's pure state machine: sessions, generations, and the rules of the stream.

``Coordinator.handle_rpc``, ``handle_event`` and ``tick`` return a list of effects; nothing here touches a
socket, a clock or the database. ``Coordinator`` holds the state and the dispatch tables; the rules live
in its parts: ``requests.Requests`` (what clients ask), ``stream.StreamRules`` (seq checks and late
deltas, cancel, coalescing to clients, checkpoint cadence, and the finalize order) and ``adoption.Adoption``
(a restarted coordinator taking over the replies in flight).
"""
from __future__ import annotations

import heapq

from protocol import messages as m, results
from services.config import CoordinatorSettings as Settings
from services.coordinator.adoption import Adoption
from services.coordinator.effects import (Log, ReadGeneration, ReplyTo, RequestRefused, ToClients, ToControl,
                                          ToGenerators, ToPersister, content_hash, new_id, new_ordered_id)
from services.coordinator.persistence import PersistTracker
from services.coordinator.requests import Requests
from services.coordinator.sessions import SessionState
from services.coordinator.stream import GenerationState, GeneratorInfo, StreamRules
from services.waiting import FirstTokenWait

# what the shell and the tests take from here: the machine, its settings, and the effects it returns
__all__ = ["Coordinator", "Settings", "Log", "ReadGeneration", "ReplyTo", "RequestRefused", "ToClients", "ToControl",
           "ToGenerators", "ToPersister", "content_hash", "new_id", "new_ordered_id", "GenerationState"]


class Coordinator(Requests, StreamRules, Adoption):
    def __init__(self, settings: Settings, count_tokens, new_id=new_id, new_ordered_id=new_ordered_id,
                 pid: int = 0) -> None:
        self.settings = settings
        self.pid = pid  # reported in status, so a load test can read each process's CPU accounting
        self.instance = new_id()  # in our heartbeats: a generator that sees it change announces its generations
        self.count_tokens = count_tokens
        self.new_id = new_id
        self.new_ordered_id = new_ordered_id
        self.sessions: dict[str, SessionState] = {}
        self.message_sessions: dict[str, str] = {}  # message id -> session id
        # sessions in the database, as the shell last read them
        self.stored_summaries: dict[str, results.SessionSummary] = {}
        # a prefix -> how many stored ids it matches, and the first few (the last read)
        self.stored_matches: dict[str, tuple[int, list[str]]] = {}
        self.active: dict[str, GenerationState] = {}  # queued or streaming
        # the replies dispatched before their first token; asked before each paced sleep (``first_token_awaited``)
        self.first_token_wait = FirstTokenWait(self._awaits_first_token)
        self.finalizing: dict[str, GenerationState] = {}  # terminal, waiting for the persister's ack
        self.persisted = PersistTracker(settings.persist_resend_ms, self.instance)
        self.generators: dict[str, GeneratorInfo] = {}
        self.last_server = ""  # what the last generator to tell said its server is (/v1/models owned_by)
        # adoption (adoption.py): announced generations whose rows are being read, and the window after start
        self.adoptions: dict[str, tuple[str, m.LiveGeneration]] = {}
        self.adopt_until: float | None = None
        self.adopting_open = settings.adopt_grace_ms > 0
        self.persister_pid = 0
        self.persister_seen_at: float | None = None  # the last message from the persister (it heartbeats)
        self.reads_health: tuple[float | None, str | None] = (None, None)  # the shell's database reads, for status
        self.reads_last_failure: tuple[float, str] | None = None  # and their last failure, kept after it passed
        self.persister_stats: results.PersisterTotals | None = None  # the persister's latest totals
        self.counters = {"late_deltas_dropped": 0, "duplicate_deltas_dropped": 0, "bad_frames_dropped": 0,
                         "gaps": 0, "generators_lost": 0, "generations_adopted": 0, "deltas_before_adoption": 0,
                         "jobs_sent_again": 0, "generations_requeued": 0,
                         "generations_continued": 0, "unsaved_sessions_dropped": 0,
                         # counted by the shell: its database reads, refused tcp handshakes and CURVE keys, and
                         # effects that failed alone because their frame would be over the limit
                         "database_reads": 0, "handshakes_refused": 0, "curve_keys_refused": 0,
                         "frames_too_large": 0}
        self._deadlines: list[tuple[float, int, str, str]] = []  # (when, tiebreak, generation id, kind)
        self._tiebreak = 0
        self._housekeeping_at = 0.0
        self._heartbeat_at = 0.0
        self._handlers = {
            m.NewSession: self._on_new_session, m.Send: self._on_send, m.Cancel: self._on_cancel,
            m.Snapshot: self._on_snapshot, m.Status: self._on_status, m.History: self._on_history,
            m.Preview: self._on_preview, m.Regenerate: self._on_regenerate, m.Sessions: self._on_sessions,
            m.ConfigureSession: self._on_configure, m.ResolveSession: self._on_resolve, m.Continue: self._on_continue,
        }
        self._event_handlers = {
            m.GenStarted: self._on_gen_started, m.GenDelta: self._on_gen_delta, m.GenDone: self._on_gen_done,
            m.GenDeltaBatch: self._on_gen_delta_batch,
            m.GenError: self._on_gen_error, m.GenCancelled: self._on_gen_cancelled,
            m.GeneratorHeartbeat: self._on_heartbeat, m.PersistAck: self._on_persist_ack,
            m.PersisterHello: self._on_persister_hello, m.OrphansInterrupted: self._on_orphans_interrupted,
            m.SessionSaved: self._on_session_saved,
            m.PersisterStats: self._on_persister_stats, m.PersistRejected: self._on_persist_rejected,
            m.GenAnnounce: self._on_gen_announce, m.GenCatchUp: self._on_gen_catch_up,
            m.GenToolCall: self._on_gen_tool_call,
        }
        # any message of the persister says it is there (status): noted by its handlers alone, so that the
        # generators' events, the per-delta path, pay nothing for it
        for kind in m.PERSIST_ACKS:
            self._event_handlers[kind] = self._heard_from_persister(self._event_handlers[kind])

    def _heard_from_persister(self, handler):
        def handle(msg: m.Message, now: float, out: list) -> None:
            self.persister_seen_at = now
            handler(msg, now, out)
        return handle

    # ------------------------------------------------------------ entry points

    def handle_rpc(self, client: bytes, msg: m.Message, now: float) -> list:
        out: list = []
        try:
            result = self._handlers[type(msg)](msg, now, out)
            out.append(ReplyTo(client, m.Reply(msg.req_id, True, result)))
        except RequestRefused as refused:
            out.append(ReplyTo(client, m.Reply(msg.req_id, False, None, str(refused))))
        return out

    def handle_event(self, msg: m.Message, now: float) -> list:
        out: list = []
        self._event_handlers[type(msg)](msg, now, out)
        return out

    def load_session(self, data: dict) -> None:
        """Take in a session read from the database (after a restart, or evicted). While replies may still be
        adopted (``adoption.py``), a streaming reply stays streaming, and holds its session."""
        if data["session_id"] in self.sessions:
            return
        sess = SessionState.from_stored(data, keep_streaming=self._sweep_held())
        self.sessions[sess.session_id] = sess
        for record in sess.history:
            self.message_sessions[record.message_id] = sess.session_id

    def load_summaries(self, rows: list[dict]) -> None:
        """The database's sessions list, read by the shell for a ``Sessions`` request."""
        self.stored_summaries = {row["session_id"]: results.SessionSummary(**row) for row in rows}

    def next_deadline(self) -> float:
        soonest = self._housekeeping_at
        if self._deadlines:
            soonest = min(soonest, self._deadlines[0][0])
        return soonest

    def tick(self, now: float) -> list:
        out: list = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, gen_id, kind = heapq.heappop(self._deadlines)
            gen = self.active.get(gen_id)
            if gen is None:
                continue
            if kind == "client" and gen.client_deadline is not None and gen.client_deadline <= now:
                self._flush_clients(gen, now, out)
            elif kind == "persist" and gen.persist_deadline is not None and gen.persist_deadline <= now:
                self._checkpoint(gen, now, out)
        if now >= self._housekeeping_at:
            self._housekeeping_at = now + self.settings.housekeeping_ms / 1000
            self._adoption_window(now, out)
            if now >= self._heartbeat_at:  # generators cancel their streams when we fall silent
                # a second apart; ten a second in the adoption window, so that generators, whose subscriptions
                # reach a restarted coordinator's PUB a moment after it binds, hear of it and announce at once
                self._heartbeat_at = now + (0.1 if self.adopting_open else 1.0)
                out.append(ToControl(m.CoordinatorHeartbeat(now, self.instance)))
            self._check_generators(now, out)
            self._check_lost_jobs(now, out)
            self._check_stalls(now, out)
            self._evict_idle_sessions(now)
            self.persisted.sweep_held = self._sweep_held()
            out.extend(ToPersister(op) for op in self.persisted.due(now, self._text_of))
        return out
