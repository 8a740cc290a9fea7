"""A restarted coordinator adopts the replies in flight (``services/coordinator/adoption.py``), driven with plain
values: the window after start, announcements, the rebuild from the stored row, the catch-up, and the sweep that
waits for them."""
from __future__ import annotations

from protocol import messages as m
from protocol.conversation import MessageRecord
from services.coordinator.machine import LoadSessionOfGeneration, ToClients, ToControl, ToPersister
from tests.unit.test_coordinator_machine import CLIENT, effects, make, reply

GRACE_MS = 3000


def stored_session(content: str = "Hello, wor", reasoning: str = "", status: str = "streaming") -> dict:
    """A session as the shell reads it from the database: a user turn and a reply streaming (or ended)."""
    user = MessageRecord(message_id="u1", session_id="s1", role="user", content="hi", status="completed",
                         created_at=10.0)
    reply_record = MessageRecord(message_id="a1", session_id="s1", role="assistant", content=content,
                                 reasoning=reasoning, status=status, created_at=10.0, generation_id="g1",
                                 prompt_hash="h", model="mock-1", preview="[user]\nhi\n\n",
                                 prompt_messages=[{"role": "user", "content": "hi"}], params={"temperature": 0.5})
    return {"session_id": "s1", "title": "hi", "system": None, "max_input_tokens": None, "created_at": 10.0,
            "updated_at": 10.0, "messages": [user, reply_record]}


def announce(machine, now, seq=5, length=14, ended=False):
    live = m.LiveGeneration("g1", seq, length, 0, 0, ended)
    return machine.handle_event(m.GenAnnounce("gen-A", [live]), now)


def adopted(machine, now=100.0, **stored):
    machine.tick(now)  # the window opens at the first tick
    out = announce(machine, now)
    assert [e.generation_id for e in out if isinstance(e, LoadSessionOfGeneration)] == ["g1"]
    return machine.adopt("g1", stored_session(**stored), now + 0.1)


def test_an_announced_generation_is_rebuilt_from_its_row_and_asked_for_the_rest():
    machine = make(adopt_grace_ms=GRACE_MS, flush_ms=0, checkpoint_ms=0)
    out = adopted(machine)
    (resume,) = effects(out, ToControl, m.ResumeGeneration)
    assert (resume.msg.generation_id, resume.msg.offset, resume.msg.reasoning_offset) == ("g1", 10, 0)
    gen = machine.active["g1"]
    assert gen.stream.catching_up and gen.text() == "Hello, wor" and gen.prompt.wire_params() == {"temperature": 0.5}
    assert machine.sessions["s1"].active_generation == "g1"
    # deltas and an end that arrive before the catch-up are dropped: the generator resends them after it
    assert machine.handle_event(m.GenDelta("g1", 6, "x", 1, 100.2), 100.2) == []
    assert machine.handle_event(m.GenDone("g1", 6, 15, "stop", 3, "server"), 100.2) == []
    caught = machine.handle_event(m.GenCatchUp("g1", 5, 10, "ld! Bye", 0, 0, ""), 100.3)
    assert [(e.msg.offset, e.msg.text) for e in effects(caught, ToClients, m.StreamDelta)] == [(10, "ld! Bye")]
    assert [(e.msg.offset, e.msg.text) for e in effects(caught, ToPersister, m.Append)] == [(10, "ld! Bye")]
    more = machine.handle_event(m.GenDelta("g1", 6, ".", 1, 100.4), 100.4)  # the seq goes on from the catch-up's
    assert effects(more, ToClients, m.StreamDelta)[0].msg.offset == 17
    done = machine.handle_event(m.GenDone("g1", 6, 18, "stop", 3, "server"), 100.5)
    final = effects(done, ToPersister, m.Finalize)[0].msg
    assert (final.status, final.length) == ("completed", 18)
    assert final.stats["adopted"] is True and final.stats["ttft_ms"] is None  # not measured across the restart
    assert machine.counters["generations_adopted"] == 1


def test_the_catch_up_may_overlap_what_is_stored_but_never_leave_a_gap():
    machine = make(adopt_grace_ms=GRACE_MS, flush_ms=0)
    adopted(machine)
    out = machine.handle_event(m.GenCatchUp("g1", 5, 12, "rld", 0, 0, ""), 100.3)  # starts past what is stored
    assert effects(out, ToPersister, m.Finalize)[0].msg.status == "error"
    machine = make(adopt_grace_ms=GRACE_MS, flush_ms=0)
    adopted(machine)
    out = machine.handle_event(m.GenCatchUp("g1", 5, 7, "world", 0, 0, ""), 100.3)  # overlaps it: the fresh part
    assert [e.msg.text for e in effects(out, ToClients, m.StreamDelta)] == ["ld"]


def test_both_texts_are_caught_up_from_their_own_durable_offsets():
    machine = make(adopt_grace_ms=GRACE_MS, flush_ms=0)
    out = adopted(machine, content="", reasoning="Let me")
    assert effects(out, ToControl, m.ResumeGeneration)[0].msg.reasoning_offset == 6
    caught = machine.handle_event(m.GenCatchUp("g1", 1, 0, "Yes", 3, 6, " think"), 100.3)
    sent = [(e.msg.thinking, e.msg.offset, e.msg.text) for e in effects(caught, ToClients, m.StreamDelta)]
    assert sent == [(True, 6, " think"), (False, 0, "Yes")]
    assert machine.active["g1"].thinking.last_seq == 3


def test_during_the_window_unknown_deltas_are_dropped_without_a_cancel_and_after_it_they_are_late():
    machine = make(adopt_grace_ms=GRACE_MS)
    machine.tick(100.0)
    assert machine.handle_event(m.GenDelta("gx", 9, "x", 1, 100.5), 100.5) == []
    assert machine.counters["deltas_before_adoption"] == 1
    machine.tick(103.5)  # the window has closed
    out = machine.handle_event(m.GenDelta("gx", 10, "x", 1, 103.6), 103.6)
    assert effects(out, ToControl, m.CancelGeneration) and machine.counters["late_deltas_dropped"] == 1
    late = announce(machine, 103.7)  # an announcement after the window: it was swept, so it must stop
    assert effects(late, ToControl, m.CancelGeneration) and not machine.adoption.adoptions


def test_the_sweep_waits_for_the_window_and_for_every_adoption_and_spares_the_adopted():
    machine = make(adopt_grace_ms=GRACE_MS)
    assert not effects(machine.tick(100.0), ToPersister, m.InterruptOrphans)
    announce(machine, 100.5)
    assert not effects(machine.tick(103.5), ToPersister, m.InterruptOrphans)  # the window closed; one adoption pending
    machine.adopt("g1", stored_session(), 103.6)
    (sweep,) = effects(machine.tick(104.0), ToPersister, m.InterruptOrphans)
    assert sweep.msg.live_message_ids == ["a1"]


def test_a_generation_whose_row_already_ended_is_not_adopted():
    machine = make(adopt_grace_ms=GRACE_MS)
    machine.tick(100.0)
    announce(machine, 100.0)
    out = machine.adopt("g1", stored_session(status="completed"), 100.1)
    assert "g1" not in machine.active and effects(out, ToControl, m.CancelGeneration)
    announce_ended = make(adopt_grace_ms=GRACE_MS)
    announce_ended.tick(100.0)
    announce(announce_ended, 100.0, ended=True)
    out = announce_ended.adopt("g1", stored_session(status="completed"), 100.1)
    assert not effects(out, ToControl, m.CancelGeneration)  # its stream ended: nothing to stop
    nothing = make(adopt_grace_ms=GRACE_MS)
    nothing.tick(100.0)
    announce(nothing, 100.0)
    assert effects(nothing.adopt("g1", None, 100.1), ToControl, m.CancelGeneration)  # never stored


def test_a_session_read_in_the_window_holds_its_streaming_reply_until_adopted_or_swept():
    machine = make(adopt_grace_ms=GRACE_MS)
    machine.tick(100.0)
    machine.load_session(stored_session())
    snap = reply(machine.handle_rpc(CLIENT, m.Snapshot(1, "s1"), 100.5)).result
    assert (snap.status, snap.final, snap.text) == ("streaming", False, "Hello, wor")  # a client keeps waiting
    refused = reply(machine.handle_rpc(CLIENT, m.Send(2, "s1", "again", "r2"), 100.5))
    assert not refused.ok and "already streaming" in refused.error
    machine.tick(103.5)  # nobody announced it: its generator died too
    snap = reply(machine.handle_rpc(CLIENT, m.Snapshot(3, "s1"), 103.6)).result
    assert (snap.status, snap.final) == ("interrupted", True)
    assert reply(machine.handle_rpc(CLIENT, m.Send(4, "s1", "again", "r3"), 103.6)).ok


def test_a_coordinator_that_finds_nothing_to_adopt_sweeps_after_its_window():
    machine = make(adopt_grace_ms=GRACE_MS)
    assert not effects(machine.tick(100.0), ToPersister, m.InterruptOrphans)
    (sweep,) = effects(machine.tick(103.1), ToPersister, m.InterruptOrphans)
    assert sweep.msg.live_message_ids == [] and sweep.msg.reason == "coordinator restarted"


def test_heartbeats_name_the_instance_so_generators_can_tell_a_restart():
    from services.coordinator.machine import Coordinator, Settings
    from tests.unit.test_coordinator_machine import words
    first, second = Coordinator(Settings(), words), Coordinator(Settings(), words)  # their own random ids
    beat = effects(first.tick(100.0), ToControl, m.CoordinatorHeartbeat)[0].msg
    assert beat.instance and beat.instance == effects(first.tick(101.5), ToControl, m.CoordinatorHeartbeat)[0].msg.instance
    assert effects(second.tick(100.0), ToControl, m.CoordinatorHeartbeat)[0].msg.instance != beat.instance


def test_a_streaming_reply_without_text_that_nobody_announced_is_queued_again_at_the_windows_end():
    """Its job died with the old coordinator (or in a generator's queue): running it now duplicates nothing."""
    from services.coordinator.machine import ToGenerators
    machine = make(adopt_grace_ms=GRACE_MS)
    machine.tick(100.0)
    machine.load_session(stored_session(content=""))
    out = machine.tick(103.5)
    (job,) = effects(out, ToGenerators)
    assert job.msg.generation_id == "g1" and job.msg.params == {"temperature": 0.5} and job.msg.prompt_hash == "h"
    assert machine.active["g1"].status == "queued" and machine.counters["generations_requeued"] == 1
    (sweep,) = effects(out, ToPersister, m.InterruptOrphans)
    assert sweep.msg.live_message_ids == ["a1"]  # not swept: it is live again


def test_a_job_no_generator_took_although_all_had_room_is_sent_again():
    from services.coordinator.machine import ToGenerators
    machine = make(housekeeping_ms=100)
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 0, 4, 0), 100.0)  # full: a job may wait in its queue
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 100.0)).result.session_id
    sent = reply(machine.handle_rpc(CLIENT, m.Send(2, sid, "hi", "r"), 100.0)).result
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 3, 1, 0), 100.5)
    assert not effects(machine.tick(100.6), ToGenerators)  # room, but said too soon after the job was sent
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 0, 4, 0), 101.5)
    assert not effects(machine.tick(101.6), ToGenerators)  # no room: it may wait in that generator's queue
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 3, 1, 0), 102.7)
    out = machine.tick(102.8)
    assert [j.msg.generation_id for j in effects(out, ToGenerators)] == [sent.generation_id]
    assert machine.counters["jobs_sent_again"] == 1
    machine.handle_event(m.GenStarted(sent.generation_id, "gen-A"), 102.9)
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 3, 1, 0), 104.0)
    assert not effects(machine.tick(104.1), ToGenerators)  # taken: never again
