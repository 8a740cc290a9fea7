"""The coordinator's pure state machine: sessions, generations, and the rules of the stream.

``Coordinator.handle_rpc``, ``handle_event`` and ``tick`` return a list of effects; nothing here touches a
socket, a clock or the database. ``Coordinator`` composes parts that each own their state and are given what they
need: ``book.SessionBook`` (the sessions in memory), ``generators.Generators`` (who streams, what their servers
told), ``persistence.PersistTracker`` (what the persister has), ``stream.Streams`` (the replies under way: seq
checks, coalescing, checkpoints, finalize, liveness), ``continuing.Continuation`` (going on after a fault),
``requests.Requests`` (what clients ask to change), ``changes.SessionChanges`` (rename, delete, branches, fork:
answered once applied), ``imports.Imports`` (sessions given back whole), ``views.Views`` (what they ask to read)
and ``adoption.Adoption`` (a restarted coordinator taking over the replies in flight). Here: the dispatch tables and
the timers.
"""
from __future__ import annotations

from protocol import answers, messages as m
from services.config import CoordinatorSettings as Settings
from services.coordinator.adoption import Adoption
from services.coordinator.book import SessionBook
from services.coordinator.changes import Deferred, SessionChanges
from services.coordinator.continuing import Continuation
from services.coordinator.effects import (LoadSessionOfGeneration, Log, ReplyTo, RequestRefused, ToClients,
                                          ToControl, ToGenerators, ToPersister, content_hash, new_id, new_ordered_id)
from services.coordinator.generation import GenerationState
from services.coordinator.generators import Generators
from services.coordinator.imports import Imports
from services.coordinator.titles import AutoTitles
from services.coordinator.users import GatewayUsers
from services.coordinator.persistence import PersistTracker
from services.coordinator.requests import Requests
from services.coordinator.stream import Streams
from services.coordinator.views import Health, Views

# what the shell and the tests take from here: the machine, its settings, and the effects it returns
# the persister's answers after which a change of a session may be applied (its save, or a message's create that
# carries the same row)
CHANGE_SETTLED_BY = (m.SessionSaved, m.PersistAck, m.PersistRejected)

__all__ = ["Coordinator", "Settings", "Log", "LoadSessionOfGeneration", "ReplyTo", "RequestRefused", "ToClients",
           "ToControl", "ToGenerators", "ToPersister", "content_hash", "new_id", "new_ordered_id", "GenerationState"]


class Coordinator:
    def __init__(self, settings: Settings, count_tokens, new_id=new_id, new_ordered_id=new_ordered_id,
                 pid: int = 0) -> None:
        self.settings = settings
        self.instance = new_id()  # in our heartbeats: a generator that sees it change announces its generations
        self.counters = {"late_deltas_dropped": 0, "duplicate_deltas_dropped": 0, "bad_frames_dropped": 0,
                         "gaps": 0, "generators_lost": 0, "generations_adopted": 0, "deltas_before_adoption": 0,
                         "jobs_sent_again": 0, "generations_requeued": 0,
                         "generations_continued": 0, "unsaved_sessions_dropped": 0,
                         # counted by the shell: its database reads, refused tcp handshakes and CURVE keys, and
                         # effects that failed alone because their frame would be over the limit
                         "database_reads": 0, "handshakes_refused": 0, "curve_keys_refused": 0,
                         "frames_too_large": 0}
        self.health = Health(pid=pid)
        self.book = SessionBook(settings.max_cached_sessions, self.counters)
        self.generators = Generators(settings, self.counters)
        self.persisted = PersistTracker(settings.persist_resend_ms, self.instance)
        continuing = Continuation(settings, count_tokens, self.book, self.generators, self.counters)
        self.streams = Streams(settings, count_tokens, self.book, self.generators, self.persisted, continuing,
                               self.counters, lambda run_id: self.adoption.may_adopt(run_id))
        self.adoption = Adoption(settings, count_tokens, self.book, self.streams, self.persisted, self.counters)
        self.requests = Requests(settings, count_tokens, new_id, new_ordered_id, self.book, self.streams,
                                 self.generators, self.persisted)
        self.views = Views(settings, count_tokens, self.book, self.streams, self.generators, self.persisted,
                           self.counters, self.health)
        self.changes = SessionChanges(settings, new_id, new_ordered_id, self.book, self.streams, self.persisted)
        self.imports = Imports(settings, self.book, self.persisted, self.changes)
        self.users = GatewayUsers(new_id, self.persisted)
        self.titles = AutoTitles(settings, new_ordered_id, self.book, self.persisted)
        self.waiters: dict[tuple, list[tuple[bytes, int]]] = {}  # a deferred answer's key -> who asked
        self._housekeeping_at = 0.0
        self._heartbeat_at = 0.0
        r, v, s, p = self.requests, self.views, self.streams, self.persisted
        self._handlers = {
            m.NewSession: r.on_new_session, m.Send: r.on_send, m.Cancel: r.on_cancel,
            m.Regenerate: r.on_regenerate, m.ConfigureSession: r.on_configure, m.Continue: r.on_continue,
            m.Snapshot: v.on_snapshot, m.Status: v.on_status, m.History: v.on_history, m.Preview: v.on_preview,
            m.Sessions: v.on_sessions, m.ResolveSession: v.on_resolve, m.Search: v.on_search,
            m.RenameSession: self.changes.on_rename, m.DeleteSessions: self.changes.on_delete,
            m.EditMessage: r.on_edit, m.SwitchBranch: self.changes.on_switch, m.ForkSession: self.changes.on_fork,
            m.SessionTree: v.on_tree, m.DeleteBranch: self.changes.on_delete_branch,
            m.ExportSession: v.on_export, m.ImportSession: self.imports.on_import, m.ReplyOf: v.on_reply_of,
            m.AddUser: self.users.on_add, m.RevokeUser: self.users.on_revoke, m.Users: self.users.on_list,
            m.WhoIs: self.users.on_whois, m.FindTurn: v.on_find_turn,
        }
        self._event_handlers = {
            m.GenStarted: s.on_started, m.GenDelta: s.on_delta, m.GenDone: s.on_done,
            m.GenDeltaBatch: s.on_delta_batch, m.GenError: s.on_error, m.GenCancelled: s.on_cancelled,
            m.GenToolCall: s.on_tool_call, m.GeneratorHeartbeat: self.generators.on_heartbeat,
            m.GenAnnounce: self.adoption.on_announce, m.GenCatchUp: self.adoption.on_catch_up,
            m.PersistAck: s.on_persist_ack, m.PersistRejected: s.on_persist_rejected,
            m.PersisterHello: self._on_persister_hello, m.PersisterStats: self._on_persister_stats,
            m.SessionSaved: lambda msg, now, out: p.on_session_saved(msg.session_id, msg.saved_at),
            m.OrphansInterrupted: lambda msg, now, out: p.on_orphans_interrupted(msg),
            m.SessionsPurged: lambda msg, now, out: self._answer(self.changes.purged(msg, out), out),
            m.UserSaved: lambda msg, now, out: self._answer(self.users.saved(msg), out),
        }
        # any message of the persister says it is there (status): noted by its handlers alone, so that the
        # generators' events, the per-delta path, pay nothing for it
        for kind in m.PERSIST_ACKS:
            self._event_handlers[kind] = self._heard_from_persister(self._event_handlers[kind])

    # ------------------------------------------------------------ what the shell and the tests read

    @property
    def sessions(self):
        return self.book.sessions

    @property
    def message_sessions(self):
        return self.book.message_sessions

    @property
    def active(self) -> dict[str, GenerationState]:
        return self.streams.active

    @property
    def finalizing(self) -> dict[str, GenerationState]:
        return self.streams.finalizing

    def first_token_awaited(self) -> bool:
        """Whether a reply still waits for its first token: the shell's loop is not paced then, so the first
        token reaches clients at once."""
        return self.streams.first_token_wait()

    # ------------------------------------------------------------ entry points

    def handle_rpc(self, client: bytes, msg: m.Message, now: float) -> list:
        out: list = []
        try:
            result = self._handlers[type(msg)](msg, now, out)
            if type(result) is Deferred:  # answered once the persister has applied it
                self.waiters.setdefault(result.key, []).append((client, msg.req_id))
            else:
                out.append(ReplyTo(client, m.Reply(msg.req_id, True, result)))
            while self.changes.refused:
                key, words = self.changes.refused.pop()
                out.extend(ReplyTo(c, m.Reply(r, False, None, words)) for c, r in self.waiters.pop(key, ()))
        except RequestRefused as refused:
            out.append(ReplyTo(client, m.Reply(msg.req_id, False, None, str(refused))))
        return out

    def handle_event(self, msg: m.Message, now: float) -> list:
        out: list = []
        if self.titles.jobs and self._title_events(msg, now, out):
            return out
        done = self.streams.active.get(msg.generation_id) if type(msg) is m.GenDone else None
        self._event_handlers[type(msg)](msg, now, out)
        if done is not None and done.status == "completed" and self.settings.auto_title:
            self.titles.after_reply(self.book.sessions.get(done.session_id), done.record, done.text(), now, out)
        if self.changes.waiting and type(msg) in CHANGE_SETTLED_BY:
            self._answer(self.changes.settled(out), out)
        return out

    def _title_events(self, msg: m.Message, now: float, out: list) -> bool:
        """Events of a title's generation (``titles.py``), which is no reply: taken out before the streams see
        them. True when nothing else is left of ``msg``."""
        if type(msg) is m.GenDeltaBatch:
            mine = [item for item in msg.deltas if self.titles.owns(item.generation_id)]
            for item in mine:
                self.titles.on_event(item, now, out)
            if mine:
                msg.deltas = [item for item in msg.deltas if not self.titles.owns(item.generation_id)]
            return not msg.deltas
        if self.titles.owns(getattr(msg, "generation_id", "")):
            self.titles.on_event(msg, now, out)
            return True
        return False

    def _answer(self, done: list[tuple[tuple, answers.Result]], out: list) -> None:
        """Deferred requests answered: what each waited for is applied."""
        for key, result in done:
            for client, req_id in self.waiters.pop(key, ()):
                out.append(ReplyTo(client, m.Reply(req_id, True, result)))

    def adopt(self, generation_id: str, data: dict | None, now: float) -> list:
        """The shell read the session of an announced generation (``LoadSessionOfGeneration``)."""
        return self.adoption.adopt(generation_id, data, now)

    def load_session(self, data: dict) -> None:
        """Take in a session read from the database (after a restart, or evicted). While replies may still be
        adopted (``adoption.py``), a streaming reply stays streaming, and holds its session."""
        self.book.load(data, keep_streaming=self.adoption.sweep_held())

    def load_summaries(self, rows: list[dict]) -> None:
        """The database's sessions list, read by the shell for a ``Sessions`` request."""
        self.book.load_summaries(rows)

    def next_deadline(self) -> float:
        soonest = self.streams.next_deadline()
        return self._housekeeping_at if soonest is None else min(soonest, self._housekeeping_at)

    def tick(self, now: float) -> list:
        out: list = []
        self.streams.due(now, out)
        if now >= self._housekeeping_at:
            self._housekeeping_at = now + self.settings.housekeeping_ms / 1000
            self.adoption.window(now, out)
            if now >= self._heartbeat_at:  # generators cancel their streams when we fall silent
                # a second apart; ten a second in the adoption window, so that generators, whose subscriptions
                # reach a restarted coordinator's PUB a moment after it binds, hear of it and announce at once
                self._heartbeat_at = now + (0.1 if self.adoption.open else 1.0)
                out.append(ToControl(m.CoordinatorHeartbeat(now, self.instance)))
            for generator_id in self.generators.lost(now, out):
                self.streams.generator_lost(generator_id, now, out)
            self.streams.check_lost_jobs(now, out)
            self.streams.check_stalls(now, out)
            busy = {g.session_id for g in self.active.values()} | {g.session_id for g in self.finalizing.values()}
            self.book.evict_idle(now, busy, self.persisted.sessions, self.persisted.states)
            self.persisted.sweep_held = self.adoption.sweep_held()
            out.extend(ToPersister(op) for op in self.persisted.due(now, self.streams.text_of))
        return out

    # ------------------------------------------------------------ the persister's presence

    def _heard_from_persister(self, handler):
        def handle(msg: m.Message, now: float, out: list) -> None:
            self.health.persister_seen_at = now
            handler(msg, now, out)
        return handle

    def _on_persister_hello(self, msg: m.PersisterHello, now: float, out: list) -> None:
        self.health.persister_pid = msg.pid
        self.persisted.on_persister_hello()
        self._housekeeping_at = 0.0
        out.append(Log("persister_joined", {}))

    def _on_persister_stats(self, msg: m.PersisterStats, now: float, out: list) -> None:
        self.health.persister_stats = answers.PersisterTotals(
            pid=msg.pid, commits=msg.commits, ops=msg.ops, reply_text_bytes=msg.reply_text_bytes,
            failed_batches=msg.failed_batches, ops_rejected=msg.ops_rejected, failing_since=msg.failing_since,
            last_error=msg.last_error, frames_dropped=msg.frames_dropped, last_failed_at=msg.last_failed_at,
            last_failure=msg.last_failure)
