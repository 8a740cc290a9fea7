"""One reply while it streams, as the coordinator holds it: its two texts and its fields grouped by what they are
about (the request, the upstream stream, delivery to clients and the persister, its counts), and the few pure
rules that read or move them alone. Pure, like all of the machine."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from protocol import messages as m
from protocol.lifecycle import Status, move
from services.coordinator.prompt import PromptPackage

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

    def add(self, fresh: str) -> None:
        """New text at the end: for clients and for the persister, at their next flush and checkpoint."""
        self.parts.append(fresh)
        self.length += len(fresh)
        self.client_pending.append(fresh)
        self.persist_pending.append(fresh)
        self.persist_pending_len += len(fresh)

    def take_stored(self, stored: str) -> None:
        """The text as the database has it: a reply continued or adopted goes on from it, which clients have."""
        self.parts[:] = [stored] if stored else []
        self.length = self.client_len = len(stored)


@dataclass(slots=True)
class Asked:
    """The request: when it was queued, how its job goes to the generators, and which run of it is under way (a
    reply continued after a fault runs again, ``run`` > 0, with a job of its own)."""

    queued_at: float
    stream: bool | None = None  # the session's choice when it was queued; None: the generator's default
    job: m.Job | None = None  # None: the job of the prompt from the start
    run: int = 0
    run_queued_at: float | None = None  # None: ``queued_at``
    dispatched_at: float | None = None  # when its job last went to the generators


@dataclass(slots=True)
class Streaming:
    """The stream from its generator: who runs it, when it began and last moved, and how it ended."""

    generator_id: str | None = None
    started_at: float | None = None
    run_started_at: float | None = None  # this run's
    first_token_at: float | None = None
    last_delta_at: float | None = None  # this run's too: the stall watchdog's clock
    ended_at: float | None = None
    finish_reason: str | None = None  # the server's: stop, length (its limit), content_filter...
    streamed: bool = True  # False: the generator made one non-streaming request
    adopted: bool = False  # taken over by a restarted coordinator: its timings before that are unknown
    catching_up: bool = False  # adopted, waiting for its generator's GenCatchUp; its deltas until then are dropped
    error: str | None = None


@dataclass(slots=True)
class Delivery:
    """When the text pending for clients and for the persister goes out (coalescing and checkpoints)."""

    client_pending_since: float = 0.0  # generator receipt time of the oldest pending text
    client_flushed_at: float = float("-inf")
    client_deadline: float | None = None
    persist_flushed_at: float = float("-inf")
    persist_deadline: float | None = None
    tool_calls_saved: bool = True  # False: changed since the last checkpoint


@dataclass(slots=True)
class Counts:
    """Its tokens and timings for the stats, across the segments of a reply continued after faults."""

    tokens: int = 0  # of both texts
    tokens_source: str = "estimated"
    reasoning_tokens: int = 0
    reasoning_tokens_source: str = "estimated"
    thinking_started_at: float | None = None
    thinking_ended_at: float | None = None  # its answer's first delta, or the end
    continued_after: list[str] = field(default_factory=list)  # the faults it was continued after
    segments: list[dict] = field(default_factory=list)  # each earlier segment's figures
    segment_from: int = 0  # the answer's length when this segment began
    tokens_before: int = 0  # the tokens of the earlier segments, part of ``tokens``
    run_tokens_source: str = "estimated"  # this segment's count: "server" when its run ended with usage


@dataclass(slots=True)
class GenerationState:
    generation_id: str
    session_id: str
    message_id: str
    prompt: PromptPackage
    record: m.MessageRecord  # the assistant message's history record
    request: Asked
    status: str = "queued"
    answer: ReplyText = field(default_factory=ReplyText)
    thinking: ReplyText = field(default_factory=ReplyText)  # a reasoning model's, before its answer
    tool_calls: list[dict] = field(default_factory=list)  # the tools it called, in OpenAI's shape
    stream: Streaming = field(default_factory=Streaming)
    delivery: Delivery = field(default_factory=Delivery)
    counts: Counts = field(default_factory=Counts)

    @property
    def run_id(self) -> str:
        run = self.request.run
        return self.generation_id if not run else f"{self.generation_id}{RUN_MARK}{run}"

    @property
    def length(self) -> int:
        return self.answer.length

    def text(self) -> str:
        return self.answer.text()

    def texts(self) -> tuple[tuple[bool, ReplyText], ...]:
        """(thinking, text) of both texts, the thinking first: it comes first in a reply."""
        return (True, self.thinking), (False, self.answer)

    def moved(self, status: Status) -> None:
        """The generation and its record take a new status, as the lifecycle allows (``protocol.lifecycle``)."""
        self.status = move(self.status, status)
        self.record.status = move(self.record.status, status)

    def job(self) -> m.Job:
        """What its generator is sent: a continuation's own job, else the prompt's from the start."""
        if self.request.job is not None:
            return self.request.job
        p = self.prompt
        return m.Job(self.generation_id, p.wire_messages(), p.model, p.wire_params(), p.prompt_hash,
                     self.request.stream)

    def segment(self, ended: str) -> dict:
        """The figures of the segment under way: where it began, its tokens (the server's count only when its run
        ended with usage; a run cut by a fault never does), the prompt it ran on, and how it ended."""
        c = self.counts
        return {"from": c.segment_from, "tokens": c.tokens - c.tokens_before, "tokens_source": c.run_tokens_source,
                "prompt_hash": self.prompt.prompt_hash, "ended": ended}


def next_checkpoint(last_s: float, period_s: float) -> float:
    """When a reply's next checkpoint is due, its last one made at ``last_s``: the first point after it of a grid
    every ``period_s`` that all replies share, so never later than ``last_s + period_s``. On a shared grid the
    checkpoints of every reply streaming together leave in one bundle, and the persister wakes once for them
    rather than once for each (docs/PERFORMANCE.md, "Checkpoints on a shared grid")."""
    if period_s <= 0 or last_s == float("-inf"):
        return last_s + period_s
    return (math.floor(last_s / period_s) + 1) * period_s


def stats(gen: GenerationState, now: float) -> dict:
    """A reply's stats as clients and the database see them."""
    st, c, asked = gen.stream, gen.counts, gen.request
    end = st.ended_at or now
    # speed and time to first token only where they were measured: a non-streaming reply arrives whole, and
    # an adopted one began before this coordinator did
    first = st.first_token_at if st.streamed and not st.adopted else None
    tok_window = end - first if first is not None else 0.0
    adopted = {"adopted": True} if st.adopted else {}
    own = c.tokens - c.tokens_before  # this segment's: speed is measured over it alone
    return {
        "tokens": c.tokens,
        "tokens_source": c.tokens_source,
        "prompt_tokens": gen.prompt.prompt_tokens,
        "queue_wait_ms": round((st.started_at - asked.queued_at) * 1000, 1) if st.started_at else None,
        "ttft_ms": round((first - asked.queued_at) * 1000, 1) if first is not None else None,
        "duration_ms": round((end - (st.started_at or asked.queued_at)) * 1000, 1),
        "tok_per_s": round(own / tok_window, 1) if tok_window > 0 and own > 1 else None,
        "max_input_tokens": gen.prompt.max_input_tokens,
        "dropped_messages": len(gen.prompt.dropped_message_ids),
        "finish_reason": st.finish_reason,
        "streamed": st.streamed,
        **_thinking_stats(gen, end),
        **_segment_stats(gen),
        **adopted,
    }


def _segment_stats(gen: GenerationState) -> dict:
    """A continued reply's segments, each with its tokens and prompt, and the faults it went on after;
    ``tokens`` is their sum. Nothing for a reply of one segment."""
    c = gen.counts
    if not c.segments:
        return {}
    out = {"segments": [*c.segments, gen.segment(gen.status)], "continued": len(c.segments)}
    if c.continued_after:
        out["continued_after"] = list(c.continued_after)
    return out


def _thinking_stats(gen: GenerationState, end: float) -> dict:
    """A reasoning model's: how long it thought, and its thinking tokens (part of ``tokens``); nothing for a
    reply without thinking, or a prompt that left none out."""
    c, out = gen.counts, {}
    if c.thinking_started_at is not None and gen.thinking.text().strip():  # whitespace alone: no thinking
        until = c.thinking_ended_at or end
        out["thinking_ms"] = round((until - c.thinking_started_at) * 1000, 1) if gen.stream.streamed else None
        out["reasoning_tokens"] = c.reasoning_tokens
        out["reasoning_tokens_source"] = c.reasoning_tokens_source
    if gen.prompt.thinking_left_out:
        out["thinking_left_out"] = gen.prompt.thinking_left_out
    return out
