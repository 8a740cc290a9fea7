"""The generator's machine without sockets, HTTP or tasks: every event it takes, and the effects it gives, in the
order they must leave."""
from __future__ import annotations

import pytest

from protocol import messages as m
from protocol.codec import PIECE_CHARS
from services.generator.machine import (CANCEL_KEPT_S, ENDED_KEPT_MAX, ENDED_KEPT_S, GeneratorMachine, Log, Stop,
                                        catch_up_parts)
from services.generator.sse import ChunkEvent


def words(text: str, _model: str) -> int:
    return len(text.split())


def machine(silent_s: float = 5.0) -> GeneratorMachine:
    return GeneratorMachine("gen-a", 4, "auto", silent_s, words, now=0.0, pid=42)


def job(gen_id: str = "g1", **fields) -> m.Job:
    return m.Job(gen_id, [{"role": "user", "content": "hi"}], "mock-1", {}, "hash", **fields)


def kinds(effects: list) -> list[str]:
    return [type(e).__name__ for e in effects]


def test_a_job_is_taken_once_and_a_cancel_that_beat_it_refuses_it():
    mach = machine()
    gen = mach.take_job(job("g1"), 1.0)
    assert gen is not None and mach.live == {"g1": gen} and mach.coordinator_heard_at == 1.0
    assert mach.take_job(job("g1"), 1.1) is None, "the same job twice runs twice"
    assert mach.control(m.CancelGeneration("g2"), 2.0) == []  # not here yet: remembered
    assert mach.take_job(job("g2"), 2.5) is None and "g2" not in mach.live
    assert mach.take_job(job("g2"), 2.6) is not None, "the cancel is used once"


def test_a_cancel_that_beat_its_job_is_forgotten_after_a_while():
    mach = machine(silent_s=1e9)
    mach.control(m.CancelGeneration("g1"), 0.0)
    mach.tick(CANCEL_KEPT_S - 1)
    assert "g1" in mach.cancelled_early
    mach.tick(CANCEL_KEPT_S + 1)
    assert "g1" not in mach.cancelled_early
    assert mach.take_job(job("g1"), CANCEL_KEPT_S + 2) is not None


def test_deltas_are_gathered_until_a_flush_and_numbered_per_text():
    mach = machine()
    gen = mach.take_job(job(), 0.0)
    assert mach.first_token_awaited()
    assert mach.chunk(gen, ChunkEvent(text="one two"), 10.0) == []
    assert mach.chunk(gen, ChunkEvent(reasoning="hmm"), 10.5) == []
    assert mach.chunk(gen, ChunkEvent(text=" three"), 11.0) == []
    assert not mach.first_token_awaited(), "a delta was taken: no wait for a first token"
    [batch] = mach.flush()
    assert batch == m.GenDeltaBatch([["g1", 1, "one two", 2, 10.0], ["g1", 1, "hmm", 1, 10.5, True],
                                     ["g1", 2, " three", 1, 11.0]])
    assert mach.flush() == [] and mach.pending_chars == 0


def test_any_other_event_goes_after_the_deltas_before_it():
    mach = machine()
    gen = mach.take_job(job(), 0.0)
    mach.chunk(gen, ChunkEvent(text="a"), 1.0)
    out = mach.announce()
    assert kinds(out) == ["GenDeltaBatch", "GenAnnounce", "Log"]
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    mach.chunk(gen, ChunkEvent(text="b"), 2.0)
    out = mach.chunk(gen, ChunkEvent(tool_calls=[call]), 3.0)
    assert kinds(out) == ["GenDeltaBatch", "GenToolCall"]
    assert out[1] == m.GenToolCall("g1", 0, "c1", "f", "{}")


def test_a_long_run_of_deltas_goes_in_batches_that_each_fit():
    mach = machine()
    gen = mach.take_job(job(), 0.0)
    piece = "x" * (PIECE_CHARS // 2)
    for _ in range(5):
        mach.chunk(gen, ChunkEvent(text=piece), 1.0)
    batches = mach.flush()
    assert len(batches) == 3
    assert all(sum(len(item[2]) for item in b.deltas) <= PIECE_CHARS for b in batches)
    assert [item[1] for b in batches for item in b.deltas] == [1, 2, 3, 4, 5]


def test_a_completed_stream_sends_its_held_text_then_its_end_and_keeps_both():
    mach = machine()
    gen = mach.take_job(job(), 0.0)
    mach.chunk(gen, ChunkEvent(text="answer </thi"), 1.0)  # may begin a tag: held back
    mach.chunk(gen, ChunkEvent(finish_reason="stop"), 1.1)
    out = mach.completed(gen, 5.0, 2.0)
    assert kinds(out) == ["GenDeltaBatch", "GenDone"]
    assert "".join(item[2] for item in out[0].deltas) == "answer </thi"
    assert out[1].finish_reason == "stop" and out[1].length == len("answer </thi")
    assert out[1].tokens_source == "estimated" and out[1].completion_tokens == 2
    assert mach.ended["g1"][1] is out[1]
    mach.finished("g1")
    assert mach.live == {} and not mach.first_token_awaited()


def test_the_servers_counts_are_used_where_it_reported_them():
    mach = machine()
    gen = mach.take_job(job(), 0.0)
    mach.chunk(gen, ChunkEvent(reasoning="think think", text="hi", finish_reason="stop", prompt_tokens=7,
                               completion_tokens=30, reasoning_tokens=12), 1.0)
    done = mach.completed(gen, 1.0, 1.0)[-1]
    assert (done.completion_tokens, done.tokens_source, done.prompt_tokens) == (30, "server", 7)
    assert (done.reasoning_tokens, done.reasoning_tokens_source) == (12, "server")
    gen2 = mach.take_job(job("g2"), 0.0)
    mach.chunk(gen2, ChunkEvent(reasoning="think think", text="hi", finish_reason="stop"), 1.0)
    done = mach.completed(gen2, 1.0, 1.0)[-1]
    assert (done.completion_tokens, done.tokens_source) == (3, "estimated")
    assert (done.reasoning_tokens, done.reasoning_tokens_source) == (2, "estimated")


@pytest.mark.parametrize("how", ["failed", "cancelled", "crashed"])
def test_each_other_end(how):
    mach = machine()
    gen = mach.take_job(job(), 0.0)
    mach.chunk(gen, ChunkEvent(text="partial"), 1.0)
    if how == "failed":
        out = mach.failed(gen, "upstream disconnected", 2.0, 2.0)
        assert out[-1] == m.GenError("g1", 1, "upstream disconnected", 0) and "g1" in mach.ended
    elif how == "cancelled":
        out = mach.cancelled(gen)
        assert out[-1] == m.GenCancelled("g1", 1) and "g1" not in mach.ended
    else:
        out = mach.crashed(gen, "KeyError: x")
        assert out[-1].reason == "generator fault: KeyError: x" and "g1" not in mach.ended
    assert kinds(out)[0] == "GenDeltaBatch", "the text before the end went first"


def test_a_cancel_of_a_live_stream_marks_it_and_stops_it():
    mach = machine()
    gen = mach.take_job(job(), 0.0)
    assert mach.control(m.CancelGeneration("g1"), 1.0) == [Stop("g1")]
    assert gen.stopped


def test_a_new_coordinator_hears_what_is_held_live_and_ended():
    mach = machine()
    assert mach.control(m.CoordinatorHeartbeat(0.0, "c1"), 0.0) == [], "the first coordinator is not new"
    live = mach.take_job(job("g1"), 0.0)
    mach.chunk(live, ChunkEvent(text="abc"), 1.0)
    ended = mach.take_job(job("g2"), 0.0)
    mach.chunk(ended, ChunkEvent(text="de", finish_reason="stop"), 1.0)
    mach.completed(ended, 1.0, 1.0)
    mach.finished("g2")
    assert mach.control(m.CoordinatorHeartbeat(1.0, "c1"), 1.0) == []
    assert mach.control(m.CoordinatorHeartbeat(1.0, ""), 1.0) == []
    out = mach.control(m.CoordinatorHeartbeat(2.0, "c2"), 2.0)
    announce = next(e for e in out if isinstance(e, m.GenAnnounce))
    assert announce.generations == [m.LiveGeneration("g1", 1, 3, 0, 0, False), m.LiveGeneration("g2", 1, 2, 0, 0, True)]
    assert isinstance(out[-1], Log) and out[-1].fields == {"live": 1, "ended": 1}
    assert mach.coordinator_instance == "c2"


def test_a_resume_answers_the_text_beyond_the_durable_offsets_then_the_end():
    mach = machine()
    gen = mach.take_job(job(), 0.0)
    mach.chunk(gen, ChunkEvent(reasoning="why", text="hello world"), 1.0)
    out = mach.control(m.ResumeGeneration("g1", 6, 1), 2.0)
    assert kinds(out) == ["GenDeltaBatch", "GenCatchUp", "GenCatchUp"]
    assert out[1:] == [m.GenCatchUp("g1", 1, 6, "", 1, 1, "hy", True), m.GenCatchUp("g1", 1, 6, "world", 1, 3, "", False)]
    mach.chunk(gen, ChunkEvent(finish_reason="stop"), 3.0)
    end = mach.completed(gen, 3.0, 3.0)[-1]
    mach.finished("g1")
    out = mach.control(m.ResumeGeneration("g1", 11, 3), 4.0)
    assert out[-1] is end and out[0].more is False and out[0].text == ""
    assert mach.control(m.ResumeGeneration("other", 0), 4.0) == [], "another generator's to answer"


def test_a_resume_from_before_a_continuation_began_is_an_error():
    mach = machine()
    gen = mach.take_job(job(seq_from=3, length_from=10), 0.0)
    mach.chunk(gen, ChunkEvent(text="more"), 1.0)
    out = mach.control(m.ResumeGeneration("g1", 4), 2.0)
    assert isinstance(out[-1], m.GenError) and "ends before this stream began" in out[-1].reason
    assert mach.control(m.ResumeGeneration("g1", 12), 2.0)[-1].text == "re"


def test_the_heartbeat_tells_capacity_and_what_the_server_said():
    mach = machine()
    mach.take_job(job("g1"), 0.0)
    mach.contexts, mach.server, mach.retries = {"m": 4096}, "vllm", 2
    [beat] = mach.tick(0.5)
    assert beat == m.GeneratorHeartbeat("gen-a", 3, 1, 2, 42, {"m": 4096}, "vllm")


def test_a_silent_coordinator_stops_every_stream():
    mach = machine(silent_s=5.0)
    a, b = mach.take_job(job("a"), 0.0), mach.take_job(job("b"), 0.0)
    assert kinds(mach.tick(4.0)) == ["GeneratorHeartbeat"]
    mach.control(m.CoordinatorHeartbeat(4.0, "c1"), 4.0)
    assert kinds(mach.tick(8.0)) == ["GeneratorHeartbeat"], "heard at 4: not silent yet"
    out = mach.tick(9.5)
    assert out[1] == Log("warning", "coordinator_silent", {"cancelling": 2})
    assert out[2:] == [Stop("a"), Stop("b")] and a.stopped and b.stopped


def test_ended_streams_are_kept_for_a_minute_and_at_most_their_number():
    mach = machine(silent_s=1e9)
    for i in range(3):
        gen = mach.take_job(job(f"g{i}"), 0.0)
        mach.chunk(gen, ChunkEvent(finish_reason="stop"), 0.0)
        mach.completed(gen, float(i), 0.0)
        mach.finished(f"g{i}")
    mach.tick(ENDED_KEPT_S + 0.5)
    assert list(mach.ended) == ["g1", "g2"]
    mach.tick(ENDED_KEPT_S + 2.5)
    assert list(mach.ended) == []
    mach.ended.update((f"x{i}", (None, None, 1e9)) for i in range(ENDED_KEPT_MAX + 5))
    mach.tick(1e9)
    assert len(mach.ended) == ENDED_KEPT_MAX and "x0" not in mach.ended


def test_a_catch_up_longer_than_a_frame_comes_in_parts_each_going_on():
    asked = m.ResumeGeneration("g", 5, 2)
    text, reasoning = "t" * (PIECE_CHARS + 3), "r" * (PIECE_CHARS + 1)
    parts = catch_up_parts(asked, 9, text, 4, reasoning, [{"id": "c"}])
    assert [p.more for p in parts] == [True, True, True, False]
    assert [(p.offset, p.reasoning_offset) for p in parts] == [
        (5, 2), (5, 2 + PIECE_CHARS), (5, 3 + PIECE_CHARS), (5 + PIECE_CHARS, 3 + PIECE_CHARS)]
    assert "".join(p.text for p in parts) == text and "".join(p.reasoning for p in parts) == reasoning
    assert parts[-1].tool_calls == [{"id": "c"}] and all(p.tool_calls is None for p in parts[:-1])
