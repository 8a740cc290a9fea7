"""The stream rules of the coordinator's machine: the replies under way and their generator events (seq checks,
late and duplicate deltas), coalescing to clients, checkpoint cadence, the finalize order (tail -> finalize ->
persister ack -> ``final``), and liveness (lost generators and jobs, stalls). A part of ``machine.Coordinator``,
given the sessions, the generators, the persist tracker and the continuation rules it needs; pure, like all of the
machine."""
from __future__ import annotations

import heapq
from typing import Callable

from protocol import messages as m
from protocol.codec import pieces
from protocol.lifecycle import Status, move
from protocol.conversation import tool_call_at
from services.coordinator.book import SessionBook
from services.coordinator.continuing import Continuation
from services.coordinator.effects import Log, ToClients, ToControl, ToGenerators, ToPersister, content_hash
from services.coordinator.generation import RUN_MARK, GenerationState, ReplyText, base_id, next_checkpoint, stats
from services.coordinator.generators import Generators
from services.coordinator.persistence import PersistTracker
from services.waiting import FirstTokenWait


class Streams:
    def __init__(self, settings, count_tokens, book: SessionBook, generators: Generators, persisted: PersistTracker,
                 continuing: Continuation, counters: dict, may_be_adopted: Callable[[str], bool]) -> None:
        self.settings, self.count_tokens, self.counters = settings, count_tokens, counters
        self.book, self.generators, self.persisted, self.continuing = book, generators, persisted, continuing
        self.may_be_adopted = may_be_adopted  # a delta of a generation we do not know: adoption may take it
        self.active: dict[str, GenerationState] = {}  # queued or streaming
        self.finalizing: dict[str, GenerationState] = {}  # terminal, waiting for the persister's ack
        # the replies dispatched before their first token; asked before each paced sleep (``first_token_awaited``)
        self.first_token_wait = FirstTokenWait(self._awaits_first_token)
        self.deadlines: list[tuple[float, int, str, str]] = []  # (when, tiebreak, generation id, kind)
        self._tiebreak = 0

    def running(self, run_id: str) -> GenerationState | None:
        """The active generation whose current run ``run_id`` is (a continuation after a fault runs as
        ``<id>~<n>``); None for the events of an ended generation or of a run before its continuation."""
        gen = self.active.get(run_id)
        if gen is not None:
            return gen if not gen.request.run else None
        if RUN_MARK in run_id:
            gen = self.active.get(base_id(run_id))
            if gen is not None and gen.run_id == run_id:
                return gen
        return None

    # ------------------------------------------------------------ generator events

    def on_started(self, msg: m.GenStarted, now: float, out: list) -> None:
        gen = self.running(msg.generation_id)
        if gen is None:
            out.append(ToControl(m.CancelGeneration(msg.generation_id)))
            return
        st = gen.stream
        st.generator_id, st.run_started_at = msg.generator_id, now
        if st.started_at is None:
            st.started_at = now
        gen.moved(Status.STREAMING)

    def on_delta(self, msg: m.GenDelta | m.DeltaItem, now: float, out: list) -> None:
        gen = self.active.get(msg.generation_id)  # the per-delta path: one lookup for a run never continued
        if gen is None or gen.request.run:
            gen = self.running(msg.generation_id)
        if gen is None:  # terminal or unknown: late. Drop, count, and make sure its generator stops.
            if self.may_be_adopted(msg.generation_id):
                self.counters["deltas_before_adoption"] += 1  # it may be adopted in a moment: no cancel
                return
            self.counters["late_deltas_dropped"] += 1
            out.append(ToControl(m.CancelGeneration(msg.generation_id)))
            return
        st = gen.stream
        if st.catching_up:
            return  # its generator resends all of it in the catch-up
        thinking, seq, fresh = msg.thinking, msg.seq, msg.text
        text = gen.thinking if thinking else gen.answer  # two texts, each with its own seq
        if seq != text.last_seq + 1:
            if seq <= text.last_seq:
                self.counters["duplicate_deltas_dropped"] += 1
                return
            self.counters["gaps"] += 1
            out.append(ToControl(m.CancelGeneration(gen.run_id)))
            self.finalize(gen, "error", now, out, error=f"gap in stream: expected {_kind(thinking)}seq "
                          f"{text.last_seq + 1}, got {seq}")
            return
        text.last_seq = seq
        st.last_delta_at = now  # thinking is progress: the stall watchdog and the first-token wait see it
        if st.first_token_at is None:
            st.first_token_at = now
            gen.moved(Status.STREAMING)
        counts = gen.counts
        if thinking:
            if counts.thinking_started_at is None:
                counts.thinking_started_at = now
            counts.reasoning_tokens += msg.tokens
        elif counts.thinking_started_at is not None and counts.thinking_ended_at is None:
            counts.thinking_ended_at = now
        if not fresh:
            return
        counts.tokens += msg.tokens
        if not (gen.answer.client_pending or gen.thinking.client_pending):
            gen.delivery.client_pending_since = msg.received_at
        # ``ReplyText.add``, written out: a call per delta cost 0.02-0.05 µs of ~0.72 (bench/coordinator_path.py)
        text.parts.append(fresh)
        text.length += len(fresh)
        text.client_pending.append(fresh)
        text.persist_pending.append(fresh)
        text.persist_pending_len += len(fresh)
        self.schedule(gen, text, now, out)

    def on_delta_batch(self, msg: m.GenDeltaBatch, now: float, out: list) -> None:
        on_delta = self.on_delta
        for delta in msg.deltas:  # typed at decode: each is a DeltaItem, with GenDelta's fields
            on_delta(delta, now, out)

    def on_tool_call(self, msg: m.GenToolCall, now: float, out: list) -> None:
        """A tool call grows: to clients at once (they are few), after the text still being coalesced (a client
        sees the words before the calls, as the model wrote them: the gateway numbers its events so), to the
        persister at the next checkpoint."""
        gen = self.running(msg.generation_id)
        if gen is None or gen.stream.catching_up:
            return
        if gen.answer.client_pending or gen.thinking.client_pending:
            self.flush_clients(gen, now, out)
        call = tool_call_at(gen.tool_calls, msg.index, msg.call_id, msg.name)
        if call is None:  # a call's index skipped one: not a stream this reply can hold
            return
        offset = len(call["function"]["arguments"])
        call["function"]["arguments"] += msg.arguments
        gen.stream.last_delta_at = now
        gen.moved(Status.STREAMING)
        gen.delivery.tool_calls_saved = False
        out.append(ToClients(gen.session_id, m.StreamToolCall(gen.session_id, gen.generation_id, msg.index, call["id"],
                                                              call["function"]["name"], offset, msg.arguments)))
        self.schedule(gen, gen.answer, now, out)

    def on_done(self, msg: m.GenDone, now: float, out: list) -> None:
        gen = self.running(msg.generation_id)
        if gen is None or gen.stream.catching_up:  # catching up: the generator resends its end after the catch-up
            return
        for thinking, last_seq, length, text in ((False, msg.last_seq, msg.length, gen.answer),
                                                 (True, msg.reasoning_last_seq, msg.reasoning_length, gen.thinking)):
            if last_seq != text.last_seq or length != text.length:
                self.finalize(gen, "error", now, out, error=f"stream incomplete: generator sent {_kind(thinking)}"
                              f"seq {last_seq} ({length} chars), coordinator has seq {text.last_seq} "
                              f"({text.length} chars)")
                return
        counts = gen.counts
        counts.tokens = counts.tokens_before + msg.completion_tokens
        counts.run_tokens_source = msg.tokens_source
        # a continued reply's count is the server's only if every segment's was
        counts.tokens_source = msg.tokens_source if all(seg.get("tokens_source") == "server"
                                                        for seg in counts.segments) else "estimated"
        counts.reasoning_tokens, counts.reasoning_tokens_source = msg.reasoning_tokens, msg.reasoning_tokens_source
        gen.stream.finish_reason, gen.stream.streamed = msg.finish_reason or None, msg.streamed
        self.finalize(gen, "completed", now, out)

    def on_error(self, msg: m.GenError, now: float, out: list) -> None:
        gen = self.running(msg.generation_id)
        if gen is not None and not gen.stream.catching_up:
            self.fault(gen, msg.reason, now, out)

    def on_cancelled(self, msg: m.GenCancelled, now: float, out: list) -> None:
        gen = self.running(msg.generation_id)
        # we did not ask: the generator gave up on its own (it lost the coordinator)
        if gen is not None and not gen.stream.catching_up:
            self.fault(gen, "generator cancelled the stream", now, out)

    def fault(self, gen: GenerationState, fault: str, now: float, out: list) -> None:
        """A run that failed after it began: continued where the server allows it, else the reply ends as error."""
        if self.continuing.after(gen, fault, now, out):
            self.dispatch(gen, now, out)
        else:
            self.finalize(gen, "error", now, out, error=fault)

    # ------------------------------------------------------------ coalescing and checkpoints

    def schedule(self, gen: GenerationState, text: ReplyText, now: float, out: list) -> None:
        """Coalescing and checkpoints, per generation: one deadline of each flushes both texts. The per-delta
        path: with a deadline set, only size can flush early (the deadline is in the heap, and ``due`` runs
        after every drain), so most deltas cost two comparisons here."""
        s, d = self.settings, gen.delivery
        if d.client_deadline is None:
            if text.length - text.client_len >= s.flush_chars or now >= d.client_flushed_at + s.flush_ms / 1000:
                self.flush_clients(gen, now, out)  # the first delta always lands here: TTFT is never delayed
            else:
                d.client_deadline = d.client_flushed_at + s.flush_ms / 1000
                self._push_deadline(d.client_deadline, gen.generation_id, "client")
        elif text.length - text.client_len >= s.flush_chars:
            self.flush_clients(gen, now, out)
        if d.persist_deadline is None:
            due = next_checkpoint(d.persist_flushed_at, s.checkpoint_ms / 1000)
            if text.persist_pending_len >= s.checkpoint_chars or now >= due:
                self.checkpoint(gen, now, out)
            else:
                d.persist_deadline = due
                self._push_deadline(due, gen.generation_id, "persist")
        elif text.persist_pending_len >= s.checkpoint_chars:
            self.checkpoint(gen, now, out)

    def _push_deadline(self, when: float, gen_id: str, kind: str) -> None:
        self._tiebreak += 1
        heapq.heappush(self.deadlines, (when, self._tiebreak, gen_id, kind))

    def next_deadline(self) -> float | None:
        return self.deadlines[0][0] if self.deadlines else None

    def due(self, now: float, out: list) -> None:
        """The coalescing and checkpoint deadlines that have come."""
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, gen_id, kind = heapq.heappop(deadlines)
            gen = self.active.get(gen_id)
            if gen is None:
                continue
            d = gen.delivery
            if kind == "client" and d.client_deadline is not None and d.client_deadline <= now:
                self.flush_clients(gen, now, out)
            elif kind == "persist" and d.persist_deadline is not None and d.persist_deadline <= now:
                self.checkpoint(gen, now, out)

    def flush_clients(self, gen: GenerationState, now: float, out: list) -> None:
        gen.delivery.client_deadline = None
        gen.delivery.client_flushed_at = now
        for thinking, text in gen.texts():
            if text.client_pending:
                fresh = "".join(text.client_pending)
                text.client_pending.clear()
                _publish_text(gen, text, fresh, thinking, out)

    def checkpoint(self, gen: GenerationState, now: float, out: list) -> None:
        d = gen.delivery
        d.persist_deadline = None
        d.persist_flushed_at = now
        for thinking, text in gen.texts():
            if text.persist_pending:
                fresh = "".join(text.persist_pending)
                text.persist_pending.clear()
                text.persist_pending_len = 0
                self._persist_text(gen, fresh, thinking, now, out)
        if not d.tool_calls_saved:
            d.tool_calls_saved = True
            out.append(ToPersister(m.SaveToolCalls(gen.message_id, [dict(c, function=dict(c["function"]))
                                                                    for c in gen.tool_calls])))

    def _persist_text(self, gen: GenerationState, fresh: str, thinking: bool, now: float, out: list) -> None:
        """``fresh`` to the persister after what was sent of the text, in pieces that each fit a frame."""
        for piece in pieces(fresh):
            out.append(ToPersister(self.persisted.append(gen.message_id, piece, now, thinking)))

    # ------------------------------------------------------------ finalize

    def finalize(self, gen: GenerationState, status: str, now: float, out: list, *, error: str | None = None,
                 keep_len: int | None = None, keep_reasoning_len: int | None = None) -> None:
        """Terminal at once (later deltas are late), then: tail to clients and persister, finalize op.
        The ``final`` event waits for the persister's ack (see ``on_persist_ack``)."""
        self.end(gen, status, now, out, error, keep_len, keep_reasoning_len)
        self.finalizing[gen.generation_id] = gen
        for thinking, text in gen.texts():
            sent_len = self.persisted.sent_len(gen.message_id, thinking)
            if sent_len < text.length:
                self._persist_text(gen, text.text()[sent_len:], thinking, now, out)
        continued = m.ContinuedPrompt(None, gen.prompt.prompt_hash, None,
                                      gen.prompt.ref) if gen.request.run else None  # the row takes the last prompt
        final = m.Finalize(gen.message_id, status, gen.length, content_hash(gen.text()), gen.record.stats, error,
                           gen.thinking.length, continued, gen.tool_calls or None)
        out.append(ToPersister(self.persisted.finalize(final, now)))
        out.append(Log("generation_" + status, {"session_id": gen.session_id, "generation_id": gen.generation_id,
                                                 "length": gen.length, "error": error}))

    def end(self, gen: GenerationState, status: str, now: float, out: list, error: str | None,
            keep_len: int | None = None, keep_reasoning_len: int | None = None) -> None:
        """A generation leaves ``active``: its record takes its final texts, status and stats, clients get the
        text they lack, and its session is free for the next reply."""
        del self.active[gen.generation_id]
        self.first_token_wait.ended(gen.generation_id)
        st, counts = gen.stream, gen.counts
        gen.status, st.ended_at, st.error = move(gen.status, status), now, error
        if counts.thinking_started_at is not None and counts.thinking_ended_at is None:
            counts.thinking_ended_at = now  # it thought to the end (a cancel mid-thought: no answer)
        if status == "cancelled":
            out.append(ToControl(m.CancelGeneration(gen.run_id)))
        # the canceller's view is what is kept; longer views are cut at ``final``
        cut_thinking = gen.thinking.cut(keep_reasoning_len)
        if gen.answer.cut(keep_len) or cut_thinking:
            model = gen.prompt.model
            counts.reasoning_tokens = self.count_tokens(gen.thinking.text(), model) if gen.thinking.length else 0
            counts.tokens = self.count_tokens(gen.text(), model) + counts.reasoning_tokens
            counts.tokens_source = counts.reasoning_tokens_source = "estimated"
        for thinking, text in gen.texts():
            if text.client_len < text.length:
                _publish_text(gen, text, text.text()[text.client_len:], thinking, out)
            text.client_pending.clear()
            text.persist_pending.clear()
            text.persist_pending_len = 0
        record = gen.record
        record.content, record.reasoning, record.tool_calls = gen.text(), gen.thinking.text(), gen.tool_calls
        record.status, record.error = move(record.status, status), error
        record.stats = stats(gen, now)
        sess = self.book.sessions[gen.session_id]
        self.book.touch(sess, now)
        if sess.active_generation == gen.generation_id:
            sess.active_generation = None

    # ------------------------------------------------------------ the persister's answers

    def on_persist_ack(self, msg: m.PersistAck, now: float, out: list) -> None:
        state = self.persisted.on_ack(msg)
        gen = self.finalizing.pop(state.generation_id, None) if state is not None else None
        if gen is not None:  # the last step of finalize: only now is the reply final for clients
            out.append(_final(gen, state.final))

    def on_persist_rejected(self, msg: m.PersistRejected, now: float, out: list) -> None:
        """The persister dropped an operation that it can never apply: stop resending what is left of the
        message, and end its reply as error. Nothing more of it can become durable, so ``final`` goes out
        now instead of after an ack."""
        state = self.persisted.reject(msg.message_id)
        out.append(Log("persist_rejected", {"message_id": msg.message_id, "reason": msg.reason}))
        sess = self.book.sessions.get(msg.message_id)  # a ``SaveSession``'s: the session is only in memory
        if sess is not None:
            sess.saved = False
        gen_id = state.generation_id if state is not None else None
        gen = self.active.get(gen_id or "") or self.finalizing.pop(gen_id or "", None)
        if gen is None:
            return
        error = f"the reply could not be stored: {msg.reason}"
        if gen.generation_id in self.active:
            out.append(ToControl(m.CancelGeneration(gen.run_id)))
            self.end(gen, "error", now, out, error)
        gen.record.status, gen.record.error = move(gen.record.status, Status.ERROR), error
        text = gen.record.content
        out.append(_final(gen, m.Finalize(gen.message_id, "error", len(text), content_hash(text), gen.record.stats,
                                          error, len(gen.record.reasoning))))

    def text_of(self, generation_id: str, thinking: bool) -> str:
        gen = self.active.get(generation_id) or self.finalizing[generation_id]
        return gen.thinking.text() if thinking else gen.text()

    # ------------------------------------------------------------ dispatch and liveness

    def dispatch(self, gen: GenerationState, now: float, out: list) -> None:
        gen.request.dispatched_at = now
        gen.stream.run_started_at = None
        if gen.stream.first_token_at is None:
            self.first_token_wait.add(gen.generation_id)
        out.append(ToGenerators(gen.job()))

    def _awaits_first_token(self, gen_id: str) -> bool:
        gen = self.active.get(gen_id)
        return gen is not None and gen.stream.first_token_at is None

    def generator_lost(self, generator_id: str, now: float, out: list) -> None:
        """Its replies with no token in this run are sent again; the others go on or end as error."""
        for gen in [g for g in self.active.values() if g.stream.generator_id == generator_id]:
            if gen.stream.last_delta_at is None:  # this run emitted nothing yet: safe to run again elsewhere
                gen.stream.generator_id = None
                if gen.stream.first_token_at is None:
                    gen.moved(Status.QUEUED)
                self.dispatch(gen, now, out)
                continue
            self.fault(gen, f"generator lost: {generator_id} stopped heartbeating", now, out)

    def check_lost_jobs(self, now: float, out: list) -> None:
        """A job that no generator took although every live generator has said since, a second or more after
        it was sent, that it has room, is in no generator's queue (a generator with room takes a job as it
        arrives): it was lost, with a generator that died before starting it. Sent again, it cannot run twice."""
        heard_since = self.generators.heard_with_room_since()
        if heard_since is None:
            return
        for gen in self.active.values():
            asked = gen.request
            if gen.stream.run_started_at is None and asked.dispatched_at is not None \
                    and asked.dispatched_at < heard_since:
                self.counters["jobs_sent_again"] += 1
                out.append(Log("job_sent_again", {"generation_id": gen.generation_id}))
                self.dispatch(gen, now, out)

    def check_stalls(self, now: float, out: list) -> None:
        """Nothing says "generating" forever, and each wait has its own limit: no generator taking the job
        and no token after the first are stalls (``stall_ms``); waiting for the first token is not (a server
        that runs one request at a time holds the others), and has its own, longer ``first_token_ms``."""
        s = self.settings
        for gen in list(self.active.values()):
            st = gen.stream
            if st.run_started_at is None:
                waited = now - (gen.request.run_queued_at or gen.request.queued_at)
                limit_ms, words, setting = s.stall_ms, "stalled: no generator took the job", "CHATTER_STALL_MS"
            elif st.last_delta_at is None:
                waited, limit_ms, words = now - st.run_started_at, s.first_token_ms, "no first token"
                setting = "CHATTER_FIRST_TOKEN_MS"
            else:
                waited, limit_ms, words = now - st.last_delta_at, s.stall_ms, "stalled: no token"
                setting = "CHATTER_STALL_MS"
            if waited > limit_ms / 1000:
                fault = f"{words} for {limit_ms / 1000:g} s ({setting})"
                if st.last_delta_at is not None and self.continuing.after(gen, fault, now, out):
                    self.dispatch(gen, now, out)
                    continue
                out.append(ToControl(m.CancelGeneration(gen.run_id)))
                self.finalize(gen, "error", now, out, error=fault)


def _publish_text(gen: GenerationState, text: ReplyText, fresh: str, thinking: bool, out: list) -> None:
    """``fresh`` to the session's watchers at the text's client offset, in pieces that each fit a frame."""
    for piece in pieces(fresh):
        out.append(ToClients(gen.session_id, m.StreamDelta(gen.session_id, gen.generation_id, text.client_len, piece,
                                                           gen.counts.tokens, gen.delivery.client_pending_since,
                                                           thinking)))
        text.client_len += len(piece)


def _final(gen: GenerationState, f: m.Finalize) -> ToClients:
    """The ``final`` event of a reply, as the persister made it durable (or as it could not)."""
    return ToClients(gen.session_id, m.Final(gen.session_id, gen.generation_id, gen.message_id, f.status, f.length,
                                             f.content_hash, f.stats, f.error, f.reasoning_length))


def _kind(thinking: bool) -> str:
    return "thinking " if thinking else ""
