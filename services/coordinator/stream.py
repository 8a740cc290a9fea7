"""The stream rules of the coordinator's machine: generator events and their seq checks, coalescing to
clients, checkpoint cadence, the finalize order (tail -> finalize -> persister ack -> ``final``), cancel,
the persister's answers, and liveness. A mixin of ``machine.Coordinator``, which holds the state and
dispatches to these handlers; pure, like all of the machine."""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from protocol import messages as m, results
from protocol.codec import pieces
from protocol.lifecycle import Status, move
from protocol.records import tool_call_at
from services.coordinator.effects import Log, ToClients, ToControl, ToGenerators, ToPersister, content_hash
from services.coordinator.prompt import PromptPackage, PromptTooLarge, continuation, original_of

JOB_TRAVEL_S = 1.0  # a job sent this long before a generator's heartbeat with room has reached that generator
RUN_MARK = "~"  # a generation continued after a fault runs again as <generation id>~<n>: the old run's events are late


def base_id(run_id: str) -> str:
    """The generation a run's id belongs to."""
    return run_id.partition(RUN_MARK)[0]


@dataclass(slots=True)
class ReplyText:
    """One of a reply's two texts, the answer or the thinking, with the same rules: its own seq and offsets,
    and what clients and the persister have been sent of it."""

    last_seq: int = 0
    parts: list[str] = field(default_factory=list)
    length: int = 0
    client_len: int = 0  # published to clients
    client_pending: list[str] = field(default_factory=list)
    persist_pending: list[str] = field(default_factory=list)
    persist_pending_len: int = 0  # characters in ``persist_pending``: the next checkpoint's size

    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def cut(self, keep_len: int | None) -> bool:
        """Keep only the first ``keep_len`` characters (a canceller's view); True when that cut anything."""
        text = self.text()
        if keep_len is None or not 0 <= keep_len < len(text):
            return False
        self.parts[:] = [text[:keep_len]]
        self.length = keep_len
        return True


@dataclass(slots=True)
class GenerationState:
    generation_id: str
    session_id: str
    message_id: str
    prompt: PromptPackage
    record: m.MessageRecord  # the assistant message's history record
    queued_at: float
    status: str = "queued"
    generator_id: str | None = None
    started_at: float | None = None
    first_token_at: float | None = None
    last_delta_at: float | None = None
    ended_at: float | None = None
    answer: ReplyText = field(default_factory=ReplyText)
    thinking: ReplyText = field(default_factory=ReplyText)  # a reasoning model's, before its answer
    thinking_started_at: float | None = None
    thinking_ended_at: float | None = None  # its answer's first delta, or the end
    tokens: int = 0  # of both texts
    tokens_source: str = "estimated"
    reasoning_tokens: int = 0
    reasoning_tokens_source: str = "estimated"
    client_pending_since: float = 0.0  # generator receipt time of the oldest pending text
    client_flushed_at: float = float("-inf")
    client_deadline: float | None = None
    persist_flushed_at: float = float("-inf")
    persist_deadline: float | None = None
    error: str | None = None
    stream: bool | None = None  # the session's choice when it was queued; None: the generator's default
    finish_reason: str | None = None  # the server's: stop, length (its limit), content_filter...
    streamed: bool = True  # False: the generator made one non-streaming request
    adopted: bool = False  # taken over by a restarted coordinator: its timings before that are unknown
    catching_up: bool = False  # adopted, waiting for its generator's GenCatchUp; its deltas until then are dropped
    dispatched_at: float | None = None  # when its job last went to the generators
    # continuing (``_continue_after``): the current run, the number of continuations after a fault, with its job,
    # its watchdog clocks (``last_delta_at`` is the run's too), and the segments of the reply before this one
    run: int = 0
    job: m.Job | None = None  # None: the job of ``prompt`` from the start
    run_queued_at: float | None = None  # None: ``queued_at``
    run_started_at: float | None = None
    continued_after: list[str] = field(default_factory=list)  # the faults it was continued after
    segments: list[dict] = field(default_factory=list)  # each earlier segment's figures
    segment_from: int = 0  # the answer's length when this segment began
    tokens_before: int = 0  # the tokens of the earlier segments, part of ``tokens``
    run_tokens_source: str = "estimated"  # this segment's count: "server" when its run ended with usage
    tool_calls: list[dict] = field(default_factory=list)  # the tools it called, in OpenAI's shape
    tool_calls_saved: bool = True  # False: changed since the last checkpoint

    @property
    def run_id(self) -> str:
        return self.generation_id if not self.run else f"{self.generation_id}{RUN_MARK}{self.run}"

    @property
    def length(self) -> int:
        return self.answer.length

    def text(self) -> str:
        return self.answer.text()

    def texts(self) -> tuple[tuple[bool, ReplyText], ...]:
        """(thinking, text) of both texts, the thinking first: it comes first in a reply."""
        return (True, self.thinking), (False, self.answer)


@dataclass
class GeneratorInfo:
    generator_id: str
    last_seen: float
    capacity_free: int = 0
    active: int = 0
    contexts: dict = field(default_factory=dict)  # model -> context length, as this generator's server tells it
    server: str = ""  # what its server says it is (/v1/models owned_by)
    retries: int = 0
    pid: int = 0


def _segment(gen: GenerationState, ended: str) -> dict:
    """The figures of the segment under way: where it began, its tokens (the server's count only when its run
    ended with usage; a run cut by a fault never does), the prompt it ran on, and how it ended."""
    return {"from": gen.segment_from, "tokens": gen.tokens - gen.tokens_before, "tokens_source": gen.run_tokens_source,
            "prompt_hash": gen.prompt.prompt_hash, "ended": ended}


def next_checkpoint(last_s: float, period_s: float) -> float:
    """When a reply's next checkpoint is due, its last one made at ``last_s``: the first point after it of a grid
    every ``period_s`` that all replies share, so never later than ``last_s + period_s``. On a shared grid the
    checkpoints of every reply streaming together leave in one bundle, and the persister wakes once for them
    rather than once for each (docs/PERFORMANCE.md, "Checkpoints on a shared grid")."""
    if period_s <= 0 or last_s == float("-inf"):
        return last_s + period_s
    return (math.floor(last_s / period_s) + 1) * period_s


class StreamRules:
    # ------------------------------------------------------------ generator events

    @staticmethod
    def _moved(gen: GenerationState, status: Status) -> None:
        """A generation and its record take a new status, as the lifecycle allows (``protocol.lifecycle``)."""
        gen.status = move(gen.status, status)
        gen.record.status = move(gen.record.status, status)

    def _running(self, run_id: str) -> GenerationState | None:
        """The active generation whose current run ``run_id`` is (a continuation after a fault runs as
        ``<id>~<n>``); None for the events of an ended generation or of a run before its continuation."""
        gen = self.active.get(run_id)
        if gen is not None:
            return gen if not gen.run else None
        if RUN_MARK in run_id:
            gen = self.active.get(base_id(run_id))
            if gen is not None and gen.run_id == run_id:
                return gen
        return None

    def _on_gen_started(self, msg: m.GenStarted, now: float, out: list) -> None:
        gen = self._running(msg.generation_id)
        if gen is None:
            out.append(ToControl(m.CancelGeneration(msg.generation_id)))
            return
        gen.generator_id = msg.generator_id
        gen.run_started_at = now
        if gen.started_at is None:
            gen.started_at = now
        self._moved(gen, Status.STREAMING)

    def _on_gen_delta(self, msg: m.GenDelta | m.DeltaItem, now: float, out: list) -> None:
        gen = self.active.get(msg.generation_id)  # the per-delta path: one lookup for a run never continued
        if gen is None or gen.run:
            gen = self._running(msg.generation_id)
        if gen is None:  # terminal or unknown: late. Drop, count, and make sure its generator stops.
            if self.adopting_open or msg.generation_id in self.adoptions:
                self.counters["deltas_before_adoption"] += 1  # it may be adopted in a moment: no cancel
                return
            self.counters["late_deltas_dropped"] += 1
            out.append(ToControl(m.CancelGeneration(msg.generation_id)))
            return
        if gen.catching_up:
            return  # its generator resends all of it in the catch-up
        thinking, seq, fresh = msg.thinking, msg.seq, msg.text
        text = gen.thinking if thinking else gen.answer  # two texts, each with its own seq
        if seq != text.last_seq + 1:
            if seq <= text.last_seq:
                self.counters["duplicate_deltas_dropped"] += 1
                return
            self.counters["gaps"] += 1
            out.append(ToControl(m.CancelGeneration(gen.run_id)))
            self._finalize(gen, "error", now, out, error=f"gap in stream: expected {_kind(thinking)}seq "
                           f"{text.last_seq + 1}, got {seq}")
            return
        text.last_seq = seq
        gen.last_delta_at = now  # thinking is progress: the stall watchdog and the first-token wait see it
        if gen.first_token_at is None:
            gen.first_token_at = now
            self._moved(gen, Status.STREAMING)
        if thinking:
            if gen.thinking_started_at is None:
                gen.thinking_started_at = now
            gen.reasoning_tokens += msg.tokens
        elif gen.thinking_started_at is not None and gen.thinking_ended_at is None:
            gen.thinking_ended_at = now
        if not fresh:
            return
        text.parts.append(fresh)
        text.length += len(fresh)
        gen.tokens += msg.tokens
        if not (gen.answer.client_pending or gen.thinking.client_pending):
            gen.client_pending_since = msg.received_at
        text.client_pending.append(fresh)
        text.persist_pending.append(fresh)
        text.persist_pending_len += len(fresh)
        self._schedule(gen, text, now, out)

    def _on_gen_tool_call(self, msg: m.GenToolCall, now: float, out: list) -> None:
        """A tool call grows: to clients at once (they are few), to the persister at the next checkpoint."""
        gen = self._running(msg.generation_id)
        if gen is None or gen.catching_up:
            return
        call = tool_call_at(gen.tool_calls, msg.index, msg.call_id, msg.name)
        if call is None:  # a call's index skipped one: not a stream this reply can hold
            return
        offset = len(call["function"]["arguments"])
        call["function"]["arguments"] += msg.arguments
        gen.last_delta_at = now
        self._moved(gen, Status.STREAMING)
        gen.tool_calls_saved = False
        out.append(ToClients(gen.session_id, m.StreamToolCall(gen.session_id, gen.generation_id, msg.index, call["id"],
                                                              call["function"]["name"], offset, msg.arguments)))
        self._schedule(gen, gen.answer, now, out)

    def _on_gen_delta_batch(self, msg: m.GenDeltaBatch, now: float, out: list) -> None:
        on_delta = self._on_gen_delta
        for delta in msg.deltas:  # typed at decode: each is a DeltaItem, with GenDelta's fields
            on_delta(delta, now, out)

    def _on_gen_done(self, msg: m.GenDone, now: float, out: list) -> None:
        gen = self._running(msg.generation_id)
        if gen is None or gen.catching_up:  # catching up: the generator resends its end after the catch-up
            return
        for thinking, last_seq, length, text in ((False, msg.last_seq, msg.length, gen.answer),
                                                 (True, msg.reasoning_last_seq, msg.reasoning_length, gen.thinking)):
            if last_seq != text.last_seq or length != text.length:
                self._finalize(gen, "error", now, out, error=f"stream incomplete: generator sent {_kind(thinking)}"
                               f"seq {last_seq} ({length} chars), coordinator has seq {text.last_seq} "
                               f"({text.length} chars)")
                return
        gen.tokens = gen.tokens_before + msg.completion_tokens
        gen.run_tokens_source = msg.tokens_source
        # a continued reply's count is the server's only if every segment's was
        gen.tokens_source = msg.tokens_source if all(seg.get("tokens_source") == "server" for seg in gen.segments) \
            else "estimated"
        gen.reasoning_tokens, gen.reasoning_tokens_source = msg.reasoning_tokens, msg.reasoning_tokens_source
        gen.finish_reason, gen.streamed = msg.finish_reason or None, msg.streamed
        self._finalize(gen, "completed", now, out)

    def _on_gen_error(self, msg: m.GenError, now: float, out: list) -> None:
        gen = self._running(msg.generation_id)
        if gen is not None and not gen.catching_up and not self._continue_after(gen, msg.reason, now, out):
            self._finalize(gen, "error", now, out, error=msg.reason)

    def _on_gen_cancelled(self, msg: m.GenCancelled, now: float, out: list) -> None:
        gen = self._running(msg.generation_id)
        # we did not ask: the generator gave up on its own (it lost the coordinator)
        if gen is not None and not gen.catching_up:
            fault = "generator cancelled the stream"
            if not self._continue_after(gen, fault, now, out):
                self._finalize(gen, "error", now, out, error=fault)

    def _on_heartbeat(self, msg: m.GeneratorHeartbeat, now: float, out: list) -> None:
        info = self.generators.get(msg.generator_id)
        if info is None:
            info = self.generators[msg.generator_id] = GeneratorInfo(msg.generator_id, now)
            out.append(Log("generator_joined", {"generator_id": msg.generator_id}))
        info.last_seen, info.capacity_free, info.active, info.retries = now, msg.capacity_free, msg.active, msg.retries
        info.pid = msg.pid
        info.contexts = msg.contexts or {}
        info.server = msg.server
        if msg.server:
            self.last_server = msg.server  # what a server said it is outlives its generator (continue style)

    # ------------------------------------------------------------ coalescing and checkpoints

    def _schedule(self, gen: GenerationState, text: ReplyText, now: float, out: list) -> None:
        """Coalescing and checkpoints, per generation: one deadline of each flushes both texts. The per-delta
        path: with a deadline set, only size can flush early (the deadline is in the heap, and ``tick`` runs
        after every drain), so most deltas cost two comparisons here."""
        s = self.settings
        if gen.client_deadline is None:
            if text.length - text.client_len >= s.flush_chars or now >= gen.client_flushed_at + s.flush_ms / 1000:
                self._flush_clients(gen, now, out)  # the first delta always lands here: TTFT is never delayed
            else:
                gen.client_deadline = gen.client_flushed_at + s.flush_ms / 1000
                self._push_deadline(gen.client_deadline, gen.generation_id, "client")
        elif text.length - text.client_len >= s.flush_chars:
            self._flush_clients(gen, now, out)
        if gen.persist_deadline is None:
            due = next_checkpoint(gen.persist_flushed_at, s.checkpoint_ms / 1000)
            if text.persist_pending_len >= s.checkpoint_chars or now >= due:
                self._checkpoint(gen, now, out)
            else:
                gen.persist_deadline = due
                self._push_deadline(due, gen.generation_id, "persist")
        elif text.persist_pending_len >= s.checkpoint_chars:
            self._checkpoint(gen, now, out)

    def _push_deadline(self, when: float, gen_id: str, kind: str) -> None:
        self._tiebreak += 1
        heapq.heappush(self._deadlines, (when, self._tiebreak, gen_id, kind))

    def _flush_clients(self, gen: GenerationState, now: float, out: list) -> None:
        gen.client_deadline = None
        gen.client_flushed_at = now
        for thinking, text in gen.texts():
            if text.client_pending:
                fresh = "".join(text.client_pending)
                text.client_pending.clear()
                self._publish_text(gen, text, fresh, thinking, out)

    @staticmethod
    def _publish_text(gen: GenerationState, text: ReplyText, fresh: str, thinking: bool, out: list) -> None:
        """``fresh`` to the session's watchers at the text's client offset, in pieces that each fit a frame."""
        for piece in pieces(fresh):
            out.append(ToClients(gen.session_id, m.StreamDelta(gen.session_id, gen.generation_id, text.client_len,
                                                               piece, gen.tokens, gen.client_pending_since, thinking)))
            text.client_len += len(piece)

    def _checkpoint(self, gen: GenerationState, now: float, out: list) -> None:
        gen.persist_deadline = None
        gen.persist_flushed_at = now
        for thinking, text in gen.texts():
            if text.persist_pending:
                fresh = "".join(text.persist_pending)
                text.persist_pending.clear()
                text.persist_pending_len = 0
                self._persist_text(gen, fresh, thinking, now, out)
        if not gen.tool_calls_saved:
            gen.tool_calls_saved = True
            out.append(ToPersister(m.SaveToolCalls(gen.message_id, [dict(c, function=dict(c["function"]))
                                                                    for c in gen.tool_calls])))

    def _persist_text(self, gen: GenerationState, fresh: str, thinking: bool, now: float, out: list) -> None:
        """``fresh`` to the persister after what was sent of the text, in pieces that each fit a frame."""
        for piece in pieces(fresh):
            out.append(ToPersister(self.persisted.append(gen.message_id, piece, now, thinking)))

    # ------------------------------------------------------------ finalize

    def _finalize(self, gen: GenerationState, status: str, now: float, out: list, *, error: str | None = None,
                  keep_len: int | None = None, keep_reasoning_len: int | None = None) -> None:
        """Terminal at once (later deltas are late), then: tail to clients and persister, finalize op.
        The ``final`` event waits for the persister's ack (see ``_on_persist_ack``)."""
        self._end(gen, status, now, out, error, keep_len, keep_reasoning_len)
        self.finalizing[gen.generation_id] = gen
        for thinking, text in gen.texts():
            sent_len = self.persisted.sent_len(gen.message_id, thinking)
            if sent_len < text.length:
                self._persist_text(gen, text.text()[sent_len:], thinking, now, out)
        continued = m.ContinuedPrompt(None, gen.prompt.prompt_hash, None,
                                      gen.prompt.ref) if gen.run else None  # the row takes the last prompt
        final = m.Finalize(gen.message_id, status, gen.length, content_hash(gen.text()), gen.record.stats, error,
                           gen.thinking.length, continued, gen.tool_calls or None)
        out.append(ToPersister(self.persisted.finalize(final, now)))
        out.append(Log("generation_" + status, {"session_id": gen.session_id, "generation_id": gen.generation_id,
                                                 "length": gen.length, "error": error}))

    def _end(self, gen: GenerationState, status: str, now: float, out: list, error: str | None,
             keep_len: int | None = None, keep_reasoning_len: int | None = None) -> None:
        """A generation leaves ``active``: its record takes its final texts, status and stats, clients get the
        text they lack, and its session is free for the next reply."""
        del self.active[gen.generation_id]
        self.first_token_wait.ended(gen.generation_id)
        gen.status, gen.ended_at, gen.error = move(gen.status, status), now, error
        if gen.thinking_started_at is not None and gen.thinking_ended_at is None:
            gen.thinking_ended_at = now  # it thought to the end (a cancel mid-thought: no answer)
        if status == "cancelled":
            out.append(ToControl(m.CancelGeneration(gen.run_id)))
        # the canceller's view is what is kept; longer views are cut at ``final``
        cut_thinking = gen.thinking.cut(keep_reasoning_len)
        if gen.answer.cut(keep_len) or cut_thinking:
            model = gen.prompt.model
            gen.reasoning_tokens = self.count_tokens(gen.thinking.text(), model) if gen.thinking.length else 0
            gen.tokens = self.count_tokens(gen.text(), model) + gen.reasoning_tokens
            gen.tokens_source = gen.reasoning_tokens_source = "estimated"
        for thinking, text in gen.texts():
            if text.client_len < text.length:
                self._publish_text(gen, text, text.text()[text.client_len:], thinking, out)
            text.client_pending.clear()
            text.persist_pending.clear()
            text.persist_pending_len = 0
        gen.record.content, gen.record.reasoning = gen.text(), gen.thinking.text()
        gen.record.tool_calls = gen.tool_calls
        gen.record.status, gen.record.error = move(gen.record.status, status), error
        gen.record.stats = self._stats(gen, now)
        sess = self.sessions[gen.session_id]
        self._touch(sess, now)
        if sess.active_generation == gen.generation_id:
            sess.active_generation = None

    def _stats(self, gen: GenerationState, now: float) -> dict:
        end = gen.ended_at or now
        # speed and time to first token only where they were measured: a non-streaming reply arrives whole, and
        # an adopted one began before this coordinator did
        first = gen.first_token_at if gen.streamed and not gen.adopted else None
        tok_window = end - first if first is not None else 0.0
        adopted = {"adopted": True} if gen.adopted else {}
        own = gen.tokens - gen.tokens_before  # this segment's: speed is measured over it alone
        return {
            "tokens": gen.tokens,
            "tokens_source": gen.tokens_source,
            "prompt_tokens": gen.prompt.prompt_tokens,
            "queue_wait_ms": round((gen.started_at - gen.queued_at) * 1000, 1) if gen.started_at else None,
            "ttft_ms": round((first - gen.queued_at) * 1000, 1) if first is not None else None,
            "duration_ms": round((end - (gen.started_at or gen.queued_at)) * 1000, 1),
            "tok_per_s": round(own / tok_window, 1) if tok_window > 0 and own > 1 else None,
            "max_input_tokens": gen.prompt.max_input_tokens,
            "dropped_messages": len(gen.prompt.dropped_message_ids),
            "finish_reason": gen.finish_reason,
            "streamed": gen.streamed,
            **self._thinking_stats(gen, end),
            **self._segment_stats(gen),
            **adopted,
        }

    @staticmethod
    def _segment_stats(gen: GenerationState) -> dict:
        """A continued reply's segments, each with its tokens and prompt, and the faults it went on after;
        ``tokens`` is their sum. Nothing for a reply of one segment."""
        if not gen.segments:
            return {}
        stats = {"segments": [*gen.segments, _segment(gen, gen.status)], "continued": len(gen.segments)}
        if gen.continued_after:
            stats["continued_after"] = list(gen.continued_after)
        return stats

    @staticmethod
    def _thinking_stats(gen: GenerationState, end: float) -> dict:
        """A reasoning model's: how long it thought, and its thinking tokens (part of ``tokens``); nothing for a
        reply without thinking, or a prompt that left none out."""
        stats = {}
        if gen.thinking_started_at is not None:
            until = gen.thinking_ended_at or end
            stats["thinking_ms"] = round((until - gen.thinking_started_at) * 1000, 1) if gen.streamed else None
            stats["reasoning_tokens"] = gen.reasoning_tokens
            stats["reasoning_tokens_source"] = gen.reasoning_tokens_source
        if gen.prompt.thinking_left_out:
            stats["thinking_left_out"] = gen.prompt.thinking_left_out
        return stats

    def _on_persist_ack(self, msg: m.PersistAck, now: float, out: list) -> None:
        state = self.persisted.on_ack(msg)
        gen = self.finalizing.pop(state.generation_id, None) if state is not None else None
        if gen is not None:  # the last step of finalize: only now is the reply final for clients
            f = state.final
            out.append(ToClients(gen.session_id, m.Final(gen.session_id, gen.generation_id, gen.message_id, f.status,
                                                         f.length, f.content_hash, f.stats, f.error,
                                                         f.reasoning_length)))

    def _on_persister_hello(self, msg: m.PersisterHello, now: float, out: list) -> None:
        self.persister_pid = msg.pid
        self.persisted.on_persister_hello()
        self._housekeeping_at = 0.0
        out.append(Log("persister_joined", {}))

    def _on_session_saved(self, msg: m.SessionSaved, now: float, out: list) -> None:
        self.persisted.on_session_saved(msg.session_id, msg.saved_at)

    def _on_orphans_interrupted(self, msg: m.OrphansInterrupted, now: float, out: list) -> None:
        self.persisted.on_orphans_interrupted(msg)

    def _on_persister_stats(self, msg: m.PersisterStats, now: float, out: list) -> None:
        self.persister_stats = results.PersisterTotals(
            pid=msg.pid, commits=msg.commits, ops=msg.ops, reply_text_bytes=msg.reply_text_bytes,
            failed_batches=msg.failed_batches, ops_rejected=msg.ops_rejected, failing_since=msg.failing_since,
            last_error=msg.last_error, frames_dropped=msg.frames_dropped, last_failed_at=msg.last_failed_at,
            last_failure=msg.last_failure)

    def _on_persist_rejected(self, msg: m.PersistRejected, now: float, out: list) -> None:
        """The persister dropped an operation that it can never apply: stop resending what is left of the
        message, and end its reply as error. Nothing more of it can become durable, so ``final`` goes out
        now instead of after an ack."""
        state = self.persisted.reject(msg.message_id)
        out.append(Log("persist_rejected", {"message_id": msg.message_id, "reason": msg.reason}))
        sess = self.sessions.get(msg.message_id)  # a ``SaveSession``'s: the session is only in memory
        if sess is not None:
            sess.saved = False
        gen_id = state.generation_id if state is not None else None
        gen = self.active.get(gen_id or "") or self.finalizing.pop(gen_id or "", None)
        if gen is None:
            return
        error = f"the reply could not be stored: {msg.reason}"
        if gen.generation_id in self.active:
            out.append(ToControl(m.CancelGeneration(gen.run_id)))
            self._end(gen, "error", now, out, error)
        gen.record.status, gen.record.error = move(gen.record.status, Status.ERROR), error
        text = gen.record.content
        out.append(ToClients(gen.session_id, m.Final(gen.session_id, gen.generation_id, gen.message_id, "error",
                                                     len(text), content_hash(text), gen.record.stats, error,
                                                     len(gen.record.reasoning))))

    # ------------------------------------------------------------ liveness

    def _check_generators(self, now: float, out: list) -> None:
        dead_after = self.settings.generator_dead_ms / 1000
        for gen_id in [g for g, info in self.generators.items() if now - info.last_seen > dead_after]:
            del self.generators[gen_id]
            self.counters["generators_lost"] += 1
            out.append(Log("generator_lost", {"generator_id": gen_id}))
            for gen in [g for g in self.active.values() if g.generator_id == gen_id]:
                if gen.last_delta_at is None:  # this run emitted nothing yet: safe to run again elsewhere
                    gen.generator_id = None
                    if gen.first_token_at is None:
                        self._moved(gen, Status.QUEUED)
                    self._dispatch(gen, now, out)
                    continue
                fault = f"generator lost: {gen_id} stopped heartbeating"
                if not self._continue_after(gen, fault, now, out):
                    self._finalize(gen, "error", now, out, error=fault)

    def _dispatch(self, gen: GenerationState, now: float, out: list) -> None:
        gen.dispatched_at = now
        gen.run_started_at = None
        if gen.first_token_at is None:
            self.first_token_wait.add(gen.generation_id)
        out.append(ToGenerators(gen.job or self._job(gen)))

    def first_token_awaited(self) -> bool:
        """Whether a reply still waits for its first token: the shell's loop is not paced then, so the first
        token reaches clients at once."""
        return self.first_token_wait()

    def _awaits_first_token(self, gen_id: str) -> bool:
        gen = self.active.get(gen_id)
        return gen is not None and gen.first_token_at is None

    # ------------------------------------------------------------ continuing after a fault

    def _continue_after(self, gen: GenerationState, fault: str, now: float, out: list) -> bool:
        """A fault after the first token does not end the reply where the server can continue it: the same
        generation runs again (``<id>~<n>``), on a live generator, from all the text it holds, up to
        CHATTER_AUTO_CONTINUE times. Clients see a pause; the text goes on from its offsets, and the old run's
        events are late. False (today's error, keeping the text) under style ``none``, with no answer text yet
        (a reply cut while thinking cannot be continued), past the limit, or when the prompt would not fit."""
        if gen.run >= self.settings.auto_continue:
            return self._not_continued(gen, fault, f"continued {gen.run} times already (CHATTER_AUTO_CONTINUE="
                                       f"{self.settings.auto_continue})", out)
        if not gen.answer.length:
            return self._not_continued(gen, fault, "no answer text yet", out)
        style, why = self._continue_style(self.sessions[gen.session_id])
        if style == "none":
            return self._not_continued(gen, fault, f"continue style none: {why}", out)
        try:
            prompt = continuation(original_of(gen.prompt, self.count_tokens), gen.text(), style, self.count_tokens,
                                  gen.message_id)
        except PromptTooLarge as exc:
            return self._not_continued(gen, fault, str(exc), out)
        out.append(ToControl(m.CancelGeneration(gen.run_id)))  # a stalled run must not go on beside the next
        self._next_segment(gen, fault)
        gen.run += 1
        gen.continued_after.append(fault)
        self._set_prompt(gen, prompt, style)
        gen.generator_id, gen.last_delta_at, gen.run_queued_at = None, None, now
        self.counters["generations_continued"] += 1
        out.append(Log("generation_continued", {"session_id": gen.session_id, "generation_id": gen.generation_id,
                                                "run": gen.run, "length": gen.length, "style": style,
                                                "after": fault}))
        self._dispatch(gen, now, out)
        return True

    @staticmethod
    def _not_continued(gen: GenerationState, fault: str, why: str, out: list) -> bool:
        """The log says why a reply cut by ``fault`` ends instead of going on."""
        out.append(Log("generation_not_continued", {"session_id": gen.session_id, "generation_id": gen.generation_id,
                                                    "run": gen.run, "length": gen.length, "after": fault,
                                                    "why": why}))
        return False

    def _next_segment(self, gen: GenerationState, ended: str) -> None:
        """The segment under way ends (``ended``: why) and the next begins at the answer's length."""
        gen.segments.append(_segment(gen, ended))
        gen.segment_from, gen.tokens_before = gen.length, gen.tokens

    def _set_prompt(self, gen: GenerationState, prompt: PromptPackage, style: str) -> None:
        """A continuation's prompt is the reply's from now on: its preview and hash are the request's."""
        gen.prompt = prompt
        record = gen.record
        record.prompt_hash, record.prompt_ref, record.preview, record.prompt_messages = (
            prompt.prompt_hash, prompt.ref, None, None)  # stored by reference (``prompt.rebuild``)
        gen.job = m.Job(gen.run_id, prompt.wire_messages(), prompt.model, prompt.wire_params(), prompt.prompt_hash,
                        gen.stream, seq_from=gen.answer.last_seq, length_from=gen.answer.length,
                        reasoning_seq_from=gen.thinking.last_seq, reasoning_length_from=gen.thinking.length,
                        strip_prefix=gen.text() if style == "prefill" else "", think_tags="off")

    def _check_lost_jobs(self, now: float, out: list) -> None:
        """A job that no generator took although every live generator has said since, a second or more after
        it was sent, that it has room, is in no generator's queue (a generator with room takes a job as it
        arrives): it was lost, with a generator that died before starting it. Sent again, it cannot run twice."""
        if not self.generators or any(g.capacity_free <= 0 for g in self.generators.values()):
            return
        heard_since = min(g.last_seen for g in self.generators.values()) - JOB_TRAVEL_S
        for gen in self.active.values():
            if gen.run_started_at is None and gen.dispatched_at is not None and gen.dispatched_at < heard_since:
                self.counters["jobs_sent_again"] += 1
                out.append(Log("job_sent_again", {"generation_id": gen.generation_id}))
                self._dispatch(gen, now, out)

    def _check_stalls(self, now: float, out: list) -> None:
        """Nothing says "generating" forever, and each wait has its own limit: no generator taking the job
        and no token after the first are stalls (``stall_ms``); waiting for the first token is not (a server
        that runs one request at a time holds the others), and has its own, longer ``first_token_ms``."""
        s = self.settings
        for gen in list(self.active.values()):
            if gen.run_started_at is None:
                waited = now - (gen.run_queued_at or gen.queued_at)
                limit_ms, words, setting = s.stall_ms, "stalled: no generator took the job", "CHATTER_STALL_MS"
            elif gen.last_delta_at is None:
                waited, limit_ms, words = now - gen.run_started_at, s.first_token_ms, "no first token"
                setting = "CHATTER_FIRST_TOKEN_MS"
            else:
                waited, limit_ms, words = now - gen.last_delta_at, s.stall_ms, "stalled: no token"
                setting = "CHATTER_STALL_MS"
            if waited > limit_ms / 1000:
                fault = f"{words} for {limit_ms / 1000:g} s ({setting})"
                if gen.last_delta_at is not None and self._continue_after(gen, fault, now, out):
                    continue
                out.append(ToControl(m.CancelGeneration(gen.run_id)))
                self._finalize(gen, "error", now, out, error=fault)

    def _text_of(self, generation_id: str, thinking: bool) -> str:
        gen = self.active.get(generation_id) or self.finalizing[generation_id]
        return gen.thinking.text() if thinking else gen.text()


def _kind(thinking: bool) -> str:
    return "thinking " if thinking else ""
