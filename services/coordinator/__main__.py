"""The coordinator's shell: binds every endpoint, drains sockets in batches, feeds the
state machine, and carries out its effects. No stream rule lives here."""
from __future__ import annotations

import os
import time
from typing import Callable

import msgpack
import zmq

from protocol import codec, messages as m
import transport
from transport import curve
from services import config, pacing, shell, store
from services.coordinator.effects import ForgetReadCaches
from services.coordinator.machine import (Coordinator, Log, LoadSessionOfGeneration, ReplyTo, ToClients, ToControl,
                                          ToGenerators, ToPersister)
from services.coordinator import pages
from services.coordinator.generation import base_id
from services.coordinator.reader import DatabaseReader
from services.tokens import count_tokens

DRAIN_BATCH = 256  # frames taken per socket and loop turn (``transport.take``)


class CoordinatorShell:
    def __init__(self) -> None:
        self.log = shell.start("coordinator")
        self.settings = config.CoordinatorSettings.from_env()
        self.machine = Coordinator(self.settings, count_tokens, pid=os.getpid())
        # read-only here; a bad URL stops the start, as in the persister, and a server that does not answer yet
        # is waited for: reads are refused meanwhile, and the reader tries it until it answers
        unreachable = None
        try:
            self.db = store.open_database(self.settings.database_url)
        except store.DatabaseUnreachable as exc:
            self.db, unreachable = exc.db, shell.plain_error(exc)
            self.log.error("database_unreachable", database=store.describe_url(self.settings.database_url),
                           error=unreachable)
        count_tokens("warm up", self.settings.default_model)  # load the encoding now, not on the first request
        self.run_dir_lock = transport.claim_run_dir()  # before binding: a second coordinator must not take over
        self.ctx = zmq.Context()
        # CURVE's ZAP handler must be there before a tcp socket binds: it is asked at every handshake
        keys = curve.settings(coordinator=True)
        self.authorized = curve.AuthorizedKeys(self.ctx, keys.authorized, self.log) if keys is not None else None
        self.rpc = transport.open_socket(self.ctx, transport.RPC, bind=True)
        # per-subscriber queue bound: past it PUB drops, and clients catch up by snapshot
        self.stream = transport.open_socket(self.ctx, transport.STREAM, bind=True,
                                            hwm=self.settings.stream_hwm or None)
        self.jobs = transport.open_socket(self.ctx, transport.JOBS, bind=True)
        self.gen_events = transport.open_socket(self.ctx, transport.GEN_EVENTS, bind=True)
        self.control = transport.open_socket(self.ctx, transport.CONTROL, bind=True)
        self.persist = transport.open_socket(self.ctx, transport.PERSIST, bind=True)
        self.acks = transport.open_socket(self.ctx, transport.PERSIST_ACKS, bind=True)
        self.bound = (self.rpc, self.stream, self.jobs, self.gen_events, self.control, self.persist, self.acks)
        # refused handshakes on the tcp channels, counted and logged (an unauthorized key, a plain client)
        watches = (shell.RefusalWatch(self.log, sock, channel) for sock, channel in zip(self.bound, transport.CHANNELS))
        self.refusals = {watch.monitor: watch for watch in watches if watch.monitor is not None}
        # jobs wait here, in order, while every generator is full or none is connected
        self.pending_jobs = transport.Outbox(self.jobs)
        self.bad_frames = shell.BadFrames(self.log, self.machine.counters)
        self.reader = DatabaseReader(self.ctx, self.db, unreachable)
        self.machine.health.reads, self.machine.health.reads_last_failure = self.reader.health, self.reader.last_failure
        self.parked: dict[str, list[tuple[bytes, m.Message]]] = {}  # read key -> requests waiting on it
        self.adopting: dict[str, str] = {}  # read key -> the generation whose session it reads, to adopt it
        self.stopping = False

    # ------------------------------------------------------------ effects

    def carry_out(self, effects: list) -> None:
        persist_ops: list[bytes] = []
        for effect in effects:
            kind = type(effect)
            try:
                if kind is ToClients:
                    self.stream.send(transport.published(effect.session_id, effect.msg.encode()))
                elif kind is ToPersister:
                    persist_ops.append(effect.msg.encode())
                elif kind is ToControl:
                    topic = getattr(effect.msg, "generation_id", "")
                    self.control.send(transport.published(topic, effect.msg.encode()))
                elif kind is ToGenerators:
                    self.pending_jobs.put(m.job_frames(effect.msg))
                elif kind is ReplyTo:
                    self.rpc.send_multipart([effect.client, effect.msg.encode()])
                elif kind is Log:
                    self.log.info(effect.event, **effect.fields)
                elif kind is LoadSessionOfGeneration:
                    gen_id = effect.generation_id
                    self.reader.ask(f"generation {gen_id}", lambda gen_id=gen_id: (
                        "adopt", (gen_id, store.session_of_generation(base_id(gen_id)))))
                    self.adopting[f"generation {gen_id}"] = gen_id
                elif kind is ForgetReadCaches:
                    self.reader.ask("forget the log", lambda: ("forgot", store.forget_log_index()))
            except codec.FrameTooLarge as exc:  # a bug: every answer is paged and every text cut to fit
                self.frame_too_large(effect, exc)
        for frame in m.bundle(persist_ops):  # in order, one send per bundle rather than per operation
            # refused when there is no persister or its queue is full: the machine resends what is not acked
            transport.offer(self.persist, frame)
        self.pending_jobs.flush()

    def frame_too_large(self, effect, exc: codec.FrameTooLarge) -> None:
        """An effect whose frame would be over the limit fails alone: logged with its type and size, counted
        (``chatter status``), and an rpc answer becomes a refusal that says so. The coordinator goes on."""
        self.machine.counters["frames_too_large"] += 1
        name = type(effect.msg).__name__
        self.log.error("frame_too_large", effect=type(effect).__name__, message=name, bytes=exc.size,
                       limit=codec.MAX_FRAME_BYTES, total=self.machine.counters["frames_too_large"])
        if type(effect) is ReplyTo:
            words = (f"the answer is {exc.size} bytes, over the {codec.MAX_FRAME_BYTES} bytes a frame may hold; "
                     "nothing was changed (the coordinator's log has it as frame_too_large)")
            self.rpc.send_multipart([effect.client, m.Reply(effect.msg.req_id, False, None, words).encode()])

    # ------------------------------------------------------------ inputs

    def read_for(self, msg: m.Message) -> tuple[str, Callable[[], tuple]] | None:
        """The database read a request needs before the machine can answer it, as (key, read): a session not
        in memory (after a restart, or evicted), the session of a message, or the stored sessions list."""
        if isinstance(msg, m.ResolveSession):
            prefix = msg.prefix
            return f"prefix {prefix}", lambda: ("matches", (prefix, store.sessions_with_prefix(prefix)))
        if isinstance(msg, (m.AddUser, m.RevokeUser, m.Users, m.WhoIs)):
            if self.machine.users.rows is not None:
                return None
            return "users", lambda: ("users", store.list_users())
        if isinstance(msg, m.Sessions):
            # keyed by the page: a read of 100 cannot answer a request for 1000 parked behind it; one more than
            # the page is read, so that the machine knows whether there are more
            limit = min(msg.limit, pages.SESSIONS_PAGE) + 1
            return (f"sessions {limit} {msg.before!r} {msg.before_id} {msg.owner}",
                    lambda: ("summaries", store.list_sessions(limit, msg.before, msg.before_id, msg.owner)))
        if "\x00" in (getattr(msg, "session_id", None) or "") + (getattr(msg, "message_id", None) or ""):
            return None  # no id has one, and PostgreSQL refuses it in a query: unknown, with no read
        if isinstance(msg, m.FindTurn):  # a read of its own, by the chain's index
            return (f"turn {msg.req_id} {id(msg)}",
                    lambda: ("turn", (msg, store.find_turn(msg.chain, msg.reply_hash, msg.owner))))
        if isinstance(msg, m.Search):  # a read of its own: the answer is the database's ranking
            query, session_id, limit, owner = msg.query, msg.session_id, msg.limit, msg.owner
            return (f"search {msg.req_id} {id(msg)}",
                    lambda: ("hits", (msg, store.search_messages(store.db_proxy.obj, query, session_id, limit,
                                                                 owner))))
        if isinstance(msg, (m.Preview, m.ReplyOf)) and msg.message_id not in self.machine.message_sessions:
            return f"message {msg.message_id}", lambda: ("session", _session_of_message(msg.message_id))
        session_id = getattr(msg, "session_id", None)
        if session_id and session_id not in self.machine.sessions and session_id not in self.machine.book.gone:
            return f"session {session_id}", lambda: ("session", store.load_session(session_id))
        return None

    def drain_rpc(self, now: float) -> None:
        for frames in transport.take(self.rpc, DRAIN_BATCH, multipart=True):
            client, payload = frames[0], frames[-1]
            try:
                msg = codec.decode(payload, m.RPC_REQUESTS)
            except codec.FrameError as err:
                self.bad_frames.drop("rpc", err)
                req_id = _salvage_req_id(payload)
                if req_id is not None:
                    self.carry_out([ReplyTo(client, m.Reply(req_id, False, None, f"bad request: {err}"))])
                continue
            need = self.read_for(msg)
            if need is None:
                self.answer(client, msg, now)
                continue
            key, read = need
            waiting = self.parked.setdefault(key, [])
            if not waiting:  # one read serves every request parked behind it
                self.reader.ask(key, read)
            waiting.append((client, msg))

    def take_reads(self, now: float) -> None:
        """Answers of the database reader: adopt what was read, then answer the requests parked on it."""
        answers = self.reader.take()
        self.machine.health.reads, self.machine.health.reads_last_failure = self.reader.health, self.reader.last_failure
        self.machine.counters["database_reads"] += len(answers)
        for key, value, exc in answers:
            adopting = self.adopting.pop(key, None)
            if exc is not None:
                self.log.warning("session_load_failed", read=key, error=shell.plain_error(exc), exc_info=exc)
                if adopting is not None:  # unreadable: it cannot be adopted, and is swept like any orphan
                    self.carry_out(self.machine.adopt(adopting, None, now))
            elif value[0] == "adopt":
                self.carry_out(self.machine.adopt(*value[1], now))
            elif value[0] == "session" and value[1] is not None:
                self.machine.load_session(value[1])
            elif value[0] == "summaries":
                self.machine.load_summaries(value[1])
            elif value[0] == "matches":
                self.machine.book.stored_matches = dict([value[1]])
            elif value[0] == "hits":
                self.machine.views.found(*value[1])
            elif value[0] == "turn":
                self.machine.views.turns[id(value[1][0])] = value[1][1]
            elif value[0] == "users":
                self.machine.users.loaded(value[1])
            for client, msg in self.parked.pop(key, []):
                if exc is not None:
                    refusal = f"could not read the database: {shell.plain_error(exc)}; try again"
                    self.carry_out([ReplyTo(client, m.Reply(msg.req_id, False, None, refusal))])
                else:
                    self.answer(client, msg, now)

    def answer(self, client: bytes, msg: m.Message, now: float) -> None:
        try:
            effects = self.machine.handle_rpc(client, msg, now)
        except Exception:  # a bug must cost one request, never the coordinator
            self.log.exception("rpc_failed", request=type(msg).__name__)
            effects = [ReplyTo(client, m.Reply(msg.req_id, False, None, "internal error in the coordinator; "
                                               "see its log"))]
        self.carry_out(effects)

    def drain_events(self, sock: zmq.Socket, channel: str, expect: tuple, now: float) -> None:
        effects: list = []
        for msg in shell.take_messages(sock, DRAIN_BATCH, expect, channel, self.bad_frames):
            try:
                effects.extend(self.machine.handle_event(msg, now))
            except Exception:  # a bug must cost one event, never the coordinator
                self.log.exception("event_failed", event=type(msg).__name__)
        self.carry_out(effects)

    # ------------------------------------------------------------ loop

    def run(self) -> None:
        shell.on_stop_signals(self.stop)
        poller = zmq.Poller()
        for sock in (self.rpc, self.gen_events, self.acks, self.reader.wake, *self.refusals):
            poller.register(sock, zmq.POLLIN)
        keys_checked_at = 0.0
        poller.register(self.jobs, 0)
        self.log.info("coordinator_ready", rpc=transport.endpoint(transport.RPC))
        pacer = pacing.Pacer(self.settings.wake_ms / 1000, sleep=pacing.WakeOnMessage(self.rpc).sleep,  # CHATTER_WAKE_MS
                            hurry=self.machine.first_token_awaited)
        shell.freeze_startup_heap()
        while not self.stopping:
            pacer.pace()
            now = time.time()
            timeout_ms = max(0, min(250, (self.machine.next_deadline() - now) * 1000))
            # jobs wait here while every generator's pipe is full: wake the moment one has room
            poller.modify(self.jobs, zmq.POLLOUT if self.pending_jobs else 0)
            ready = dict(poller.poll(timeout_ms))
            pacer.woke()
            now = time.time()
            if self.rpc in ready:  # first: a stop waits behind one turn's events at most, not two
                self.drain_rpc(now)
            if self.gen_events in ready:
                self.drain_events(self.gen_events, "gen-events", m.GEN_EVENTS, now)
            if self.acks in ready:
                self.drain_events(self.acks, "persist-acks", m.PERSIST_ACKS, now)
            if self.reader.wake in ready:
                self.take_reads(now)
            for monitor in [sock for sock in self.refusals if sock in ready]:
                self.refusals[monitor].check()
                self.machine.counters["handshakes_refused"] = sum(w.refused for w in self.refusals.values())
            if self.authorized is not None and now - keys_checked_at >= 1.0:
                keys_checked_at = now
                self.authorized.reload_if_changed()
                self.machine.counters["curve_keys_refused"] = self.authorized.refused_keys
            self.carry_out(self.machine.tick(time.time()))
        self.close()

    def close(self) -> None:
        for watch in self.refusals.values():
            watch.close()
        for sock in self.bound:
            transport.close_bound(sock)
        if self.authorized is not None:
            self.authorized.stop()
        self.reader.close()
        self.ctx.term()
        transport.release_run_dir(self.run_dir_lock)
        self.log.info("coordinator_stopped")

    def stop(self) -> None:
        self.stopping = True


def _session_of_message(message_id: str) -> dict | None:
    session_id = store.find_message_session(message_id)
    return store.load_session(session_id) if session_id else None


def _salvage_req_id(payload: bytes) -> int | None:
    """A bad request still gets an answer when its request id can be read."""
    try:
        frame = msgpack.unpackb(payload, raw=False, strict_map_key=False)  # [version, [type, req_id, ...]]
        body = frame[1] if isinstance(frame, list) and len(frame) == 2 else None
        req_id = body[1] if isinstance(body, list) and len(body) > 1 else None
        return req_id if isinstance(req_id, int) and not isinstance(req_id, bool) else None
    except Exception:
        return None


def main() -> None:
    shell.main("coordinator", CoordinatorShell)


if __name__ == "__main__":
    main()
