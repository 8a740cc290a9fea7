"""The generator's machine, pure: what it knows of its streams and of the coordinator, and what it sends.
Events in (a job taken, a chunk read, a stream's end, a control message, a second gone by), effects out: the
messages for the coordinator, in the order they must go, and the streams to stop. No sockets, no HTTP, no
tasks and no clock of its own: the shell (``__main__``) reads the upstream and the sockets, asks the machine,
and carries its effects out. One stream's own rules (numbering, how it must end, what is retried) are
``rules.py``.

- A job is taken unless a cancel came for it first (kept a minute) or it runs already.
- Deltas are gathered and sent in batches, one per turn of the shell's loop (``flush``); any other event
  goes after every delta before it, as the protocol's order per generation is.
- A stream that ended is kept a while with its text and its end (``ENDED_KEPT_S``), for a coordinator that
  restarts before it made them durable: a new coordinator (a new instance id in its heartbeat) hears what is
  held (``GenAnnounce``) and may ask for each text beyond its durable offsets (``ResumeGeneration``).
- Every stream is stopped when the coordinator has been silent for CHATTER_COORDINATOR_SILENT_MS, so that no
  upstream request is left orphaned.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable

from protocol import messages as m
from protocol.codec import PIECE_CHARS, pieces
from services.generator.rules import Generation
from services.waiting import FirstTokenWait

ENDED_KEPT_S = 60.0  # an ended generation's text and end are kept this long, for a coordinator that restarts
ENDED_KEPT_MAX = 10_000
CANCEL_KEPT_S = 60.0  # a cancel that beat its job waits this long for it


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop this stream now: close its upstream connection and end its task (it ends as cancelled)."""
    generation_id: str


@dataclass(frozen=True, slots=True)
class Log:
    level: str
    event: str
    fields: dict


class GeneratorMachine:
    def __init__(self, generator_id: str, concurrency: int, think_tags: str, coordinator_silent_s: float,
                 count_tokens: Callable[[str, str], int], now: float = 0.0, pid: int = 0) -> None:
        self.generator_id, self.concurrency = generator_id, concurrency
        self.think_tags, self.coordinator_silent_s = think_tags, coordinator_silent_s
        self.count_tokens, self.pid = count_tokens, pid
        self.live: dict[str, Generation] = {}  # generation id -> its stream's state, while it runs
        # the streams with no delta sent yet: while there is one, the shell's loop is not paced
        self.first_token_awaited = FirstTokenWait(lambda gen_id: (gen := self.live.get(gen_id)) is not None
                                                  and not gen.emitted)
        # recently ended: generation id -> (its state, the event that ended it, when), for a restarted coordinator
        self.ended: collections.OrderedDict[str, tuple[Generation, m.Message, float]] = collections.OrderedDict()
        self.cancelled_early: dict[str, float] = {}  # cancels that beat their job here, and when
        self.coordinator_instance: str | None = None
        self.coordinator_heard_at = now
        self.contexts: dict[str, int] = {}  # model -> context length, as the server tells it
        self.server = ""  # what the server says it is (owned_by): the coordinator's continue style follows it
        self.retries = 0
        self.pending: list[list] = []  # delta items not yet in a batch
        self.pending_chars = 0  # their texts' characters

    # ------------------------------------------------------------ what goes out

    def emit(self, msg: m.Message) -> list[m.Message]:
        """An event, after every delta gathered before it."""
        out = self.flush()
        out.append(msg)
        return out

    def flush(self) -> list[m.Message]:
        """The gathered deltas as batches: one, or one per piece's worth of text when they are long."""
        if not self.pending:
            return []
        batch, self.pending = self.pending, []
        chars, self.pending_chars = self.pending_chars, 0
        if chars <= PIECE_CHARS:
            return [m.GenDeltaBatch(batch)]
        out, group, chars = [], [], 0
        for item in batch:
            if group and chars + len(item[2]) > PIECE_CHARS:
                out.append(m.GenDeltaBatch(group))
                group, chars = [], 0
            group.append(item)
            chars += len(item[2])
        out.append(m.GenDeltaBatch(group))
        return out

    def _delta(self, gen: Generation, thinking: bool, seq: int, text: str, received_at: float) -> None:
        # a DeltaItem: an answer's leaves its trailing ``thinking`` out
        item = [gen.job.generation_id, seq, text, self.count_tokens(text, gen.job.model), received_at]
        if thinking:
            item.append(True)
        self.pending.append(item)
        self.pending_chars += len(text)

    # ------------------------------------------------------------ one stream

    def take_job(self, job: m.Job, now: float) -> Generation | None:
        """A job from the coordinator: its stream's state, to run; None when a cancel came for it first or it
        runs already."""
        self.coordinator_heard_at = now
        if self.cancelled_early.pop(job.generation_id, None) is not None or job.generation_id in self.live:
            return None
        gen = self.live[job.generation_id] = Generation.of(job, self.think_tags)
        self.first_token_awaited.add(job.generation_id)
        return gen

    def started(self, gen: Generation) -> list[m.Message]:
        return self.emit(m.GenStarted(gen.job.generation_id, self.generator_id))

    def chunk(self, gen: Generation, event, received_at: float) -> list[m.Message]:
        """One decoded upstream chunk (``sse.ChunkEvent``): its deltas are gathered for the next ``flush``; a
        tool call's events are returned, after them."""
        for thinking, seq, text in gen.take(event):
            self._delta(gen, thinking, seq, text, received_at)
        if not event.tool_calls:
            return []
        out = self.flush()  # rare: a model that calls a tool; in order after the text before it
        out.extend(gen.take_tool_calls(event.tool_calls))
        return out

    def completed(self, gen: Generation, now: float, wall: float) -> list[m.Message]:
        return self._end(gen, self.done(gen), now, wall)

    def failed(self, gen: Generation, reason: str, now: float, wall: float) -> list[m.Message]:
        return self._end(gen, m.GenError(gen.job.generation_id, gen.seq, reason, gen.attempts), now, wall)

    def cancelled(self, gen: Generation) -> list[m.Message]:
        return self.emit(m.GenCancelled(gen.job.generation_id, gen.seq))

    def crashed(self, gen: Generation, words: str) -> list[m.Message]:
        """A bug in the shell ended the stream: an error that says so, and nothing kept for a catch-up."""
        return self.emit(m.GenError(gen.job.generation_id, gen.seq, f"generator fault: {words}", gen.attempts))

    def finished(self, generation_id: str) -> None:
        """The stream's task is over, however it ended: its slot is free."""
        self.live.pop(generation_id, None)
        self.first_token_awaited.ended(generation_id)

    def _end(self, gen: Generation, end: m.Message, now: float, wall: float) -> list[m.Message]:
        """The text held back in case it began a ``</think>`` goes out as it is, then how the stream ended, which
        is kept a while with the text: a coordinator that restarts before it made the end durable asks again."""
        for thinking, seq, text in gen.take_held():
            self._delta(gen, thinking, seq, text, wall)
        self.ended[gen.job.generation_id] = (gen, end, now)
        return self.emit(end)

    def done(self, gen: Generation) -> m.GenDone:
        """The end of a completed stream: its counts, the server's where it reported usage. Completion tokens
        include the thinking, as OpenAI counts them; the thinking's share is the server's only where its usage
        tells it apart (completion_tokens_details.reasoning_tokens)."""
        model = gen.job.model
        thinking = self.count_tokens("".join(gen.reasoning_parts), model) if gen.reasoning_parts else 0
        if gen.completion_tokens is not None:
            tokens, source = gen.completion_tokens, "server"
        else:
            tokens, source = self.count_tokens("".join(gen.parts), model) + thinking, "estimated"
        reasoning, reasoning_source = ((gen.reasoning_tokens, "server") if gen.reasoning_tokens is not None
                                       else (thinking, "estimated"))
        return m.GenDone(gen.job.generation_id, gen.seq, gen.length, gen.finish_reason or "", tokens, source,
                         gen.prompt_tokens, gen.streamed, gen.reasoning_seq, gen.reasoning_length, reasoning,
                         reasoning_source)

    # ------------------------------------------------------------ the coordinator

    def control(self, msg: m.Message, now: float) -> list:
        """A message of the control channel: a cancel, the coordinator's heartbeat, or its ask to resume."""
        self.coordinator_heard_at = now
        if isinstance(msg, m.CoordinatorHeartbeat):
            out: list = []
            if msg.instance and msg.instance != self.coordinator_instance:
                if self.coordinator_instance is not None:  # a new one: it must hear what we hold, or it sweeps it
                    out = self.announce()
                self.coordinator_instance = msg.instance
            return out
        if isinstance(msg, m.ResumeGeneration):
            return self.resume(msg)
        if isinstance(msg, m.CancelGeneration):
            return self.stop(msg.generation_id, now)
        return []

    def stop(self, generation_id: str, now: float) -> list:
        """Stop a stream: marked first, so that its closed connection is never taken for a failure of the
        upstream and retried. A cancel for a job not here yet waits for it."""
        gen = self.live.get(generation_id)
        if gen is None:
            self.cancelled_early[generation_id] = now
            return []
        gen.stopped = True
        return [Stop(generation_id)]

    def announce(self) -> list[m.Message]:
        held = [(gen, False) for gen in self.live.values()] + [(gen, True) for gen, _, _ in self.ended.values()]
        return self.emit(m.GenAnnounce(self.generator_id, [
            m.LiveGeneration(gen.job.generation_id, gen.seq, gen.length, gen.reasoning_seq, gen.reasoning_length,
                             ended) for gen, ended in held])) + [
            Log("info", "generations_announced", {"live": len(self.live), "ended": len(self.ended)})]

    def resume(self, asked: m.ResumeGeneration) -> list[m.Message]:
        """A restarted coordinator adopted this generation: the text beyond its durable offsets, then its end if
        it ended. Another generator's generation is not ours to answer."""
        ended = self.ended.get(asked.generation_id)
        gen = self.live.get(asked.generation_id) or (ended[0] if ended else None)
        if gen is None:
            return []
        text, reasoning = gen.text_from(asked.offset, False), gen.text_from(asked.reasoning_offset, True)
        if text is None or reasoning is None:  # durable text ends before this continuation began
            return self.emit(m.GenError(asked.generation_id, gen.seq, "after the coordinator's restart, the durable "
                                        "text ends before this stream began", gen.attempts))
        out = self.flush()
        out.extend(catch_up_parts(asked, gen.seq, text, gen.reasoning_seq, reasoning, gen.tool_calls))
        if ended is not None:
            out.append(ended[1])
        return out

    def tick(self, now: float) -> list:
        """Once a second: the heartbeat (free capacity, the models' contexts, the server's kind), every stream
        stopped when the coordinator fell silent, and what was kept too long forgotten."""
        out: list = self.emit(m.GeneratorHeartbeat(self.generator_id, self.concurrency - len(self.live),
                                                   len(self.live), self.retries, self.pid, self.contexts or None,
                                                   self.server))
        if self.live and now - self.coordinator_heard_at > self.coordinator_silent_s:
            out.append(Log("warning", "coordinator_silent", {"cancelling": len(self.live)}))
            for generation_id in list(self.live):
                out.extend(self.stop(generation_id, now))  # never leave an upstream request orphaned
        for gen_id, at in list(self.cancelled_early.items()):
            if now - at > CANCEL_KEPT_S:
                del self.cancelled_early[gen_id]
        while self.ended and (len(self.ended) > ENDED_KEPT_MAX
                              or now - next(iter(self.ended.values()))[2] > ENDED_KEPT_S):
            self.ended.popitem(last=False)
        return out


def catch_up_parts(asked: m.ResumeGeneration, seq: int, text: str, reasoning_seq: int, reasoning: str,
                   tool_calls: list | None = None) -> list[m.GenCatchUp]:
    """The answer to ``asked``: the texts beyond its offsets in catch-ups that each fit a frame, the thinking
    first, each going on from the one before; all but the last say there is ``more``."""
    parts = []
    offset, reasoning_offset = asked.offset, asked.reasoning_offset
    for piece in pieces(reasoning) if reasoning else []:
        parts.append(m.GenCatchUp(asked.generation_id, seq, offset, "", reasoning_seq, reasoning_offset, piece, True))
        reasoning_offset += len(piece)
    for piece in pieces(text):
        parts.append(m.GenCatchUp(asked.generation_id, seq, offset, piece, reasoning_seq, reasoning_offset, "", True))
        offset += len(piece)
    parts[-1].more, parts[-1].tool_calls = False, tool_calls or None
    return parts
