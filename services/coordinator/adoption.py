"""How a restarted coordinator adopts the replies that were in flight, instead of ending them: pure, a mixin of
``machine.Coordinator`` like the request and stream rules.

1. Generators keep streaming through the outage. Each heartbeat of ours names this coordinator's instance; a
   generator that sees a new one announces the generations it holds (``GenAnnounce``).
2. For ``adopt_grace_ms`` after start, the adoption window, nothing is swept: a delta of a generation we do not
   know is dropped without cancelling it (it may be adopted in a moment), a session read from the database
   keeps its streaming reply as streaming (its snapshot is not final, and no second reply starts there).
3. An announced generation is rebuilt from its persisted row, read by the shell (``ReadGeneration`` ->
   ``adopt``): its session, its message, its frozen prompt, and its durable text. We ask its generator for the
   text beyond the durable offsets (``ResumeGeneration``); until the answer (``GenCatchUp``) arrives, its deltas
   and its end are dropped, as the generator sends them again after the catch-up.
4. When the window has closed and no adoption is pending, the orphan sweep runs: only a reply that nobody
   announced, because its generator died too, ends ``interrupted``.
"""
from __future__ import annotations

from protocol import messages as m
from services.coordinator.effects import Log, ReadGeneration, ToControl
from services.coordinator.prompt import package_of
from services.coordinator.stream import GenerationState


class Adoption:
    # ------------------------------------------------------------ the window

    def _adoption_window(self, now: float) -> bool:
        """True while this coordinator, new, still waits for announcements. Opens at the first tick."""
        if self.adopt_until is None:
            self.adopt_until = now + self.settings.adopt_grace_ms / 1000
        if self.adopting_open and now >= self.adopt_until:
            self.adopting_open = False
            self._close_adoption_window(now)
        return self.adopting_open

    def _close_adoption_window(self, now: float) -> None:
        """Replies read as streaming that nobody announced have no generation: interrupted, as the sweep makes
        them in the database."""
        for sess in self.sessions.values():
            gen_id = sess.active_generation
            if gen_id is not None and gen_id not in self.active and gen_id not in self.adoptions:
                sess.active_generation = None
                for record in sess.history:
                    if record.generation_id == gen_id and record.status == "streaming":
                        record.status, record.error = "interrupted", "interrupted: coordinator restarted"

    def _sweep_held(self) -> bool:
        """The orphan sweep waits for the window and for every adoption in progress: a reply being adopted must
        not be swept to ``interrupted`` under it."""
        return self.adopting_open or bool(self.adoptions)

    # ------------------------------------------------------------ announcements and adoption

    def _on_gen_announce(self, msg: m.GenAnnounce, now: float, out: list) -> None:
        for live in msg.generations:
            gen_id = live.generation_id
            if gen_id in self.active or gen_id in self.finalizing or gen_id in self.adoptions:
                continue  # ours already (a generator that saw us restart twice), or on its way
            if not self._adoption_window(now):
                if not live.ended:
                    out.append(ToControl(m.CancelGeneration(gen_id)))  # too late: it was swept
                continue
            self.adoptions[gen_id] = (msg.generator_id, live)
            out.append(ReadGeneration(gen_id))

    def adopt(self, generation_id: str, data: dict | None, now: float) -> list:
        """The shell read the session of an announced generation (``None``: no such generation stored). Rebuild
        the generation from its row and ask its generator for the text beyond the durable offsets."""
        out: list = []
        if generation_id not in self.adoptions:
            return out
        if data is not None:
            self.load_session(data)  # while the adoption is pending, its streaming reply stays streaming
        generator_id, live = self.adoptions.pop(generation_id)
        sess = self.sessions.get(data["session_id"]) if data is not None else None
        record = next((r for r in sess.history if r.generation_id == generation_id), None) if sess else None
        if record is None or record.status != "streaming" or generation_id in self.active \
                or (sess.active_generation not in (None, generation_id)):
            # not ours to adopt: never stored, or it ended before the restart (its row says how)
            if not live.ended:
                out.append(ToControl(m.CancelGeneration(generation_id)))
            out.append(Log("adoption_declined", {"generation_id": generation_id,
                                                 "status": record.status if record else None}))
            return out
        gen = GenerationState(generation_id, sess.session_id, record.message_id, package_of(record, self.count_tokens),
                              record, queued_at=record.created_at, status="streaming", generator_id=generator_id,
                              started_at=record.created_at, last_delta_at=now, adopted=True, catching_up=True)
        if live.seq or live.reasoning_seq:
            gen.first_token_at = now  # it has tokens: if its generator dies now, it must not run again
        for text, stored in ((gen.answer, record.content), (gen.thinking, record.reasoning)):
            text.parts[:] = [stored] if stored else []
            text.length = text.client_len = len(stored)
        if record.reasoning:
            gen.thinking_started_at = now
        record.status, record.error = "streaming", None
        self.active[generation_id] = gen
        sess.active_generation = generation_id
        self.message_sessions[record.message_id] = sess.session_id
        self.persisted.adopt(record.message_id, generation_id, len(record.content), len(record.reasoning), now)
        self.counters["generations_adopted"] += 1
        out.append(ToControl(m.ResumeGeneration(generation_id, len(record.content), len(record.reasoning))))
        out.append(Log("generation_adopted", {"session_id": sess.session_id, "generation_id": generation_id,
                                              "durable_length": len(record.content),
                                              "generator_length": live.length}))
        return out

    def _on_gen_catch_up(self, msg: m.GenCatchUp, now: float, out: list) -> None:
        gen = self.active.get(msg.generation_id)
        if gen is None or not gen.catching_up:
            return
        for text, seq, offset, fresh in ((gen.thinking, msg.reasoning_seq, msg.reasoning_offset, msg.reasoning),
                                         (gen.answer, msg.seq, msg.offset, msg.text)):
            if offset > text.length or offset + len(fresh) < text.length:
                self._finalize(gen, "error", now, out, error=f"catch-up after the coordinator's restart does not "
                               f"continue the stored text (offset {offset}, stored {text.length})")
                return
            new = fresh[text.length - offset:]
            text.last_seq = seq
            if new:
                text.parts.append(new)
                text.length += len(new)
                text.client_pending.append(new)
                text.persist_pending.append(new)
        gen.catching_up = False
        gen.last_delta_at = now
        if gen.thinking.length and gen.thinking_started_at is None:
            gen.thinking_started_at = now
        if gen.answer.length and gen.thinking_started_at is not None:
            gen.thinking_ended_at = gen.thinking_ended_at or now
        if gen.first_token_at is None and (gen.answer.length or gen.thinking.length):
            gen.first_token_at = now
        self._flush_clients(gen, now, out)
        self._checkpoint(gen, now, out)
