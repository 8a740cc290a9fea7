"""A reply's second text, the thinking of a reasoning model, through every pure part that carries it: the
generator's reading of the three forms (``ThinkTags``, ``decode_chunk``, ``Generation``), the coordinator's
machine (its own seq and offsets, coalescing, checkpoints, finalize, cancel, liveness, stats, the next prompt),
the persist tracker, the persister's core, a client's view and the load test's verifier."""
from __future__ import annotations

from hypothesis import given, strategies as st

from protocol import messages as m
from protocol import answers
from clients.view import APPLIED, GAP, IGNORED, ReplyView
from services.coordinator.machine import ToClients, ToControl, ToGenerators, ToPersister
from services.generator.rules import Generation, ThinkTags
from services.generator.sse import ChunkEvent, decode_chunk
from services.persister.core import InsertChunks, PersisterCore, WriteFinal
from tests.unit.test_coordinator_machine import CLIENT, effects, make, reply, start
from tools.verify import StreamOutcome, verify_stream

# ---------------------------------------------------------------- the generator: ThinkTags


def split(mode: str, pieces: list[str]) -> tuple[str, str]:
    """(thinking, answer) that ``ThinkTags`` makes of content streamed as ``pieces``."""
    tags = ThinkTags(mode)
    out = [p for piece in pieces for p in tags.feed(piece)] + tags.end()
    assert all(text for _, text in out), "no empty piece is ever sent"
    return "".join(t for thinking, t in out if thinking), "".join(t for thinking, t in out if not thinking)


def every_chunking(text: str):
    """The text whole, and cut in two and in three at every pair of places."""
    yield [text]
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            yield [text[:i], text[i:j], text[j:]]


CASES = [  # mode, content, (thinking, answer)
    ("auto", "<think>let me see</think>The answer.", ("let me see", "The answer.")),
    ("auto", "\n <think>ws first</think>\n\nok", ("ws first", "\n\nok")),
    ("auto", "Here: <think>not at the start</think> stays", ("", "Here: <think>not at the start</think> stays")),
    ("auto", "<think>never closed", ("never closed", "")),
    ("auto", "<thi", ("", "<thi")),
    ("auto", "a < b </think>", ("", "a < b </think>")),
    ("auto", "<think></think>only an answer", ("", "only an answer")),
    ("auto", "<think>a</thin k></think>b", ("a</thin k>", "b")),
    ("on", "opened by the template</think>answer", ("opened by the template", "answer")),
    ("on", "<think>opened here</think>answer", ("opened here", "answer")),
    ("off", "<think>kept</think>answer", ("", "<think>kept</think>answer")),
]


def test_think_tags_split_every_case_the_same_however_the_content_is_cut():
    for mode, content, expected in CASES:
        for pieces in every_chunking(content):
            assert split(mode, pieces) == expected, (mode, pieces)


@given(st.text("ab<>/thinkx \n", max_size=30).filter(lambda t: "</think>" not in t),
       st.text("ab<>/thinkx \n", max_size=30), st.lists(st.integers(0, 80), max_size=6))
def test_any_leading_think_block_in_any_chunking_is_split_exactly(thought, answer, cuts):
    content = "<think>" + thought + "</think>" + answer
    bounds = sorted({min(c, len(content)) for c in cuts})
    pieces = [content[a:b] for a, b in zip([0, *bounds], [*bounds, len(content)])]
    assert split("auto", pieces) == (thought, answer)


def test_the_answer_passes_through_untouched_once_it_began():
    tags = ThinkTags("auto")
    assert tags.feed("Hello") == [(False, "Hello")]
    assert tags.feed(" <think>") == [(False, " <think>")]  # not at the start: part of the answer


# ---------------------------------------------------------------- the generator: chunks and numbering


def test_both_delta_fields_are_read_and_the_usage_tells_the_reasoning_tokens():
    for name in ("reasoning_content", "reasoning"):
        event = decode_chunk({"choices": [{"delta": {name: "hmm", "content": None}, "finish_reason": None}]})
        assert (event.reasoning, event.text) == ("hmm", "")
    event = decode_chunk({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9,
                                                    "completion_tokens_details": {"reasoning_tokens": 7}}})
    assert (event.completion_tokens, event.reasoning_tokens) == (9, 7)
    bad = decode_chunk({"choices": [], "usage": {"completion_tokens": 1, "completion_tokens_details": {
        "reasoning_tokens": "7"}}})
    assert bad.reasoning_tokens is None  # an ill-typed count is no count


def gen(mode: str = "auto") -> Generation:
    return Generation(m.Job("g", [{"role": "user", "content": "hi"}], "mock-1", {}, "h"), think_tags=ThinkTags(mode))


def test_each_text_is_numbered_by_its_own_seq_and_either_is_a_first_token():
    g = gen()
    assert g.emitted == 0
    assert g.take(ChunkEvent("", reasoning="a")) == [(True, 1, "a")]
    assert g.emitted == 1  # thinking ends the wait for a first token
    assert g.take(ChunkEvent("", reasoning="b\x00")) == [(True, 2, "b\ufffd")]
    assert g.take(ChunkEvent("x")) == [(False, 1, "x")]
    assert (g.seq, g.reasoning_seq, g.length, g.reasoning_length) == (1, 2, 1, 3)


def test_inline_thinking_is_split_out_and_a_held_tag_start_goes_out_at_the_end():
    g = gen()
    assert g.take(ChunkEvent("<think>deep")) == [(True, 1, "deep")]
    assert g.take(ChunkEvent(" </thi")) == [(True, 2, " ")]  # "</thi" may be the close tag: held
    assert g.take_held() == [(True, 3, "</thi")]  # the stream ended: it was thinking after all


def test_a_server_that_parses_thinking_out_has_its_content_taken_as_it_is():
    g = gen()
    assert g.take(ChunkEvent("  ")) == []  # whitespace at the start might precede <think>: held
    assert g.take(ChunkEvent("", reasoning="r")) == [(False, 1, "  "), (True, 1, "r")]
    assert g.take(ChunkEvent("<think>literal")) == [(False, 2, "<think>literal")]


def test_a_generation_lost_mid_thought_is_past_its_first_token():
    g = gen()
    g.take(ChunkEvent("", reasoning="r"))
    failure = g.lost_upstream("connection reset", False, "upstream", 60, 600)
    assert "after 0 characters" in str(failure) and type(failure).__name__ == "JobFailed"


# ---------------------------------------------------------------- the coordinator's machine


def think(machine, gen_id, seq, text, now):
    return machine.handle_event(m.GenDelta(gen_id, seq, text, 1, now, thinking=True), now)


def answer(machine, gen_id, seq, text, now):
    return machine.handle_event(m.GenDelta(gen_id, seq, text, 1, now), now)


def texts_sent(outs, kind, msg_type) -> tuple[str, str]:
    """(thinking, answer) a receiver applying ``msg_type`` by offset ends with; asserts every offset continues."""
    got = {True: "", False: ""}
    for out in outs:
        for e in effects(out, kind, msg_type):
            assert e.msg.offset == len(got[e.msg.thinking]), "offsets must continue exactly, per text"
            got[e.msg.thinking] += e.msg.text
    return got[True], got[False]


def test_thinking_and_answer_have_their_own_seq_offsets_and_checkpoints():
    machine = make(flush_ms=0, checkpoint_ms=0)
    _, r, _ = start(machine)
    g = r.generation_id
    outs = [think(machine, g, 1, "let ", 100.0), think(machine, g, 2, "me think", 100.1),
            think(machine, g, 2, "me think", 100.1),  # a duplicate
            answer(machine, g, 1, "Yes", 100.2), answer(machine, g, 2, ".", 100.3)]
    assert machine.counters["duplicate_deltas_dropped"] == 1
    assert texts_sent(outs, ToClients, m.StreamDelta) == ("let me think", "Yes.")
    assert texts_sent(outs, ToPersister, m.Append) == ("let me think", "Yes.")
    snap = reply(machine.handle_rpc(CLIENT, m.Snapshot(5, r.session_id), 100.3)).result
    assert (snap.reasoning, snap.text) == ("let me think", "Yes.")


def test_coalescing_flushes_both_texts_at_one_deadline():
    machine = make(flush_ms=50, checkpoint_ms=10_000)
    _, r, _ = start(machine)
    g = r.generation_id
    first = think(machine, g, 1, "a", 100.0)  # the first delta goes at once
    held = [think(machine, g, 2, "b", 100.01), answer(machine, g, 1, "X", 100.02)]
    assert texts_sent([first], ToClients, m.StreamDelta) == ("a", "")
    assert texts_sent(held, ToClients, m.StreamDelta) == ("", "")
    assert texts_sent([first, *held, machine.tick(100.06)], ToClients, m.StreamDelta) == ("ab", "X")


def test_a_gap_in_the_thinking_ends_the_reply_as_error_and_names_the_text():
    machine = make()
    _, r, _ = start(machine)
    think(machine, r.generation_id, 1, "a", 100.0)
    out = think(machine, r.generation_id, 3, "c", 100.1)
    assert effects(out, ToControl, m.CancelGeneration)
    final = effects(out, ToPersister, m.Finalize)[0].msg
    assert final.status == "error" and "expected thinking seq 2, got 3" in final.error
    assert final.reasoning_length == 1


def finish(machine, r, out_acks_now=101.0):
    """Ack the finalize the machine sent: returns the ``final`` event published to clients."""
    final = next(e.msg for e in machine.handle_event(m.GenDone(r.generation_id, 1, 3, "stop", 9, "server",
                                                                reasoning_last_seq=2, reasoning_length=5,
                                                                reasoning_tokens=6, reasoning_tokens_source="server"),
                                                      100.9) if isinstance(e, ToPersister)
                 and isinstance(e.msg, m.Finalize))
    out = machine.handle_event(m.PersistAck(final.message_id, final.length, True, final.reasoning_length), out_acks_now)
    return final, effects(out, ToClients, m.Final)[0].msg


def test_finalize_carries_both_lengths_and_the_thinking_stats():
    machine = make(flush_ms=0)
    _, r, _ = start(machine)
    g = r.generation_id
    think(machine, g, 1, "hm", 100.0)
    think(machine, g, 2, "m..", 100.5)
    answer(machine, g, 1, "Yes", 102.5)
    final_op, final = finish(machine, r)
    assert (final_op.length, final_op.reasoning_length) == (3, 5) == (final.length, final.reasoning_length)
    stats = final.stats
    assert stats["thinking_ms"] == 2500.0 and stats["ttft_ms"] == 0.0  # the first token was the thinking's
    assert (stats["reasoning_tokens"], stats["reasoning_tokens_source"], stats["tokens"]) == (6, "server", 9)
    record = machine.sessions[r.session_id].history[-1]
    assert (record.reasoning, record.content) == ("hmm..", "Yes")


def test_done_with_a_different_thinking_length_is_an_incomplete_stream():
    machine = make()
    _, r, _ = start(machine)
    think(machine, r.generation_id, 1, "abc", 100.0)
    out = machine.handle_event(m.GenDone(r.generation_id, 0, 0, "stop", 1, "server", reasoning_last_seq=1,
                                         reasoning_length=4), 100.1)
    final = effects(out, ToPersister, m.Finalize)[0].msg
    assert final.status == "error" and "thinking seq 1 (4 chars)" in final.error


def test_thinking_is_progress_for_the_stall_watchdog():
    machine = make(stall_ms=1000, housekeeping_ms=100)
    _, r, _ = start(machine)
    for i in range(1, 31):  # three seconds of thinking, a delta every 0.1 s
        think(machine, r.generation_id, i, "x", 100.0 + i / 10)
        assert not effects(machine.tick(100.0 + i / 10), ToPersister, m.Finalize)
    out = machine.tick(104.2)  # then silence, longer than the limit
    assert "stalled: no token" in effects(out, ToPersister, m.Finalize)[0].msg.error


def test_a_generator_lost_mid_thought_is_not_run_again():
    machine = make(generator_dead_ms=3000)
    _, r, _ = start(machine)
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 1, 1, 0), 100.0)
    think(machine, r.generation_id, 1, "x", 100.0)
    out = machine.tick(104.0)
    assert not effects(out, ToGenerators) and "generator lost" in effects(out, ToPersister, m.Finalize)[0].msg.error


def test_a_cancel_mid_thought_keeps_the_thinking_the_canceller_saw_and_no_answer():
    machine = make(flush_ms=0)
    _, r, _ = start(machine)
    think(machine, r.generation_id, 1, "I wonder", 100.0)
    think(machine, r.generation_id, 2, " whether", 100.1)
    out = machine.handle_rpc(CLIENT, m.Cancel(3, r.session_id, r.generation_id, 0, len("I wonder")), 100.2)
    final = effects(out, ToPersister, m.Finalize)[0].msg
    assert (final.status, final.length, final.reasoning_length) == ("cancelled", 0, len("I wonder"))
    record = machine.sessions[r.session_id].history[-1]
    assert (record.reasoning, record.content) == ("I wonder", "")
    assert final.stats["thinking_ms"] == 200.0 and final.stats["reasoning_tokens"] == 2  # recounted: two words


def complete(machine, sid, text, thought, reply_text, now):
    out = machine.handle_rpc(CLIENT, m.Send(now, sid, text, ""), now)
    r = reply(out).result
    machine.handle_event(m.GenStarted(r.generation_id, "gen-A"), now)
    think(machine, r.generation_id, 1, thought, now)
    answer(machine, r.generation_id, 1, reply_text, now)
    machine.handle_event(m.GenDone(r.generation_id, 1, len(reply_text), "stop", 2, "server", reasoning_last_seq=1,
                                   reasoning_length=len(thought)), now)
    return r


def test_the_next_prompt_leaves_earlier_thinking_out_unless_the_setting_keeps_it():
    thought = "carry the one"
    for setting, expected, left_out in (("drop", "Four.", 1), ("keep", f"<think>{thought}</think>Four.", 0)):
        machine = make(prompt_thinking=setting)
        sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 100.0)).result.session_id
        complete(machine, sid, "what is 2+2?", thought, "Four.", 101.0)
        out = machine.handle_rpc(CLIENT, m.Send(9, sid, "and 3+3?", ""), 102.0)
        job = effects(out, ToGenerators)[0].msg
        assert [msg["content"] for msg in job.messages if msg["role"] == "assistant"] == [expected]
        started = effects(out, ToClients, m.Started)[0].msg
        assert started.thinking_left_out == left_out and (thought in started.preview) == (setting == "keep")
        preview = reply(machine.handle_rpc(CLIENT, m.Preview(10, reply(out).result.message_id), 102.0)).result
        assert preview.thinking_left_out == left_out and preview.preview == started.preview


# ---------------------------------------------------------------- the persist tracker and the persister


def test_the_tracker_resends_each_text_from_its_own_acked_length():
    machine = make(flush_ms=0, checkpoint_ms=0, persist_resend_ms=1000)
    _, r, _ = start(machine)
    machine.handle_event(m.PersistAck(r.message_id, 0, False), 100.0)
    think(machine, r.generation_id, 1, "abc", 100.0)
    answer(machine, r.generation_id, 1, "XY", 100.0)
    machine.handle_event(m.PersistAck(r.message_id, 0, False, 2), 100.1)  # "c" and "XY" are lost
    out = machine.tick(101.5)
    assert [(e.msg.thinking, e.msg.offset, e.msg.text) for e in effects(out, ToPersister, m.Append)] == [
        (True, 2, "c"), (False, 0, "XY")]


def test_the_persister_keeps_each_text_by_its_own_offsets_and_acks_both():
    p = PersisterCore()
    p.load([], {}, [None, None])
    p.plan([m.CreateMessage("a1", "s1", "t", None, "assistant", "", "streaming", 1.0, "g1")])
    plan = p.plan([m.Append("a1", 0, "thin", True), m.Append("a1", 2, "inking", True), m.Append("a1", 0, "ans")])
    assert plan.acks == {"a1": (3, False, 8)}
    rows = [row for w in plan.writes if isinstance(w, InsertChunks) for row in w.rows]
    assert rows == [(1, "a1", 0, "thin", True), (2, "a1", 4, "king", True), (3, "a1", 0, "ans", False)]
    waiting = p.plan([m.Finalize("a1", "completed", 3, "h", {}, None, 9)])  # a thinking append is missing
    assert waiting.acks == {"a1": (3, False, 8)} and waiting.writes == []
    cut = p.plan([m.Finalize("a1", "cancelled", 2, "h", {}, None, 5)])
    assert [w for w in cut.writes if isinstance(w, WriteFinal)] == [
        WriteFinal("a1", "cancelled", "an", {}, None, "h", "think")]
    assert cut.acks == {"a1": (2, True, 5)}


def test_a_restarted_persister_reads_both_texts_back():
    p = PersisterCore()
    p.load(["a1"], {"a1": (7, ["an"], ["th", "ink"])}, [(7, 8), None])
    plan = p.plan([m.Append("a1", 0, "think!", True)])
    assert plan.acks == {"a1": (2, False, 6)}


# ---------------------------------------------------------------- a client's view, and the load test's verifier


def sd(offset, text, thinking=False):
    return m.StreamDelta("s", "g", offset, text, 1, 0.0, thinking)


def test_a_view_applies_each_text_by_its_own_offsets():
    view = ReplyView("g")
    assert view.apply(sd(0, "th", True)) == APPLIED and view.apply(sd(0, "A")) == APPLIED
    assert view.apply(sd(0, "th", True)) == IGNORED and view.apply(sd(5, "x", True)) == GAP
    assert (view.take_new_thinking(), view.take_new_text()) == ("th", "A")
    assert view.apply(m.Final("s", "g", "m", "completed", 1, "h", {}, None, 4)) == GAP  # thinking is missing
    view.apply_snapshot(answers.Snapshot(generation_id="g", message_id="m", status="completed", text="A",
                                         final=True, stats={}, reasoning="thin"))
    assert (view.reasoning, view.text, view.take_new_thinking()) == ("thin", "A", "in")
    assert view.cancel() == (1, 4)


def test_the_verifier_catches_wrong_thinking():
    good = StreamOutcome("completed", "A", False, None, "completed", "A", reasoning="T", db_reasoning="T")
    assert verify_stream(good, "A", "T") == []
    wrong = StreamOutcome("completed", "A", False, None, "completed", "A", reasoning="t", db_reasoning="t")
    assert any("thinking differs" in p for p in verify_stream(wrong, "A", "T"))
    lost = StreamOutcome("completed", "A", False, None, "completed", "A", reasoning="T", db_reasoning="")
    assert any("database thinking" in p for p in verify_stream(lost, "A", "T"))
    mid = StreamOutcome("cancelled", "", True, "", "cancelled", "", reasoning="Th", db_reasoning="Th")
    assert verify_stream(mid, "A", "Thought") == []
    off = StreamOutcome("cancelled", "", True, "", "cancelled", "", reasoning="Tx", db_reasoning="Tx")
    assert any("not a prefix" in p for p in verify_stream(off, "A", "Thought"))
