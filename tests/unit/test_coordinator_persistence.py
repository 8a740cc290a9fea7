"""The coordinator's side of durability, driven with plain values: what is sent to the persister, resent
until acked, and what an ack, a rejection or the persister's failure does to a reply."""
from __future__ import annotations

from protocol import codec, messages as m
from services.coordinator.machine import ToClients, ToControl, ToPersister
from tests.unit.test_coordinator_machine import CLIENT, ack_all, delta, effects, make, reply, start


def test_unacked_persist_ops_are_resent_from_the_acked_length():
    machine = make(flush_ms=0, checkpoint_ms=0, persist_resend_ms=1000)
    _, r, _ = start(machine)
    machine.handle_event(m.PersistAck(r.message_id, 0, False), 100.0)  # created
    delta(machine, r.generation_id, 1, "abc", 100.0)
    machine.handle_event(m.PersistAck(r.message_id, 3, False), 100.0)
    delta(machine, r.generation_id, 2, "def", 100.1)  # this append is lost
    machine.handle_event(m.GenDone(r.generation_id, 2, 6, "stop", 2, "server"), 100.2)  # and the finalize
    assert effects(machine.tick(100.5), ToPersister, m.Append) == []
    out = machine.tick(101.3)
    assert [(e.msg.offset, e.msg.text) for e in effects(out, ToPersister, m.Append)] == [(3, "def")]
    assert effects(out, ToPersister, m.Finalize)[0].msg.length == 6
    assert machine.persisted.resends >= 1


def test_a_restarted_persister_hears_the_live_messages_and_gets_a_resend():
    machine = make(persist_resend_ms=1000)
    machine.handle_event(m.OrphansInterrupted(0, machine.persisted.sweep_id), 99.0)
    _, r, send_out = start(machine)
    ack_all(machine, [send_out], 100.0)
    machine.handle_event(m.PersisterHello(100.1), 100.1)
    out = machine.tick(100.2)
    (sweep,) = effects(out, ToPersister, m.InterruptOrphans)
    assert sweep.msg.live_message_ids == [r.message_id]
    machine.handle_event(m.OrphansInterrupted(0, sweep.msg.sweep), 100.3)
    assert effects(machine.tick(110.0), ToPersister, m.InterruptOrphans) == []


def test_a_new_coordinator_sweeps_orphans_until_the_persister_answers():
    machine = make(persist_resend_ms=1000)
    (sweep,) = effects(machine.tick(0.0), ToPersister, m.InterruptOrphans)
    assert sweep.msg.live_message_ids == []
    (again,) = effects(machine.tick(1.5), ToPersister, m.InterruptOrphans)  # no answer yet: again, the same sweep
    assert again.msg.sweep == sweep.msg.sweep
    machine.handle_event(m.OrphansInterrupted(3, sweep.msg.sweep), 1.6)
    assert effects(machine.tick(5.0), ToPersister, m.InterruptOrphans) == []


def test_an_answer_to_the_sweep_of_the_coordinator_before_us_does_not_end_ours():
    """The persister's PUSH socket keeps what it queued while its coordinator was down and hands it to the next
    one: the answer to the dead coordinator's sweep (made while the reply was still live) reaches us before our
    own sweep went out. Taken as ours, the reply would stay streaming forever (a CI failure, 2026-12-02)."""
    machine = make(persist_resend_ms=1000, adopt_grace_ms=800)
    assert effects(machine.tick(0.0), ToPersister, m.InterruptOrphans) == []  # the adoption window holds it
    machine.handle_event(m.OrphansInterrupted(0, "the-coordinator-before.1"), 0.5)
    (ours,) = effects(machine.tick(1.0), ToPersister, m.InterruptOrphans)
    machine.handle_event(m.OrphansInterrupted(1, ours.msg.sweep), 1.1)
    assert effects(machine.tick(5.0), ToPersister, m.InterruptOrphans) == []


def test_a_persister_hello_starts_a_new_sweep_that_only_its_own_answer_ends():
    machine = make(persist_resend_ms=1000)
    (first,) = effects(machine.tick(0.0), ToPersister, m.InterruptOrphans)
    machine.handle_event(m.PersisterHello(0.2), 0.2)  # a restarted persister, before the first was answered
    (second,) = effects(machine.tick(0.3), ToPersister, m.InterruptOrphans)
    assert second.msg.sweep != first.msg.sweep
    machine.handle_event(m.OrphansInterrupted(0, first.msg.sweep), 0.4)  # the old persister's late answer
    assert effects(machine.tick(1.5), ToPersister, m.InterruptOrphans)
    machine.handle_event(m.OrphansInterrupted(0, second.msg.sweep), 1.6)
    assert effects(machine.tick(5.0), ToPersister, m.InterruptOrphans) == []


def test_a_lost_create_is_resent_until_an_ack_says_its_row_exists():
    """The persister acks only messages whose row exists; until then the create goes again with each resend
    (a create lost to a full disk, followed by appends, must never count as applied)."""
    machine = make(flush_ms=0, checkpoint_ms=0, persist_resend_ms=1000)
    _, r, _ = start(machine)
    delta(machine, r.generation_id, 1, "abc", 100.0)
    machine.handle_event(m.GenDone(r.generation_id, 1, 3, "stop", 1, "server"), 100.1)
    for now in (101.2, 102.4):
        creates = [e.msg.message_id for e in effects(machine.tick(now), ToPersister, m.CreateMessage)]
        assert r.message_id in creates
    machine.handle_event(m.PersistAck(r.message_id, 3, False), 102.5)  # the row exists now, with its text
    out = machine.tick(103.6)
    assert r.message_id not in [e.msg.message_id for e in effects(out, ToPersister, m.CreateMessage)]
    assert effects(out, ToPersister, m.Finalize)


def test_a_rejected_operation_ends_a_streaming_reply_as_error_at_once_and_is_never_resent():
    machine = make(flush_ms=0, checkpoint_ms=0, persist_resend_ms=1000)
    session_id, r, _ = start(machine)
    delta(machine, r.generation_id, 1, "abc", 100.0)
    out = machine.handle_event(m.PersistRejected(r.message_id, "integer out of range"), 100.1)
    (final,) = effects(out, ToClients, m.Final)
    assert (final.msg.status, final.msg.length) == ("error", 3)
    assert "could not be stored: integer out of range" in final.msg.error
    assert effects(out, ToControl, m.CancelGeneration)  # its upstream stops too
    assert effects(out, ToPersister) == []
    assert all(getattr(e.msg, "message_id", None) != r.message_id
               for t in (101.5, 103.0) for e in effects(machine.tick(t), ToPersister))
    assert effects(delta(machine, r.generation_id, 2, "late", 100.2), ToClients) == []  # terminal: late
    history = reply(machine.handle_rpc(CLIENT, m.History(3, session_id), 100.3)).result.messages
    assert (history[-1].status, history[-1].content) == ("error", "abc")
    assert reply(machine.handle_rpc(CLIENT, m.Send(4, session_id, "next", ""), 100.4)).ok  # the session goes on


def test_a_rejected_finalize_publishes_the_error_instead_of_waiting_for_an_ack():
    machine = make(flush_ms=0, checkpoint_ms=0)
    _, r, _ = start(machine)
    delta(machine, r.generation_id, 1, "abc", 100.0)
    done = machine.handle_event(m.GenDone(r.generation_id, 1, 3, "stop", 1, "server"), 100.1)
    assert effects(done, ToClients, m.Final) == []  # waits for the persister
    out = machine.handle_event(m.PersistRejected(r.message_id, "bad stats"), 100.2)
    (final,) = effects(out, ToClients, m.Final)
    assert final.msg.status == "error" and "bad stats" in final.msg.error
    assert r.generation_id not in machine.finalizing
    assert machine.handle_event(m.PersistAck(r.message_id, 3, True), 100.3) == []  # nothing twice


def test_the_persisters_failure_shows_in_status_at_once():
    machine = make()
    machine.handle_event(m.PersisterStats(7, 0, 0, 0, 3, 0, 99.0, "database or disk is full"), 100.0)
    status = reply(machine.handle_rpc(CLIENT, m.Status(1), 100.0)).result
    assert status.persister.failing_since == 99.0
    assert status.persister.last_error == "database or disk is full"


def status_at(machine, now):
    return reply(machine.handle_rpc(CLIENT, m.Status(1), now)).result


def test_status_tells_whether_the_persister_is_there_by_when_it_was_last_heard_from():
    machine = make()
    status = status_at(machine, 100.0)
    assert (status.persister_seen_ms_ago, status.persister_connected, status.database_reachable) == (None, False,
                                                                                                        None)
    machine.handle_event(m.PersisterStats(7, 1, 1, 0, 0), 100.0)  # a heartbeat: healthy
    status = status_at(machine, 101.0)
    assert (status.persister_seen_ms_ago, status.persister_connected, status.database_reachable) == (1000, True,
                                                                                                        True)
    status = status_at(machine, 104.5)  # silent past PERSISTER_SILENT_MS
    assert (status.persister_seen_ms_ago, status.persister_connected) == (4500, False)
    machine.handle_event(m.PersistAck("nobody", 0, False), 105.0)  # any message of the persister counts
    assert status_at(machine, 105.0).persister_connected
    machine.handle_event(m.PersisterStats(7, 1, 1, 0, 0, 0, 104.0, "connection refused"), 105.0)
    assert status_at(machine, 105.0).database_reachable is False


def test_status_counts_the_unsaved_messages_and_the_age_of_the_oldest():
    machine = make(flush_ms=0, checkpoint_ms=0, persist_resend_ms=60_000)
    _, r, send_out = start(machine)  # the user message and the reply, created at 100.0
    status = status_at(machine, 102.0)
    assert (status.unsaved, status.oldest_unsaved_ms) == (2, 2000)
    ack_all(machine, [send_out], 102.0)
    status = status_at(machine, 102.0)
    assert (status.unsaved, status.oldest_unsaved_ms) == (0, None)
    appended = delta(machine, r.generation_id, 1, "abc", 103.0)  # behind again from here
    status = status_at(machine, 110.0)
    assert (status.unsaved, status.oldest_unsaved_ms) == (1, 7000)
    ack_all(machine, [appended], 110.0)
    done = machine.handle_event(m.GenDone(r.generation_id, 1, 3, "stop", 1, "server"), 111.0)
    assert (status_at(machine, 111.5).unsaved, status_at(machine, 111.5).oldest_unsaved_ms) == (1, 500)
    ack_all(machine, [done], 112.0)
    assert status_at(machine, 112.0).unsaved == 0


def new_session(machine, now: float, **fields) -> tuple[str, list]:
    out = machine.handle_rpc(CLIENT, m.NewSession(1, **fields), now)
    return reply(out).result.session_id, out


def test_a_new_session_is_saved_at_once_and_resent_until_the_persister_answers():
    """``chatter new``: the empty session must outlive a coordinator's restart, before any message is in it."""
    machine = make(persist_resend_ms=1000)
    session_id, out = new_session(machine, 100.0, system="be brief", max_input_tokens=4000)
    (save,) = effects(out, ToPersister, m.SaveSession)
    assert save.msg == m.SaveSession(session_id, "", "be brief", 4000, 100.0)
    assert machine.persisted.oldest_unsaved() == (1, 100.0)  # status: not saved yet
    assert [e.msg for e in effects(machine.tick(101.1), ToPersister, m.SaveSession)] == [save.msg]
    machine.handle_event(m.SessionSaved(session_id, 100.0), 101.2)
    assert effects(machine.tick(103.0), ToPersister, m.SaveSession) == []
    assert machine.persisted.oldest_unsaved() == (0, None)


def test_the_answer_to_an_older_save_does_not_end_the_resending_of_a_newer_one():
    machine = make(persist_resend_ms=1000)
    session_id, _ = new_session(machine, 100.0)
    out = machine.handle_rpc(CLIENT, m.ConfigureSession(2, session_id, model="m2"), 100.5)  # its send was lost
    (newer,) = effects(out, ToPersister, m.SaveSession)
    machine.handle_event(m.SessionSaved(session_id, 100.0), 100.6)  # the first save's answer
    assert [e.msg for e in effects(machine.tick(101.6), ToPersister, m.SaveSession)] == [newer.msg]
    machine.handle_event(m.SessionSaved(session_id, 100.5), 101.7)
    assert effects(machine.tick(103.0), ToPersister, m.SaveSession) == []


def test_an_answer_without_the_saves_time_from_an_earlier_persister_ends_the_resending():
    """A persister of an earlier version answers ``SessionSaved`` without ``saved_at``: the session's save, the
    newest there is, is applied, and the coordinator stops resending it (as before ``saved_at`` existed)."""
    machine = make(persist_resend_ms=1000)
    session_id, _ = new_session(machine, 100.0)
    machine.handle_rpc(CLIENT, m.ConfigureSession(2, session_id, model="m2"), 100.5)
    assert len(effects(machine.tick(101.6), ToPersister, m.SaveSession)) == 1  # resent while unanswered
    answer = codec.decode(m.SessionSaved(session_id).encode())  # as it arrives, without the field
    assert answer.saved_at is None
    machine.handle_event(answer, 101.7)
    assert effects(machine.tick(103.0), ToPersister, m.SaveSession) == []
    assert machine.persisted.oldest_unsaved() == (0, None)


def test_a_changed_system_prompt_is_saved_and_a_message_ends_the_older_save():
    machine = make(persist_resend_ms=1000)
    session_id, _ = new_session(machine, 100.0)
    out = machine.handle_rpc(CLIENT, m.ConfigureSession(2, session_id, system="talk like a pirate"), 100.1)
    (save,) = effects(out, ToPersister, m.SaveSession)
    assert save.msg.session_system == "talk like a pirate"
    out = machine.handle_rpc(CLIENT, m.ConfigureSession(3, session_id, model="m2", params={
        "temperature": 0.5, "max_tokens": 9, "stream": False, "continue_style": "prefix"}), 100.2)
    (save,) = effects(out, ToPersister, m.SaveSession)  # every setting is kept at once, the model's too
    assert (save.msg.session_system, save.msg.session_model) == ("talk like a pirate", "m2")
    assert save.msg.session_settings == {"params": {"temperature": 0.5, "max_tokens": 9}, "stream": False,
                                         "continue_style": "prefix"}
    _, _, send_out = start(machine, session_id=session_id, now=100.3)  # its create writes the row as it stands
    assert {(e.msg.session_model, e.msg.session_settings["stream"]) for e in effects(send_out, ToPersister,
                                                                                      m.CreateMessage)} == {("m2", False)}
    assert effects(machine.tick(102.0), ToPersister, m.SaveSession) == []


def test_a_rejected_session_save_is_not_resent():
    machine = make(persist_resend_ms=1000)
    session_id, _ = new_session(machine, 100.0)
    machine.handle_event(m.PersistRejected(session_id, "no room"), 100.1)
    assert effects(machine.tick(102.0), ToPersister, m.SaveSession) == []


def test_a_session_made_for_the_next_message_is_stored_with_it():
    machine = make(persist_resend_ms=1000)
    session_id, out = new_session(machine, 100.0, save=False)
    assert effects(out, ToPersister, m.SaveSession) == [] and machine.persisted.oldest_unsaved() == (0, None)
    _, _, send_out = start(machine, session_id=session_id, now=100.1)
    creates = effects(send_out, ToPersister, m.CreateMessage)  # the message and its reply, each with the session
    assert [e.msg.role for e in creates] == ["user", "assistant"]
    assert {e.msg.session_id for e in creates} == {session_id}
