"""A reply that a fault cut after its first token goes on where the server can extend an assistant turn: the same
generation runs again (``<id>~<n>``) from all the text it holds. What decides it, and the prompt and job it runs
on. Pure, like all of the machine."""
from __future__ import annotations

from protocol import messages as m
from services.coordinator.book import SessionBook
from services.coordinator.effects import Log, ToControl
from services.coordinator.generation import GenerationState
from services.coordinator.generators import Generators
from services.coordinator.prompt import PromptPackage, PromptTooLarge, continuation, original_of


class Continuation:
    def __init__(self, settings, count_tokens, book: SessionBook, generators: Generators, counters: dict) -> None:
        self.settings, self.count_tokens = settings, count_tokens
        self.book, self.generators, self.counters = book, generators, counters

    def after(self, gen: GenerationState, fault: str, now: float, out: list) -> bool:
        """Whether the reply goes on after ``fault``: up to CHATTER_AUTO_CONTINUE times, as its next run, whose job
        the caller dispatches. Clients see a pause; the text goes on from its offsets, and the old run's events are
        late. False (an error, keeping the text) under style ``none``, with no answer text yet (a reply cut while
        thinking cannot be continued), past the limit, or when the prompt would not fit."""
        asked = gen.request
        if asked.run >= self.settings.auto_continue:
            return not_continued(gen, fault, f"continued {asked.run} times already (CHATTER_AUTO_CONTINUE="
                                 f"{self.settings.auto_continue})", out)
        if not gen.answer.length:
            return not_continued(gen, fault, "no answer text yet", out)
        style, why = self.generators.continue_style(self.book.sessions[gen.session_id].continue_style)
        if style == "none":
            return not_continued(gen, fault, f"continue style none: {why}", out)
        try:
            prompt = continuation(original_of(gen.prompt, self.count_tokens), gen.text(), style, self.count_tokens,
                                  gen.message_id)
        except PromptTooLarge as exc:
            return not_continued(gen, fault, str(exc), out)
        out.append(ToControl(m.CancelGeneration(gen.run_id)))  # a stalled run must not go on beside the next
        next_segment(gen, fault)
        asked.run += 1
        gen.counts.continued_after.append(fault)
        set_prompt(gen, prompt, style)
        gen.stream.generator_id, gen.stream.last_delta_at, asked.run_queued_at = None, None, now
        self.counters["generations_continued"] += 1
        out.append(Log("generation_continued", {"session_id": gen.session_id, "generation_id": gen.generation_id,
                                                "run": asked.run, "length": gen.length, "style": style,
                                                "after": fault}))
        return True


def not_continued(gen: GenerationState, fault: str, why: str, out: list) -> bool:
    """The log says why a reply cut by ``fault`` ends instead of going on."""
    out.append(Log("generation_not_continued", {"session_id": gen.session_id, "generation_id": gen.generation_id,
                                                "run": gen.request.run, "length": gen.length, "after": fault,
                                                "why": why}))
    return False


def next_segment(gen: GenerationState, ended: str) -> None:
    """The segment under way ends (``ended``: why) and the next begins at the answer's length."""
    gen.counts.segments.append(gen.segment(ended))
    gen.counts.segment_from, gen.counts.tokens_before = gen.length, gen.counts.tokens


def set_prompt(gen: GenerationState, prompt: PromptPackage, style: str) -> None:
    """A continuation's prompt is the reply's from now on: its preview and hash are the request's."""
    gen.prompt = prompt
    record = gen.record
    record.prompt_hash, record.prompt_ref, record.preview, record.prompt_messages = (
        prompt.prompt_hash, prompt.ref, None, None)  # stored by reference (``prompt.rebuild``)
    gen.request.job = m.Job(gen.run_id, prompt.wire_messages(), prompt.model, prompt.wire_params(), prompt.prompt_hash,
                            gen.request.stream, seq_from=gen.answer.last_seq, length_from=gen.answer.length,
                            reasoning_seq_from=gen.thinking.last_seq, reasoning_length_from=gen.thinking.length,
                            strip_prefix=gen.text() if style == "prefill" else "", think_tags="off")
