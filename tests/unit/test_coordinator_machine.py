"""The coordinator's rules, driven with plain values: no sockets, no clock, no database."""
from __future__ import annotations

import itertools

from hypothesis import given, strategies as st

from protocol import messages as m
from services.coordinator.machine import (Coordinator, Log, ReplyTo, Settings, ToClients, ToControl, ToGenerators,
                                          ToPersister, content_hash)
from services.coordinator.generation import next_checkpoint

CLIENT = b"client-1"


def words(text: str, model: str) -> int:
    return len(text.split())


def make(**overrides) -> Coordinator:
    """A coordinator past its adoption window (``adoption.py``), unless ``adopt_grace_ms`` says otherwise."""
    ids = (f"id{i}" for i in itertools.count())
    return Coordinator(Settings(**({"adopt_grace_ms": 0} | overrides)), words, new_id=lambda: next(ids), new_ordered_id=lambda: next(ids))


def effects(out, kind, msg_type=None):
    return [e for e in out if isinstance(e, kind) and (msg_type is None or isinstance(e.msg, msg_type))]


def reply(out) -> m.Reply:
    (r,) = effects(out, ReplyTo)
    return r.msg


def start(machine: Coordinator, text: str = "hi", now: float = 100.0, session_id: str | None = None):
    """A session with one queued generation; returns (session id, send result, effects)."""
    if session_id is None:
        session_id = reply(machine.handle_rpc(CLIENT, m.NewSession(1), now)).result.session_id
    out = machine.handle_rpc(CLIENT, m.Send(2, session_id, text, ""), now)
    result = reply(out).result
    machine.handle_event(m.GenStarted(result.generation_id, "gen-A"), now)
    return session_id, result, out


def delta(machine, gen_id, seq, text, now):
    return machine.handle_event(m.GenDelta(gen_id, seq, text, 1, now), now)


def client_text(outs) -> str:
    """What a client applying StreamDelta by offset ends with."""
    text = ""
    for out in outs:
        for e in effects(out, ToClients, m.StreamDelta):
            assert e.msg.offset == len(text), "offsets must continue exactly"
            text += e.msg.text
    return text


def persisted_text(outs) -> str:
    text = ""
    for out in outs:
        for e in effects(out, ToPersister, m.Append):
            assert e.msg.offset == len(text)
            text += e.msg.text
    return text


def ack_all(machine, outs, now):
    """The persister's answers to every create/append/finalize in ``outs``."""
    acks = []
    for out in outs:
        for e in effects(out, ToPersister):
            msg = e.msg
            if isinstance(msg, m.CreateMessage):
                acks.append(m.PersistAck(msg.message_id, len(msg.content), False))
            elif isinstance(msg, m.Append):
                acks.append(m.PersistAck(msg.message_id, msg.offset + len(msg.text), False))
            elif isinstance(msg, m.Finalize):
                acks.append(m.PersistAck(msg.message_id, msg.length, True))
    result = []
    for ack in acks:
        result.extend(machine.handle_event(ack, now))
    return result


# ---------------------------------------------------------------- send and the prompt


def test_send_creates_messages_publishes_started_and_dispatches_the_frozen_prompt():
    machine = make()
    sid, result, out = start(machine, "hello")
    (job,) = effects(out, ToGenerators)
    assert job.msg.messages == [{"role": "user", "content": "hello"}]
    assert job.msg.prompt_hash == result.prompt_hash
    (started,) = effects(out, ToClients, m.Started)
    assert started.msg.preview == "[user]\nhello\n\n" and started.msg.prompt_hash == result.prompt_hash
    creates = effects(out, ToPersister, m.CreateMessage)
    assert [(c.msg.role, c.msg.status) for c in creates] == [("user", "completed"), ("assistant", "streaming")]
    # the reply's row holds its prompt by reference: the user message it answers, no copy of the texts
    assert creates[1].msg.prompt_messages is None and creates[1].msg.preview is None
    assert creates[1].msg.prompt_ref == {"system": None, "dropped": 0, "thinking": False,
                                         "user": creates[0].msg.message_id}
    assert creates[0].msg.session_title == "hello"


def test_next_prompt_leaves_out_cancelled_and_errored_replies():
    machine = make()
    sid, first, _ = start(machine, "one")
    delta(machine, first.generation_id, 1, "kept", 100.0)
    machine.handle_event(m.GenDone(first.generation_id, 1, 4, "stop", 1, "server"), 100.1)
    _, second, _ = start(machine, "two", session_id=sid)
    delta(machine, second.generation_id, 1, "dropped", 101.0)
    machine.handle_rpc(CLIENT, m.Cancel(3, sid), 101.1)
    _, third, _ = start(machine, "three", session_id=sid)
    machine.handle_event(m.GenError(third.generation_id, 0, "boom", 1), 102.0)
    _, _, out = start(machine, "four", session_id=sid)
    (job,) = effects(out, ToGenerators)
    assert job.msg.messages == [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "kept"},
        {"role": "user", "content": "two"}, {"role": "user", "content": "three"}, {"role": "user", "content": "four"}]


def test_send_is_refused_while_a_reply_streams_and_for_bad_input():
    machine = make(max_text_chars=10)
    sid, _, _ = start(machine, "hi")
    assert "already streaming" in reply(machine.handle_rpc(CLIENT, m.Send(5, sid, "again", ""), 1)).error
    assert "unknown session" in reply(machine.handle_rpc(CLIENT, m.Send(6, "nope", "x", ""), 1)).error
    other = reply(machine.handle_rpc(CLIENT, m.NewSession(7), 1)).result.session_id
    assert "limit" in reply(machine.handle_rpc(CLIENT, m.Send(8, other, "x" * 11, ""), 1)).error
    assert "empty" in reply(machine.handle_rpc(CLIENT, m.Send(9, other, "  ", ""), 1)).error


def test_a_nul_character_is_refused_wherever_a_client_text_would_be_stored():
    """PostgreSQL cannot store NUL in text; every database refuses it alike, in words, before it is stored."""
    machine = make()
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 0)).result.session_id
    refusals = [
        machine.handle_rpc(CLIENT, m.Send(2, sid, "a\x00b", ""), 0),
        machine.handle_rpc(CLIENT, m.Send(3, sid, "fine", "req\x00"), 0),
        machine.handle_rpc(CLIENT, m.Send(4, sid, "fine", "", "mo\x00del"), 0),
        machine.handle_rpc(CLIENT, m.NewSession(5, "sys\x00"), 0),
        machine.handle_rpc(CLIENT, m.ConfigureSession(6, sid, "sys\x00", None, None, None), 0),
        machine.handle_rpc(CLIENT, m.Regenerate(7, sid, "re\x00"), 0),
    ]
    errors = [reply(out).error for out in refusals]
    assert all(e and "NUL" in e and "cannot be stored" in e for e in errors), errors
    assert all(effects(out, ToPersister) == [] and effects(out, ToGenerators) == [] for out in refusals)
    assert reply(machine.handle_rpc(CLIENT, m.Send(8, sid, "fine", ""), 0)).ok


def test_a_retried_request_id_never_starts_a_second_generation():
    machine = make()
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 0)).result.session_id
    first = machine.handle_rpc(CLIENT, m.Send(2, sid, "hi", "req-1"), 0)
    again = machine.handle_rpc(CLIENT, m.Send(3, sid, "hi", "req-1"), 0)
    assert reply(again).ok and reply(again).result == reply(first).result
    assert effects(again, ToGenerators) == []


# ---------------------------------------------------------------- seq rules


def test_in_order_deltas_reach_clients_and_persister_in_order():
    machine = make(flush_ms=0, checkpoint_ms=0)
    _, r, _ = start(machine)
    outs = [delta(machine, r.generation_id, i, f"w{i} ", 100 + i) for i in range(1, 6)]
    assert client_text(outs) == persisted_text(outs) == "w1 w2 w3 w4 w5 "


def test_a_duplicate_seq_is_dropped_and_counted():
    machine = make(flush_ms=0, checkpoint_ms=0)
    _, r, _ = start(machine)
    outs = [delta(machine, r.generation_id, 1, "a", 100), delta(machine, r.generation_id, 1, "a", 100.01),
            delta(machine, r.generation_id, 2, "b", 100.02)]
    assert client_text(outs) == "ab"
    assert machine.counters["duplicate_deltas_dropped"] == 1


def test_a_gap_finalizes_as_error_and_cancels_the_generator():
    machine = make()
    _, r, _ = start(machine)
    gen_id = r.generation_id
    o1 = delta(machine, gen_id, 1, "a", 100)
    o2 = delta(machine, gen_id, 3, "c", 100.1)
    assert any(isinstance(e.msg, m.CancelGeneration) and e.msg.generation_id == gen_id for e in effects(o2, ToControl))
    (final,) = effects(o2, ToPersister, m.Finalize)
    assert final.msg.status == "error" and "gap" in final.msg.error and final.msg.length == 1
    assert client_text([o1, o2]) == "a"
    assert machine.counters["gaps"] == 1


def test_a_delta_after_cancel_is_late_dropped_counted_and_cancelled_again():
    machine = make()
    sid, r, _ = start(machine)
    gen_id = r.generation_id
    delta(machine, gen_id, 1, "a", 100)
    machine.handle_rpc(CLIENT, m.Cancel(3, sid), 100.1)
    late = delta(machine, gen_id, 2, "b", 100.2)
    assert machine.counters["late_deltas_dropped"] == 1
    assert [e.msg for e in late] == [m.CancelGeneration(gen_id)]


def test_a_delta_after_final_is_late():
    machine = make()
    _, r, _ = start(machine)
    gen_id = r.generation_id
    delta(machine, gen_id, 1, "a", 100)
    machine.handle_event(m.GenDone(gen_id, 1, 1, "stop", 1, "server"), 100.1)
    late = delta(machine, gen_id, 2, "b", 100.2)
    assert machine.counters["late_deltas_dropped"] == 1
    assert effects(late, ToClients) == [] and effects(late, ToPersister) == []


def test_a_delta_for_an_unknown_generation_is_late():
    machine = make()
    out = delta(machine, "never-seen", 1, "x", 1)
    assert machine.counters["late_deltas_dropped"] == 1 and [e.msg for e in out] == [m.CancelGeneration("never-seen")]


def test_done_that_disagrees_with_what_arrived_is_an_error():
    machine = make()
    _, r, _ = start(machine)
    delta(machine, r.generation_id, 1, "abc", 100)
    out = machine.handle_event(m.GenDone(r.generation_id, 2, 6, "stop", 2, "server"), 100.1)
    (final,) = effects(out, ToPersister, m.Finalize)
    assert final.msg.status == "error" and "incomplete" in final.msg.error


# ---------------------------------------------------------------- coalescing and checkpoints


def test_first_delta_goes_to_clients_at_once_then_coalesced_until_the_deadline():
    machine = make(flush_ms=20, checkpoint_ms=10_000)
    _, r, _ = start(machine)
    gen_id = r.generation_id
    first = delta(machine, gen_id, 1, "a", 100.000)
    assert [e.msg.text for e in effects(first, ToClients, m.StreamDelta)] == ["a"]
    held = [delta(machine, gen_id, 2, "b", 100.005), delta(machine, gen_id, 3, "c", 100.010)]
    assert all(effects(o, ToClients) == [] for o in held)
    assert machine.next_deadline() <= 100.020
    assert effects(machine.tick(100.019), ToClients) == []
    flushed = machine.tick(100.020)
    assert [(e.msg.offset, e.msg.text) for e in effects(flushed, ToClients, m.StreamDelta)] == [(1, "bc")]


def test_a_delta_after_a_quiet_spell_is_not_delayed():
    machine = make(flush_ms=20, checkpoint_ms=10_000)
    _, r, _ = start(machine)
    delta(machine, r.generation_id, 1, "a", 100.0)
    out = delta(machine, r.generation_id, 2, "b", 100.5)  # a slow model: 500 ms between tokens
    assert [e.msg.text for e in effects(out, ToClients, m.StreamDelta)] == ["b"]


def test_a_full_buffer_flushes_before_the_deadline():
    machine = make(flush_ms=1000, flush_chars=10, checkpoint_ms=10_000)
    _, r, _ = start(machine)
    delta(machine, r.generation_id, 1, "a", 100.0)
    out = delta(machine, r.generation_id, 2, "x" * 10, 100.001)
    assert [e.msg.text for e in effects(out, ToClients, m.StreamDelta)] == ["x" * 10]


def test_checkpoints_follow_their_cadence_and_size():
    machine = make(flush_ms=0, checkpoint_ms=250, checkpoint_chars=8)
    _, r, _ = start(machine)
    gen_id = r.generation_id
    outs = [delta(machine, gen_id, 1, "ab", 100.0)]  # the first checkpoint goes at once
    assert [e.msg.text for e in effects(outs[0], ToPersister, m.Append)] == ["ab"]
    outs.append(delta(machine, gen_id, 2, "cd", 100.1))
    outs.append(delta(machine, gen_id, 3, "ef", 100.2))
    assert all(effects(o, ToPersister, m.Append) == [] for o in outs[1:])
    outs.append(machine.tick(100.249))
    assert effects(outs[-1], ToPersister, m.Append) == []
    outs.append(machine.tick(100.25))
    assert [(e.msg.offset, e.msg.text) for e in effects(outs[-1], ToPersister, m.Append)] == [(2, "cdef")]
    outs.append(delta(machine, gen_id, 4, "123456789", 100.26))  # past checkpoint_chars: at once
    assert [e.msg.text for e in effects(outs[-1], ToPersister, m.Append)] == ["123456789"]
    assert persisted_text(outs) == "abcdef123456789"


def test_replies_streaming_together_checkpoint_together_on_one_grid():
    """Two replies whose first checkpoints went out at different moments send their next ones in the same tick,
    at the shared grid point (every 250 ms), so the persister gets them in one bundle."""
    machine = make(flush_ms=0, checkpoint_ms=250, checkpoint_chars=1000)
    _, a, _ = start(machine, "one", now=100.0)
    _, b, _ = start(machine, "two", now=100.0)
    outs = [delta(machine, a.generation_id, 1, "a1", 100.03), delta(machine, b.generation_id, 1, "b1", 100.17)]
    outs += [delta(machine, a.generation_id, 2, "a2", 100.1), delta(machine, b.generation_id, 2, "b2", 100.2)]
    assert [len(effects(o, ToPersister, m.Append)) for o in outs] == [1, 1, 0, 0]  # the first ones at once
    assert effects(machine.tick(100.249), ToPersister, m.Append) == []
    both = effects(machine.tick(100.25), ToPersister, m.Append)
    assert sorted(e.msg.text for e in both) == ["a2", "b2"]


@given(last_s=st.floats(0, 2e9), period_ms=st.integers(1, 10_000))
def test_the_next_checkpoint_is_on_the_grid_after_the_last_and_within_one_period(last_s, period_ms):
    period_s = period_ms / 1000
    due = next_checkpoint(last_s, period_s)
    # text waits at most one period, as before (up to a float's rounding at this magnitude: 2e9 s is ~2.4e-7 apart)
    assert last_s < due <= last_s + period_s + 1e-15 * max(1.0, last_s) * 1e3
    slot = due / period_s
    assert abs(slot - round(slot)) < 1e-6 * max(1.0, slot)  # on the grid every reply shares


# ---------------------------------------------------------------- finalize


def test_finalize_order_tail_then_finalize_then_ack_then_final():
    machine = make(flush_ms=1000, checkpoint_ms=1000)
    sid, r, send_out = start(machine)
    gen_id = r.generation_id
    outs = [send_out, delta(machine, gen_id, 1, "a", 100.0), delta(machine, gen_id, 2, "b", 100.1)]
    done = machine.handle_event(m.GenDone(gen_id, 2, 2, "stop", 2, "server"), 100.2)
    kinds = [(type(e).__name__, type(e.msg).__name__) for e in done if not isinstance(e, Log)]
    assert kinds == [("ToClients", "StreamDelta"), ("ToPersister", "Append"), ("ToPersister", "Finalize")]
    assert effects(done, ToClients, m.Final) == []  # not durable yet
    outs.append(done)
    assert client_text(outs) == persisted_text(outs) == "ab"
    acked = ack_all(machine, outs, 100.3)
    (final,) = effects(acked, ToClients, m.Final)
    assert (final.msg.status, final.msg.length, final.msg.content_hash) == ("completed", 2, content_hash("ab"))
    assert final.msg.stats["tokens"] == 2 and final.msg.stats["tokens_source"] == "server"
    assert final.msg.stats["ttft_ms"] == 0.0 and final.msg.stats["queue_wait_ms"] == 0.0


def test_an_ack_short_of_the_final_length_publishes_nothing():
    machine = make()
    _, r, _ = start(machine)
    delta(machine, r.generation_id, 1, "abc", 100.0)
    machine.handle_event(m.GenDone(r.generation_id, 1, 3, "stop", 1, "server"), 100.1)
    out = machine.handle_event(m.PersistAck(r.message_id, 2, True), 100.2)
    assert effects(out, ToClients) == []


def test_cancel_keeps_exactly_what_the_canceller_saw():
    machine = make(flush_ms=0, checkpoint_ms=0)
    sid, r, send_out = start(machine)
    gen_id = r.generation_id
    outs = [send_out, delta(machine, gen_id, 1, "hello ", 100.0), delta(machine, gen_id, 2, "world", 100.1)]
    cancel = machine.handle_rpc(CLIENT, m.Cancel(3, sid, gen_id, seen_len=6), 100.2)
    assert reply(cancel).ok
    assert m.CancelGeneration(gen_id) in [e.msg for e in effects(cancel, ToControl)]
    (fin,) = effects(cancel, ToPersister, m.Finalize)
    assert (fin.msg.status, fin.msg.length, fin.msg.content_hash) == ("cancelled", 6, content_hash("hello "))
    outs.append(cancel)
    (final,) = effects(ack_all(machine, outs, 100.3), ToClients, m.Final)
    assert final.msg.length == 6  # longer views cut here


def test_cancel_without_a_seen_length_keeps_and_flushes_everything():
    machine = make(flush_ms=1000, checkpoint_ms=1000)
    sid, r, _ = start(machine)
    delta(machine, r.generation_id, 1, "a", 100.0)
    delta(machine, r.generation_id, 2, "b", 100.1)
    cancel = machine.handle_rpc(CLIENT, m.Cancel(3, sid), 100.2)
    assert [e.msg.text for e in effects(cancel, ToClients, m.StreamDelta)] == ["b"]
    assert effects(cancel, ToPersister, m.Finalize)[0].msg.length == 2


def test_cancel_with_nothing_streaming_is_refused():
    machine = make()
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 0)).result.session_id
    assert "nothing is streaming" in reply(machine.handle_rpc(CLIENT, m.Cancel(2, sid), 0)).error


# ---------------------------------------------------------------- liveness and resends


def test_a_silent_generator_is_lost_its_streams_error_and_unstarted_jobs_rerun():
    machine = make(generator_dead_ms=3000)
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 60, 2, 0), 100.0)
    _, streaming, _ = start(machine, "one", now=100.0)
    _, waiting, _ = start(machine, "two", now=100.0)
    delta(machine, streaming.generation_id, 1, "partial", 100.5)
    assert effects(machine.tick(102.9), ToGenerators) == []
    out = machine.tick(103.2)  # housekeeping runs every 250 ms
    (rerun,) = effects(out, ToGenerators)
    assert rerun.msg.generation_id == waiting.generation_id
    (fin,) = effects(out, ToPersister, m.Finalize)
    assert fin.msg.status == "error" and "generator lost" in fin.msg.error and fin.msg.length == len("partial")
    assert machine.counters["generators_lost"] == 1


def test_heartbeats_go_out_on_control():
    machine = make()
    assert effects(machine.tick(0.0), ToControl, m.CoordinatorHeartbeat)
    assert effects(machine.tick(0.5), ToControl, m.CoordinatorHeartbeat) == []
    assert effects(machine.tick(1.1), ToControl, m.CoordinatorHeartbeat)


# ---------------------------------------------------------------- snapshot and history


def test_snapshot_holds_exactly_what_clients_were_sent():
    machine = make(flush_ms=1000, checkpoint_ms=1000)
    sid, r, _ = start(machine)
    outs = [delta(machine, r.generation_id, 1, "ab", 100.0), delta(machine, r.generation_id, 2, "cd", 100.1)]
    snap = reply(machine.handle_rpc(CLIENT, m.Snapshot(9, sid), 100.2)).result
    assert snap.text == client_text(outs) == "ab" and snap.final is False
