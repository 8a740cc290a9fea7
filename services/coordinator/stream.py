"""The stream rules of the coordinator's machine: generator events and their seq checks, coalescing to
clients, checkpoint cadence, the finalize order (tail -> finalize -> persister ack -> ``final``), cancel,
the persister's answers, and liveness. A mixin of ``machine.Coordinator``, which holds the state and
dispatches to these handlers; pure, like all of the machine."""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from protocol import messages as m, results
from services.coordinator.effects import Log, ToClients, ToControl, ToGenerators, ToPersister, content_hash
from services.coordinator.prompt import PromptPackage

@dataclass
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
    last_seq: int = 0
    parts: list[str] = field(default_factory=list)
    length: int = 0
    tokens: int = 0
    tokens_source: str = "estimated"
    client_len: int = 0  # text published to clients
    client_pending: list[str] = field(default_factory=list)
    client_pending_since: float = 0.0  # generator receipt time of the oldest pending text
    client_flushed_at: float = float("-inf")
    client_deadline: float | None = None
    persist_pending: list[str] = field(default_factory=list)
    persist_flushed_at: float = float("-inf")
    persist_deadline: float | None = None
    error: str | None = None
    stream: bool | None = None  # the session's choice when it was queued; None: the generator's default
    finish_reason: str | None = None  # the server's: stop, length (its limit), content_filter...
    streamed: bool = True  # False: the generator made one non-streaming request

    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""


@dataclass
class GeneratorInfo:
    generator_id: str
    last_seen: float
    capacity_free: int = 0
    active: int = 0
    contexts: dict = field(default_factory=dict)  # model -> context length, as this generator's server tells it
    retries: int = 0
    pid: int = 0


class StreamRules:
    # ------------------------------------------------------------ generator events

    def _on_gen_started(self, msg: m.GenStarted, now: float, out: list) -> None:
        gen = self.active.get(msg.generation_id)
        if gen is None:
            out.append(ToControl(m.CancelGeneration(msg.generation_id)))
            return
        gen.generator_id = msg.generator_id
        gen.started_at = now
        gen.status = gen.record.status = "streaming"

    def _on_gen_delta(self, msg: m.GenDelta | m.DeltaItem, now: float, out: list) -> None:
        gen = self.active.get(msg.generation_id)
        if gen is None:  # terminal or unknown: late. Drop, count, and make sure its generator stops.
            self.counters["late_deltas_dropped"] += 1
            out.append(ToControl(m.CancelGeneration(msg.generation_id)))
            return
        if msg.seq <= gen.last_seq:
            self.counters["duplicate_deltas_dropped"] += 1
            return
        if msg.seq != gen.last_seq + 1:
            self.counters["gaps"] += 1
            out.append(ToControl(m.CancelGeneration(gen.generation_id)))
            self._finalize(gen, "error", now, out, error=f"gap in stream: expected seq {gen.last_seq + 1}, got {msg.seq}")
            return
        gen.last_seq = msg.seq
        gen.last_delta_at = now
        if gen.first_token_at is None:
            gen.first_token_at = now
            gen.status = gen.record.status = "streaming"
        if not msg.text:
            return
        gen.parts.append(msg.text)
        gen.length += len(msg.text)
        gen.tokens += msg.tokens
        if not gen.client_pending:
            gen.client_pending_since = msg.received_at
        gen.client_pending.append(msg.text)
        gen.persist_pending.append(msg.text)
        self._schedule(gen, now, out)

    def _on_gen_delta_batch(self, msg: m.GenDeltaBatch, now: float, out: list) -> None:
        for delta in msg.deltas:  # typed at decode: each is a DeltaItem, with GenDelta's fields
            self._on_gen_delta(delta, now, out)

    def _on_gen_done(self, msg: m.GenDone, now: float, out: list) -> None:
        gen = self.active.get(msg.generation_id)
        if gen is None:
            return
        if msg.last_seq != gen.last_seq or msg.length != gen.length:
            self._finalize(gen, "error", now, out, error=f"stream incomplete: generator sent seq {msg.last_seq} "
                           f"({msg.length} chars), coordinator has seq {gen.last_seq} ({gen.length} chars)")
            return
        gen.tokens = msg.completion_tokens
        gen.tokens_source = msg.tokens_source
        gen.finish_reason, gen.streamed = msg.finish_reason or None, msg.streamed
        self._finalize(gen, "completed", now, out)

    def _on_gen_error(self, msg: m.GenError, now: float, out: list) -> None:
        gen = self.active.get(msg.generation_id)
        if gen is not None:
            self._finalize(gen, "error", now, out, error=msg.reason)

    def _on_gen_cancelled(self, msg: m.GenCancelled, now: float, out: list) -> None:
        gen = self.active.get(msg.generation_id)
        if gen is not None:  # we did not ask: the generator gave up on its own (it lost the coordinator)
            self._finalize(gen, "error", now, out, error="generator cancelled the stream")

    def _on_heartbeat(self, msg: m.GeneratorHeartbeat, now: float, out: list) -> None:
        info = self.generators.get(msg.generator_id)
        if info is None:
            info = self.generators[msg.generator_id] = GeneratorInfo(msg.generator_id, now)
            out.append(Log("generator_joined", {"generator_id": msg.generator_id}))
        info.last_seen, info.capacity_free, info.active, info.retries = now, msg.capacity_free, msg.active, msg.retries
        info.pid = msg.pid
        info.contexts = msg.contexts or {}

    # ------------------------------------------------------------ coalescing and checkpoints

    def _schedule(self, gen: GenerationState, now: float, out: list) -> None:
        s = self.settings
        pending = gen.length - gen.client_len
        if pending >= s.flush_chars or now >= gen.client_flushed_at + s.flush_ms / 1000:
            self._flush_clients(gen, now, out)  # the first delta always lands here: TTFT is never delayed
        elif gen.client_deadline is None:
            gen.client_deadline = gen.client_flushed_at + s.flush_ms / 1000
            self._push_deadline(gen.client_deadline, gen.generation_id, "client")
        if gen.length - self.persisted.sent_len(gen.message_id) >= s.checkpoint_chars or now >= gen.persist_flushed_at + s.checkpoint_ms / 1000:
            self._checkpoint(gen, now, out)
        elif gen.persist_deadline is None:
            gen.persist_deadline = gen.persist_flushed_at + s.checkpoint_ms / 1000
            self._push_deadline(gen.persist_deadline, gen.generation_id, "persist")

    def _push_deadline(self, when: float, gen_id: str, kind: str) -> None:
        self._tiebreak += 1
        heapq.heappush(self._deadlines, (when, self._tiebreak, gen_id, kind))

    def _flush_clients(self, gen: GenerationState, now: float, out: list) -> None:
        gen.client_deadline = None
        gen.client_flushed_at = now
        if not gen.client_pending:
            return
        text = "".join(gen.client_pending)
        gen.client_pending.clear()
        out.append(ToClients(gen.session_id, m.StreamDelta(gen.session_id, gen.generation_id, gen.client_len, text,
                                                           gen.tokens, gen.client_pending_since)))
        gen.client_len += len(text)

    def _checkpoint(self, gen: GenerationState, now: float, out: list) -> None:
        gen.persist_deadline = None
        gen.persist_flushed_at = now
        if not gen.persist_pending:
            return
        text = "".join(gen.persist_pending)
        gen.persist_pending.clear()
        out.append(ToPersister(self.persisted.append(gen.message_id, text, now)))

    # ------------------------------------------------------------ finalize

    def _finalize(self, gen: GenerationState, status: str, now: float, out: list, *, error: str | None = None,
                  keep_len: int | None = None) -> None:
        """Terminal at once (later deltas are late), then: tail to clients and persister, finalize op.
        The ``final`` event waits for the persister's ack (see ``_on_persist_ack``)."""
        text = self._end(gen, status, now, out, error, keep_len)
        self.finalizing[gen.generation_id] = gen
        sent_len = self.persisted.sent_len(gen.message_id)
        if sent_len < gen.length:
            out.append(ToPersister(self.persisted.append(gen.message_id, text[sent_len:], now)))
        final = m.Finalize(gen.message_id, status, gen.length, content_hash(text), gen.record.stats, error)
        out.append(ToPersister(self.persisted.finalize(final, now)))
        out.append(Log("generation_" + status, {"session_id": gen.session_id, "generation_id": gen.generation_id,
                                                 "length": gen.length, "error": error}))

    def _end(self, gen: GenerationState, status: str, now: float, out: list, error: str | None,
             keep_len: int | None = None) -> str:
        """A generation leaves ``active``: its record takes its final text, status and stats, clients get the
        text they lack, and its session is free for the next reply. Returns the text."""
        del self.active[gen.generation_id]
        gen.status, gen.ended_at, gen.error = status, now, error
        if status == "cancelled":
            out.append(ToControl(m.CancelGeneration(gen.generation_id)))
        text = gen.text()
        if keep_len is not None and 0 <= keep_len < len(text):
            text = text[:keep_len]  # the canceller's view is what is kept; longer views are cut at ``final``
            gen.parts[:] = [text]
            gen.length = len(text)
            gen.tokens = self.count_tokens(text, gen.prompt.model)
        if gen.client_len < gen.length:
            out.append(ToClients(gen.session_id, m.StreamDelta(gen.session_id, gen.generation_id, gen.client_len,
                                                               text[gen.client_len:], gen.tokens,
                                                               gen.client_pending_since)))
            gen.client_len = gen.length
        gen.client_pending.clear()
        gen.persist_pending.clear()
        gen.record.content, gen.record.status, gen.record.error = text, status, error
        gen.record.stats = self._stats(gen, now)
        sess = self.sessions[gen.session_id]
        sess.last_activity = now
        if sess.active_generation == gen.generation_id:
            sess.active_generation = None
        return text

    def _stats(self, gen: GenerationState, now: float) -> dict:
        end = gen.ended_at or now
        # speed and time to first token only where they were measured: a non-streaming reply arrives whole
        first = gen.first_token_at if gen.streamed else None
        tok_window = end - first if first is not None else 0.0
        return {
            "tokens": gen.tokens,
            "tokens_source": gen.tokens_source,
            "prompt_tokens": gen.prompt.prompt_tokens,
            "queue_wait_ms": round((gen.started_at - gen.queued_at) * 1000, 1) if gen.started_at else None,
            "ttft_ms": round((first - gen.queued_at) * 1000, 1) if first is not None else None,
            "duration_ms": round((end - (gen.started_at or gen.queued_at)) * 1000, 1),
            "tok_per_s": round(gen.tokens / tok_window, 1) if tok_window > 0 and gen.tokens > 1 else None,
            "max_input_tokens": gen.prompt.max_input_tokens,
            "dropped_messages": len(gen.prompt.dropped_message_ids),
            "finish_reason": gen.finish_reason,
            "streamed": gen.streamed,
        }

    def _on_persist_ack(self, msg: m.PersistAck, now: float, out: list) -> None:
        state = self.persisted.on_ack(msg)
        gen = self.finalizing.pop(state.generation_id, None) if state is not None else None
        if gen is not None:  # the last step of finalize: only now is the reply final for clients
            f = state.final
            out.append(ToClients(gen.session_id, m.Final(gen.session_id, gen.generation_id, gen.message_id, f.status,
                                                         f.length, f.content_hash, f.stats, f.error)))

    def _on_persister_hello(self, msg: m.PersisterHello, now: float, out: list) -> None:
        self.persister_pid = msg.pid
        self.persisted.on_persister_hello()
        self._housekeeping_at = 0.0
        out.append(Log("persister_joined", {}))

    def _on_orphans_interrupted(self, msg: m.OrphansInterrupted, now: float, out: list) -> None:
        self.persisted.on_orphans_interrupted()

    def _on_persister_stats(self, msg: m.PersisterStats, now: float, out: list) -> None:
        self.persister_stats = results.PersisterTotals(
            pid=msg.pid, commits=msg.commits, ops=msg.ops, reply_text_bytes=msg.reply_text_bytes,
            failed_batches=msg.failed_batches, ops_rejected=msg.ops_rejected, failing_since=msg.failing_since,
            last_error=msg.last_error, frames_dropped=msg.frames_dropped)

    def _on_persist_rejected(self, msg: m.PersistRejected, now: float, out: list) -> None:
        """The persister dropped an operation that it can never apply: stop resending what is left of the
        message, and end its reply as error. Nothing more of it can become durable, so ``final`` goes out
        now instead of after an ack."""
        state = self.persisted.reject(msg.message_id)
        out.append(Log("persist_rejected", {"message_id": msg.message_id, "reason": msg.reason}))
        gen_id = state.generation_id if state is not None else None
        gen = self.active.get(gen_id or "") or self.finalizing.pop(gen_id or "", None)
        if gen is None:
            return
        error = f"the reply could not be stored: {msg.reason}"
        if gen.generation_id in self.active:
            out.append(ToControl(m.CancelGeneration(gen.generation_id)))
            self._end(gen, "error", now, out, error)
        gen.record.status, gen.record.error = "error", error
        text = gen.record.content
        out.append(ToClients(gen.session_id, m.Final(gen.session_id, gen.generation_id, gen.message_id, "error",
                                                     len(text), content_hash(text), gen.record.stats, error)))

    # ------------------------------------------------------------ liveness

    def _check_generators(self, now: float, out: list) -> None:
        dead_after = self.settings.generator_dead_ms / 1000
        for gen_id in [g for g, info in self.generators.items() if now - info.last_seen > dead_after]:
            del self.generators[gen_id]
            self.counters["generators_lost"] += 1
            out.append(Log("generator_lost", {"generator_id": gen_id}))
            for gen in [g for g in self.active.values() if g.generator_id == gen_id]:
                if gen.last_seq == 0:  # nothing emitted yet: safe to run again elsewhere
                    gen.generator_id, gen.status = None, "queued"
                    out.append(ToGenerators(self._job(gen)))
                else:
                    self._finalize(gen, "error", now, out, error=f"generator lost: {gen_id} stopped heartbeating")

    def _check_stalls(self, now: float, out: list) -> None:
        """Nothing says "generating" forever, and each wait has its own limit: no generator taking the job
        and no token after the first are stalls (``stall_ms``); waiting for the first token is not (a server
        that runs one request at a time holds the others), and has its own, longer ``first_token_ms``."""
        s = self.settings
        for gen in list(self.active.values()):
            if gen.started_at is None:
                waited, limit_ms, words = now - gen.queued_at, s.stall_ms, "stalled: no generator took the job"
                setting = "CHATTER_STALL_MS"
            elif gen.last_delta_at is None:
                waited, limit_ms, words = now - gen.started_at, s.first_token_ms, "no first token"
                setting = "CHATTER_FIRST_TOKEN_MS"
            else:
                waited, limit_ms, words = now - gen.last_delta_at, s.stall_ms, "stalled: no token"
                setting = "CHATTER_STALL_MS"
            if waited > limit_ms / 1000:
                out.append(ToControl(m.CancelGeneration(gen.generation_id)))
                self._finalize(gen, "error", now, out, error=f"{words} for {limit_ms / 1000:g} s ({setting})")

    def _text_of(self, generation_id: str) -> str:
        gen = self.active.get(generation_id) or self.finalizing[generation_id]
        return gen.text()
