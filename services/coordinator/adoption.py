"""How a restarted coordinator adopts the replies that were in flight, instead of ending them: a part of
``machine.Coordinator``, given the sessions, the replies under way and the persist tracker; pure, like all of the
machine.

1. Generators keep streaming through the outage. Each heartbeat of ours names this coordinator's instance; a
   generator that sees a new one announces the generations it holds (``GenAnnounce``).
2. For ``adopt_grace_ms`` after start, the adoption window, nothing is swept: a delta of a generation we do not
   know is dropped without cancelling it (it may be adopted in a moment), a session read from the database
   keeps its streaming reply as streaming (its snapshot is not final, and no second reply starts there).
3. An announced generation is rebuilt from its persisted row, read by the shell (``LoadSessionOfGeneration`` ->
   ``adopt``): its session, its message, its frozen prompt, and its durable text. We ask its generator for the
   text beyond the durable offsets (``ResumeGeneration``); until the answer (``GenCatchUp``) arrives, its deltas
   and its end are dropped, as the generator sends them again after the catch-up.
4. When the window closes, a reply read as streaming that nobody announced and that has no text yet never
   reached a generator (its job died with the old coordinator): it is queued again, which cannot duplicate
   anything. Then, with no adoption pending, the orphan sweep runs: only a reply that nobody announced and
   that had text, because its generator died too, ends ``interrupted``.
"""
from __future__ import annotations

from protocol import messages as m
from protocol.lifecycle import Status, fresh_at, move
from services.coordinator.book import SessionBook
from services.coordinator.effects import Log, LoadSessionOfGeneration, ToControl
from services.coordinator.generation import RUN_MARK, Asked, GenerationState, base_id
from services.coordinator.persistence import PersistTracker
from services.coordinator.prompt import package_of
from services.coordinator.stream import Streams


class Adoption:
    def __init__(self, settings, count_tokens, book: SessionBook, streams: Streams, persisted: PersistTracker,
                 counters: dict) -> None:
        self.settings, self.count_tokens, self.counters = settings, count_tokens, counters
        self.book, self.streams, self.persisted = book, streams, persisted
        self.adoptions: dict[str, tuple[str, m.LiveGeneration]] = {}  # announced, their rows being read
        self.adopt_until: float | None = None  # the window after start
        self.open = settings.adopt_grace_ms > 0

    def may_adopt(self, run_id: str) -> bool:
        """A delta of a generation the stream rules do not know may be of one adopted in a moment."""
        return self.open or run_id in self.adoptions

    # ------------------------------------------------------------ the window

    def window(self, now: float, out: list | None = None) -> bool:
        """True while this coordinator, new, still waits for announcements. Opens at the first tick."""
        if self.adopt_until is None:
            self.adopt_until = now + self.settings.adopt_grace_ms / 1000
        if self.open and now >= self.adopt_until:
            self.open = False
            closing = self._close_window(now)
            if out is not None:
                out.extend(closing)
        return self.open

    def _close_window(self, now: float) -> list:
        """Replies read as streaming that nobody announced: without text, queued again (their job was lost
        with the old coordinator); with text, interrupted, as the sweep makes them in the database."""
        out: list = []
        for sess in self.book.sessions.values():
            gen_id = sess.active_generation
            if gen_id is None or gen_id in self.streams.active or gen_id in self.adoptions:
                continue
            sess.active_generation = None
            record = next((r for r in sess.history if r.generation_id == gen_id and r.status == "streaming"), None)
            if record is None:
                continue
            if not record.content and not record.reasoning:
                self._rebuild(sess, record, None, now, out)
            else:
                record.status = move(record.status, Status.INTERRUPTED)
                record.error = "interrupted: coordinator restarted"
        return out

    def sweep_held(self) -> bool:
        """The orphan sweep waits for the window and for every adoption in progress: a reply being adopted must
        not be swept to ``interrupted`` under it."""
        return self.open or bool(self.adoptions)

    # ------------------------------------------------------------ announcements and adoption

    def on_announce(self, msg: m.GenAnnounce, now: float, out: list) -> None:
        for live in msg.generations:
            gen_id = live.generation_id  # a run's id (``<id>~<n>`` for a continuation after a fault)
            base = base_id(gen_id)
            if base in self.streams.active or base in self.streams.finalizing or gen_id in self.adoptions:
                continue  # ours already (a generator that saw us restart twice), or on its way
            if not self.window(now, out):
                if not live.ended:
                    out.append(ToControl(m.CancelGeneration(gen_id)))  # too late: it was swept
                continue
            self.adoptions[gen_id] = (msg.generator_id, live)
            out.append(LoadSessionOfGeneration(gen_id))

    def adopt(self, generation_id: str, data: dict | None, now: float) -> list:
        """The shell read the session of an announced generation (``None``: no such generation stored). Rebuild
        the generation from its row and ask its generator for the text beyond the durable offsets."""
        out: list = []
        if generation_id not in self.adoptions:
            return out
        if data is not None:
            self.book.load(data, keep_streaming=True)  # while the adoption is pending, its streaming reply stays so
        generator_id, live = self.adoptions.pop(generation_id)
        run_id, generation_id = generation_id, base_id(generation_id)
        sess = self.book.sessions.get(data["session_id"]) if data is not None else None
        record = next((r for r in sess.history if r.generation_id == generation_id), None) if sess else None
        if record is None or record.status != "streaming" or generation_id in self.streams.active \
                or (sess.active_generation not in (None, generation_id)):
            # not ours to adopt: never stored, or it ended before the restart (its row says how)
            if not live.ended:
                out.append(ToControl(m.CancelGeneration(run_id)))
            out.append(Log("adoption_declined", {"generation_id": run_id,
                                                 "status": record.status if record else None}))
            return out
        gen = self._rebuild(sess, record, generator_id, now, out)
        gen.request.run = int(run_id.partition(RUN_MARK)[2] or 0)  # its events come as this run's
        if live.seq or live.reasoning_seq:
            gen.stream.first_token_at = now  # it has tokens: if its generator dies now, it must not run again
        out.append(ToControl(m.ResumeGeneration(run_id, len(record.content), len(record.reasoning))))
        out.append(Log("generation_adopted", {"session_id": sess.session_id, "generation_id": generation_id,
                                              "durable_length": len(record.content),
                                              "generator_length": live.length}))
        return out

    def _rebuild(self, sess, record, generator_id: str | None, now: float, out: list) -> GenerationState:
        """A generation of a stored streaming row, taken over by this coordinator: from its generator
        (``generator_id``, then it catches up), or, without one, queued again from its frozen prompt."""
        prompt = package_of(sess.lineage(record.message_id), record, self.count_tokens)
        gen = GenerationState(record.generation_id, sess.session_id, record.message_id, prompt, record,
                              Asked(record.created_at), status="streaming")
        st = gen.stream
        st.generator_id, st.started_at, st.run_started_at, st.last_delta_at = generator_id, record.created_at, now, now
        st.adopted, st.catching_up = True, generator_id is not None
        gen.answer.take_stored(record.content)
        gen.thinking.take_stored(record.reasoning)
        if record.reasoning:
            gen.counts.thinking_started_at = now
        record.status, record.error = move(record.status, Status.STREAMING), None
        self.streams.active[record.generation_id] = gen
        sess.active_generation = record.generation_id
        self.book.message_sessions[record.message_id] = sess.session_id
        self.persisted.adopt(record.message_id, record.generation_id, len(record.content), len(record.reasoning), now)
        if generator_id is None:
            gen.moved(Status.QUEUED)
            st.started_at, st.run_started_at, st.last_delta_at = None, None, None
            gen.request.queued_at = now  # the stall watchdog's clock for taking the job
            self.counters["generations_requeued"] += 1
            out.append(Log("generation_requeued", {"session_id": sess.session_id,
                                                   "generation_id": record.generation_id}))
            self.streams.dispatch(gen, now, out)
        else:
            self.counters["generations_adopted"] += 1
        return gen

    def on_catch_up(self, msg: m.GenCatchUp, now: float, out: list) -> None:
        gen = self.streams.running(msg.generation_id)
        if gen is None or not gen.stream.catching_up:
            return
        for text, seq, offset, fresh in ((gen.thinking, msg.reasoning_seq, msg.reasoning_offset, msg.reasoning),
                                         (gen.answer, msg.seq, msg.offset, msg.text)):
            new = fresh_at(text.length, offset, fresh)
            if new is None or offset + len(fresh) < text.length:
                self.streams.finalize(gen, "error", now, out, error=f"catch-up after the coordinator's restart does "
                                      f"not continue the stored text (offset {offset}, stored {text.length})")
                return
            text.last_seq = seq
            if new:
                text.add(new)
        st, counts = gen.stream, gen.counts
        st.catching_up = msg.more  # a long text comes in several, each going on from the one before
        if msg.tool_calls is not None:  # the generator's are whole: watchers get them with the next snapshot
            gen.tool_calls, gen.delivery.tool_calls_saved = msg.tool_calls, False
        st.last_delta_at = now
        if gen.thinking.length and counts.thinking_started_at is None:
            counts.thinking_started_at = now
        if gen.answer.length and counts.thinking_started_at is not None:
            counts.thinking_ended_at = counts.thinking_ended_at or now
        if st.first_token_at is None and (gen.answer.length or gen.thinking.length):
            st.first_token_at = now
        self.streams.flush_clients(gen, now, out)
        self.streams.checkpoint(gen, now, out)
