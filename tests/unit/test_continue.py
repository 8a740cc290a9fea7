"""Continuing a reply: the coordinator's rules (a fault after the first token continues the same generation,
``chatter continue`` extends the same message), the continuation prompt, the generator's prefill strip and the
persister's reopen. Plain values: no sockets, no clock, no database."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from protocol import messages as m
from services.coordinator.prompt import PromptTooLarge, assemble, continuation, original_of, prompt_hash, rebuild
from services.generator.rules import Generation, PrefillStrip
from services.persister.core import PersisterCore, ReopenRow
from services.mock_llm.script import continued_prefix, continued_tokens, reply_text, reply_tokens
from services.generator.sse import ChunkEvent
from tests.unit.test_coordinator_machine import (CLIENT, ack_all, client_text, delta, effects, make, persisted_text,
                                                 reply, start, words)
from services.coordinator.machine import Log, ToClients, ToControl, ToGenerators, ToPersister


def streaming(machine, text="hi", now=100.0, chunks=("Hello", " wor")):
    """A reply with answer text from generator gen-A; returns (session id, generation id, outs)."""
    sid, result, out = start(machine, text, now)
    gid = result.generation_id
    outs = [out]
    for seq, chunk in enumerate(chunks, 1):
        outs.append(delta(machine, gid, seq, chunk, now + seq / 10))
    return sid, gid, outs


def heartbeat(machine, now, generator="gen-A", server="vllm"):
    return machine.handle_event(m.GeneratorHeartbeat(generator, 4, 1, 0, 1, None, server), now)


def job_of(out) -> m.Job:
    (job,) = effects(out, ToGenerators)
    return job.msg


# ---------------------------------------------------------------- a fault after the first token


def test_an_upstream_failure_after_the_first_token_continues_the_same_generation():
    machine = make(continue_style="vllm")
    sid, gid, outs = streaming(machine)
    out = machine.handle_event(m.GenError(gid, 2, "upstream disconnected after 9 characters", 1), 101.0)
    job = job_of(out)
    assert job.generation_id == f"{gid}~1"
    assert job.messages[-1] == {"role": "assistant", "content": "Hello wor"}
    assert job.messages[:-1] == [{"role": "user", "content": "hi"}]
    assert job.params == {"continue_final_message": True, "add_generation_prompt": False}
    assert (job.seq_from, job.length_from, job.think_tags, job.strip_prefix) == (2, 9, "off", "")
    assert job.prompt_hash == prompt_hash(job.messages, job.model, job.params)  # the hash is of what is sent
    assert not effects(out, ToClients, m.Final) and not effects(out, ToPersister, m.Finalize)
    outs.append(out)
    # the old run is over: its events are late; the new run's continue the offsets and seqs
    late = machine.handle_event(m.GenDelta(gid, 3, "XX", 1, 101.1), 101.1)
    assert effects(late, ToControl, m.CancelGeneration)[0].msg.generation_id == gid
    assert machine.counters["late_deltas_dropped"] == 1
    outs.append(machine.handle_event(m.GenStarted(job.generation_id, "gen-B"), 101.2))
    outs.append(delta(machine, job.generation_id, 3, "ld", 101.3))
    done = machine.handle_event(m.GenDone(job.generation_id, 3, 11, "stop", 1, "server"), 101.4)
    outs.append(done)
    assert client_text(outs) == "Hello world" and persisted_text(outs) == "Hello world"
    (final,) = effects(done, ToPersister, m.Finalize)
    assert final.msg.status == "completed" and final.msg.length == 11
    # the row takes the last segment's prompt by reference: built again from the session, it is the job's
    assert final.msg.prompt.prompt_hash == job.prompt_hash and final.msg.prompt.prompt_messages is None
    assert final.msg.prompt.prompt_ref["tail"] == {"id": final.msg.message_id, "length": 9, "style": "vllm"}
    sess = machine.sessions[sid]
    assert rebuild(sess.history, sess.record(final.msg.message_id)) == (job.messages, [], None)
    stats = final.msg.stats
    assert stats["continued"] == 1 and stats["continued_after"] == ["upstream disconnected after 9 characters"]
    assert [seg["from"] for seg in stats["segments"]] == [0, 9]
    assert stats["segments"][1]["tokens_source"] == "server" and stats["tokens_source"] == "estimated"
    assert stats["tokens"] == sum(seg["tokens"] for seg in stats["segments"])
    assert machine.counters["generations_continued"] == 1


def test_a_lost_generator_continues_elsewhere_and_the_limit_then_ends_it_as_error():
    machine = make(continue_style="prefill", auto_continue=2)
    heartbeat(machine, 100.0, "gen-A")
    sid, gid, outs = streaming(machine)
    out = machine.tick(104.0)  # gen-A missed its heartbeats
    job = job_of(out)
    assert job.generation_id == f"{gid}~1" and job.strip_prefix == "Hello wor" and job.params == {}
    assert job.messages[-1] == {"role": "assistant", "content": "Hello wor"}
    machine.handle_event(m.GenStarted(job.generation_id, "gen-B"), 104.1)
    delta(machine, job.generation_id, 3, "l", 104.2)
    out = machine.handle_event(m.GenError(job.generation_id, 3, "truncated", 1), 104.3)
    job2 = job_of(out)
    assert job2.generation_id == f"{gid}~2" and job2.messages[-1]["content"] == "Hello worl"
    assert len(job2.messages) == 2  # a continuation of the prompt the reply answered, not of a continuation
    machine.handle_event(m.GenStarted(job2.generation_id, "gen-B"), 104.4)
    delta(machine, job2.generation_id, 4, "d", 104.5)
    out = machine.handle_event(m.GenError(job2.generation_id, 4, "truncated again", 1), 104.6)
    assert not effects(out, ToGenerators)
    (final,) = effects(out, ToPersister, m.Finalize)
    assert final.msg.status == "error" and final.msg.error == "truncated again" and final.msg.length == 11


def test_a_continuation_run_that_emitted_nothing_runs_again_as_the_same_run():
    machine = make(continue_style="vllm")
    heartbeat(machine, 100.0, "gen-A")
    sid, gid, _ = streaming(machine)
    job = job_of(machine.handle_event(m.GenError(gid, 2, "disconnected", 1), 100.5))
    heartbeat(machine, 100.6, "gen-B")
    machine.handle_event(m.GenStarted(job.generation_id, "gen-B"), 100.7)
    heartbeat(machine, 103.0, "gen-A")
    out = machine.tick(104.0)  # gen-B is lost before its run's first token
    again = job_of(out)
    assert again == job and not effects(out, ToPersister, m.Finalize)


def test_a_stall_after_the_first_token_cancels_the_run_and_continues():
    machine = make(continue_style="vllm", stall_ms=1000)
    sid, gid, _ = streaming(machine)
    out = machine.tick(103.0)
    assert [c.msg.generation_id for c in effects(out, ToControl, m.CancelGeneration)] == [gid]
    assert job_of(out).generation_id == f"{gid}~1"


@pytest.mark.parametrize("setup", ["style none", "auto without a server", "thinking only", "limit 0", "budget"])
def test_where_a_reply_cannot_be_continued_a_fault_still_ends_it_as_error(setup):
    machine = make(**{"style none": {"continue_style": "none"}, "auto without a server": {},
                      "thinking only": {"continue_style": "vllm"}, "limit 0": {"continue_style": "vllm",
                                                                              "auto_continue": 0},
                      "budget": {"continue_style": "vllm", "max_input_tokens": 12}}[setup])
    heartbeat(machine, 100.0, "gen-A", server="")
    sid, result, _ = start(machine, "one two three")
    gid = result.generation_id
    if setup == "thinking only":
        machine.handle_event(m.GenDelta(gid, 1, "hmm", 1, 100.1, True), 100.1)
    else:
        delta(machine, gid, 1, "four five six seven eight", 100.1)
    out = machine.handle_event(m.GenError(gid, 1, "upstream disconnected", 1), 100.2)
    assert not effects(out, ToGenerators)
    assert effects(out, ToPersister, m.Finalize)[0].msg.status == "error"
    # the log says why it ended instead of going on
    (log,) = [e for e in out if isinstance(e, Log) and e.event == "generation_not_continued"]
    why = {"style none": "continue style none: CHATTER_CONTINUE_STYLE",
           "auto without a server": "continue style none: auto: the server does not say what it is",
           "thinking only": "no answer text yet", "limit 0": "continued 0 times already (CHATTER_AUTO_CONTINUE=0)",
           "budget": "the input budget is 12"}[setup]
    assert why in log.fields["why"] and log.fields["after"] == "upstream disconnected"


def test_auto_follows_what_the_generators_servers_say_they_are():
    machine = make()
    assert machine.generators.continue_style(None)[0] == "none"
    heartbeat(machine, 100.0, "gen-A", "vllm")
    assert machine.generators.continue_style(None) == ("vllm", "auto: the server says it is 'vllm' (/v1/models owned_by)")
    heartbeat(machine, 100.0, "gen-A", "llamacpp")
    assert machine.generators.continue_style(None)[0] == "prefill"
    heartbeat(machine, 100.0, "gen-B", "openai")
    style, why = machine.generators.continue_style(None)
    assert style == "none" and "differ" in why
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 100.0)).result.session_id
    settings = reply(machine.handle_rpc(CLIENT, m.ConfigureSession(2, sid, params={"continue_style": "prefix"}),
                                        100.0)).result
    assert settings.continue_style == "prefix"
    status = reply(machine.handle_rpc(CLIENT, m.Status(3, sid), 100.0)).result
    assert (status.continue_style, status.continue_style_why) == ("prefix", "this session's setting "
                                                                  "(/config continue_style)")
    refused = reply(machine.handle_rpc(CLIENT, m.ConfigureSession(4, sid, params={"continue_style": "fake"}), 100.0))
    assert not refused.ok and "continue_style" in refused.error


# ---------------------------------------------------------------- chatter continue


def cut_by_length(machine, text="hello", chunks=("One,", " two,")):
    sid, gid, outs = streaming(machine, text, chunks=chunks)
    length = sum(map(len, chunks))
    outs.append(machine.handle_event(m.GenDone(gid, len(chunks), length, "length", 2, "server"), 100.5))
    outs.append(ack_all(machine, outs, 100.6))
    outs.append(ack_all(machine, outs[-2:], 100.6))
    return sid, gid, outs


def test_continue_extends_the_same_message_from_its_length():
    machine = make(continue_style="prefix")
    sid, gid, outs = cut_by_length(machine)
    out = machine.handle_rpc(CLIENT, m.Continue(5, sid, "cont-1"), 101.0)
    result = reply(out).result
    (reopen,) = effects(out, ToPersister, m.Reopen)
    assert result.generation_id != gid and result.message_id == reopen.msg.message_id
    # the texts are the row's: named by their lengths, read by the persister (a long reply would not fit a frame)
    assert (reopen.msg.content, reopen.msg.length, reopen.msg.reasoning_length) == ("", 9, 0)
    assert reopen.msg.generation_id == result.generation_id
    job = job_of(out)
    assert job.messages[-1] == {"role": "assistant", "content": "One, two,", "prefix": True}
    assert (job.seq_from, job.length_from) == (0, 9) and job.params == {}
    assert reopen.msg.prompt.prompt_hash == job.prompt_hash == result.prompt_hash
    (started,) = effects(out, ToClients, m.Started)
    assert started.msg.message_id == reopen.msg.message_id
    assert "[assistant, prefix: true, to be continued]\nOne, two," in started.msg.preview
    # the same request id makes one continuation
    again = reply(machine.handle_rpc(CLIENT, m.Continue(6, sid, "cont-1"), 101.1)).result
    assert again.generation_id == result.generation_id
    # the continuation streams on from offset 9
    new = result.generation_id
    ack = machine.handle_event(m.PersistAck(reopen.msg.message_id, 9, False), 101.2)
    assert not ack
    machine.handle_event(m.GenStarted(new, "gen-A"), 101.2)
    d = delta(machine, new, 1, " three.", 101.3)
    (sd,) = effects(d, ToClients, m.StreamDelta)
    assert (sd.msg.offset, sd.msg.text) == (9, " three.")
    (ap,) = effects(d, ToPersister, m.Append)
    assert ap.msg.offset == 9
    done = machine.handle_event(m.GenDone(new, 1, 16, "stop", 2, "server"), 101.4)
    (final,) = effects(done, ToPersister, m.Finalize)
    assert final.msg.length == 16 and final.msg.status == "completed" and final.msg.prompt is None
    stats = final.msg.stats
    assert [seg["from"] for seg in stats["segments"]] == [0, 9] and stats["tokens"] == 4
    assert stats["segments"][0]["ended"] == "length" and stats["continued"] == 1
    snap = reply(machine.handle_rpc(CLIENT, m.Snapshot(7, sid), 101.5)).result
    assert snap.text == "One, two, three."


def test_continue_refusals_say_why():
    machine = make(continue_style="vllm")
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 100.0)).result.session_id
    assert "no reply yet" in reply(machine.handle_rpc(CLIENT, m.Continue(2, sid, "c"), 100.0)).error
    # a completed reply
    machine.handle_rpc(CLIENT, m.Send(3, sid, "hi", ""), 100.0)
    gid = machine.sessions[sid].active_generation
    machine.handle_event(m.GenStarted(gid, "gen-A"), 100.0)
    delta(machine, gid, 1, "done", 100.1)
    machine.handle_event(m.GenDone(gid, 1, 4, "stop", 1, "server"), 100.2)
    refused = reply(machine.handle_rpc(CLIENT, m.Continue(4, sid, "c"), 100.3))
    assert not refused.ok and "is completed" in refused.error
    # a stopped reply, before its end is saved
    machine.handle_rpc(CLIENT, m.Send(5, sid, "again", ""), 101.0)
    gid = machine.sessions[sid].active_generation
    machine.handle_event(m.GenStarted(gid, "gen-A"), 101.0)
    outs = [delta(machine, gid, 1, "stopped here", 101.1), machine.handle_rpc(CLIENT, m.Cancel(6, sid), 101.2)]
    refused = reply(machine.handle_rpc(CLIENT, m.Continue(7, sid, "c"), 101.3))
    assert not refused.ok and "still being saved" in refused.error
    for _ in range(3):
        outs.append(ack_all(machine, outs, 101.4))
    assert reply(machine.handle_rpc(CLIENT, m.Continue(8, sid, "c"), 101.5)).ok
    # none
    none = make(continue_style="none")
    sid2, _, _ = cut_by_length(none)
    refused = reply(none.handle_rpc(CLIENT, m.Continue(6, sid2, "c"), 101.0))
    assert not refused.ok and "CHATTER_CONTINUE_STYLE" in refused.error
    # streaming
    live = make(continue_style="vllm")
    sid3, _, _ = streaming(live)
    assert "streaming" in reply(live.handle_rpc(CLIENT, m.Continue(7, sid3, "c"), 101.0)).error


def test_a_continued_reopen_is_not_applied_by_an_old_finalized_ack():
    machine = make(continue_style="vllm")
    sid, gid, outs = cut_by_length(machine)
    out = machine.handle_rpc(CLIENT, m.Continue(5, sid, "c"), 101.0)
    (reopen,) = effects(out, ToPersister, m.Reopen)
    machine.handle_event(m.PersistAck(reopen.msg.message_id, 9, True), 101.1)  # a late one of the old segment
    resent = machine.tick(104.0)
    assert effects(resent, ToPersister, m.Reopen)
    machine.handle_event(m.PersistAck(reopen.msg.message_id, 9, False), 104.1)
    assert not effects(machine.tick(108.0), ToPersister, m.Reopen)


# ---------------------------------------------------------------- the prompt, the strip, the persister, the mock


def test_the_continuation_prompt_is_the_request_and_counts_the_partial_reply():
    base = assemble(None, [], "count to five", "m", {"temperature": 0.5}, words, 100)
    cont = continuation(base, "one two", "vllm", words)
    assert cont.wire_messages()[-1] == {"role": "assistant", "content": "one two"}
    assert cont.wire_params() == {"temperature": 0.5, "continue_final_message": True, "add_generation_prompt": False}
    assert cont.prompt_hash == prompt_hash(cont.wire_messages(), "m", cont.wire_params())
    assert cont.prompt_tokens == base.prompt_tokens + 2 + 3
    assert "[request: continue_final_message: true, add_generation_prompt: false]" in cont.preview
    back = original_of(cont, words)
    assert (back.prompt_hash, back.prompt_tokens, back.messages) == (base.prompt_hash, base.prompt_tokens,
                                                                      base.messages)
    with pytest.raises(PromptTooLarge):
        continuation(base, "word " * 100, "prefill", words)
    with pytest.raises(ValueError):
        continuation(base, "x", "none", words)


@pytest.mark.parametrize("chunks, expected", [
    (["One, two, six", ", seven"], " six, seven"),  # the prefill repeated in one chunk with new text
    (["One,", " two,", " six"], " six"),  # repeated over several chunks
    (["One, two,"], ""),  # only the repeat
    ([" six", " One, two,"], " six One, two,"),  # not where the stream begins: kept
    (["One, t", "hree"], "One, three"),  # diverges inside: all of it is the model's
])
def test_a_repeated_prefill_is_stripped_once_and_only_at_the_start(chunks, expected):
    job = m.Job("g", [], "m", {}, "h", None, seq_from=2, length_from=9, strip_prefix="One, two,", think_tags="off")
    gen = Generation.of(job, "auto")
    sent = []
    for chunk in chunks:
        sent += gen.take(ChunkEvent(chunk, None, None, None, None, None))
    sent += gen.take_held()
    assert "".join(text for _, _, text in sent) == expected
    assert [seq for _, seq, _ in sent] == list(range(3, 3 + len(sent)))
    assert gen.length == 9 + len(expected) and gen.text_from(9, False) == expected and gen.text_from(3, False) is None


@given(st.text(min_size=1, max_size=12), st.text(max_size=12), st.integers(1, 6))
def test_the_strip_gives_the_same_text_in_any_chunking(prefix, rest, size):
    whole = prefix + rest
    strip = PrefillStrip(prefix)
    out = "".join(strip.feed(whole[i:i + size]) for i in range(0, len(whole), size)) + strip.end()
    assert out == rest


def test_the_persister_reopens_a_final_reply_from_its_stored_texts():
    core = PersisterCore()
    core.load([], {}, [None, None])
    create = m.CreateMessage("msg", "s", "t", None, "assistant", "", "streaming", 1.0, generation_id="g1")
    core.plan([create, m.Append("msg", 0, "One, two,"), m.Finalize("msg", "completed", 9, "h", {}, None)])
    prompt = m.ContinuedPrompt([{"role": "assistant", "content": "One, two,"}], "h2", "p")
    wrong = core.plan([m.Reopen("msg", "g2", "One,", "", prompt)])
    assert wrong.answers and isinstance(wrong.answers[0], m.PersistRejected) and not wrong.acks
    plan = core.plan([m.Reopen("msg", "g2", "One, two,", "", prompt), m.Append("msg", 9, " three.")])
    assert isinstance(plan.writes[0], ReopenRow)
    assert plan.acks["msg"] == (16, False, 0)
    assert core.open["msg"].text(False) == "One, two, three."
    assert core.plan([m.Reopen("msg", "g2", "One, two,", "", prompt)]).acks["msg"] == (16, False, 0)  # a resend


def test_the_mock_continues_its_own_reply_in_each_style():
    messages = [{"role": "user", "content": "count"}]
    whole = reply_text(messages, "m", 20)
    cut = whole[:len(whole) // 2 + 1]  # inside a token, as a cancel leaves it
    trailing = [*messages, {"role": "assistant", "content": cut}]
    assert "".join(continued_tokens(trailing, "m", 20, cut)) == whole[len(cut):]
    vllm = {"messages": trailing, "continue_final_message": True, "add_generation_prompt": False}
    prefix = {"messages": [*messages, {"role": "assistant", "content": cut, "prefix": True}]}
    plain = {"messages": trailing}
    assert continued_prefix(vllm, "vllm") == cut and continued_prefix(prefix, "deepseek") == cut
    assert continued_prefix(plain, "llamacpp") == cut
    assert continued_prefix(plain, "vllm") is None and continued_prefix(vllm, "openai") is None
    assert continued_prefix(prefix, "vllm") is None and continued_prefix(vllm, "chatter") == cut
    edited = [*messages, {"role": "assistant", "content": "not the mock's"}]
    # an edited text is continued anyway, as the reply to the whole request (trailing message included)
    assert continued_tokens(edited, "m", 5, "not the mock's") == reply_tokens(edited, "m", 5)
    assert continued_tokens(edited, "m", 5, "not the mock's") != reply_tokens(messages, "m", 5)
