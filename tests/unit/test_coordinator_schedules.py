"""The coordinator's rules under generated schedules (hypothesis): any interleaving of deltas, duplicates, ticks and
cancels keeps clients and the database exact; ids, listing and prefixes; and a first token is never paced."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from protocol import messages as m
from services.coordinator.machine import Coordinator, ToClients, ToGenerators, ToPersister
from tests.unit.test_coordinator_machine import CLIENT, ack_all, client_text, delta, effects, make, persisted_text, reply, start


# ---------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(plan=st.lists(st.tuples(st.sampled_from(["next", "dup", "tick"]), st.text(min_size=1, max_size=5),
                               st.floats(0, 0.05)), max_size=60),
       flush_ms=st.sampled_from([0, 5, 20]), checkpoint_ms=st.sampled_from([0, 50, 250]))
def test_any_interleaving_of_deltas_duplicates_and_ticks_keeps_clients_and_database_exact(plan, flush_ms,
                                                                                          checkpoint_ms):
    machine = make(flush_ms=flush_ms, checkpoint_ms=checkpoint_ms, checkpoint_chars=16, flush_chars=16)
    sid, r, send_out = start(machine, now=0.0)
    gen_id = r.generation_id
    outs, sent, seq, now = [send_out], "", 0, 0.0
    for action, text, step in plan:
        now += step
        if action == "next":
            seq += 1
            sent += text
            outs.append(delta(machine, gen_id, seq, text, now))
        elif action == "dup" and seq:
            outs.append(delta(machine, gen_id, seq, "ignored", now))
        else:
            outs.append(machine.tick(now))
    outs.append(machine.handle_event(m.GenDone(gen_id, seq, len(sent), "stop", seq, "server"), now))
    outs.append(ack_all(machine, outs, now))
    assert client_text(outs) == persisted_text(outs) == sent
    finals = [e.msg for out in outs for e in effects(out, ToClients, m.Final)]
    assert [(f.status, f.length) for f in finals] == [("completed", len(sent))]


def test_a_cancel_shorter_than_the_checkpoints_never_resends_past_the_kept_length():
    machine = make(flush_ms=0, checkpoint_ms=0, persist_resend_ms=1000)
    sid, r, send_out = start(machine)
    delta(machine, r.generation_id, 1, "hello world", 100.0)
    cancel = machine.handle_rpc(CLIENT, m.Cancel(3, sid, None, seen_len=5), 100.1)
    assert effects(cancel, ToPersister, m.Append) == []  # nothing new to send: the persister cuts at finalize
    assert effects(cancel, ToPersister, m.Finalize)[0].msg.length == 5
    later = machine.tick(105.0)  # nothing was acked: resend, but never past the kept length
    assert all(e.msg.offset + len(e.msg.text) <= 5 for e in effects(later, ToPersister, m.Append))
    assert effects(later, ToPersister, m.Finalize)[0].msg.length == 5


def test_a_delta_batch_applies_in_order_and_drops_duplicates():
    machine = make(flush_ms=0, checkpoint_ms=0)
    _, r, _ = start(machine)
    gen_id = r.generation_id
    items = [m.DeltaItem(gen_id, seq, text, 1, 1.0) for seq, text in ((1, "a"), (2, "b"), (2, "dup"), (3, "c"))]
    out = machine.handle_event(m.GenDeltaBatch(items), 100.0)
    assert client_text([out]) == persisted_text([out]) == "abc"
    assert machine.counters["duplicate_deltas_dropped"] == 1


def test_message_and_generation_ids_sort_by_time_and_session_ids_are_random():
    from services.coordinator.machine import new_id, new_ordered_id
    ordered = [new_ordered_id() for _ in range(2000)]
    assert len(set(ordered)) == 2000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ordered)
    assert ordered == sorted(ordered, key=lambda i: i[:12])  # the millisecond prefix never goes back
    sessions = [new_id() for _ in range(200)]
    assert sessions != sorted(sessions)  # random: nothing about one session's id gives another's away


def test_sessions_without_a_message_are_not_listed():
    machine = make()
    reply(machine.handle_rpc(CLIENT, m.NewSession(1), 100.0))  # a send that was then refused leaves this
    session_id, _, _ = start(machine, now=100.0)
    listed = reply(machine.handle_rpc(CLIENT, m.Sessions(2, 10), 100.1)).result.sessions
    assert [s.session_id for s in listed] == [session_id]


def test_a_prefix_resolves_against_the_stored_sessions_and_those_in_memory():
    machine = make()
    in_memory = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 0)).result.session_id  # "id0"
    machine.handle_rpc(CLIENT, m.Send(2, in_memory, "hi", ""), 0)  # a message: now it is a session to find

    def resolve(prefix, stored=(), count=None):
        # what the shell's read found: how many stored ids match, and the first few
        machine.book.stored_matches = {prefix: (len(stored) if count is None else count, list(stored))}
        return reply(machine.handle_rpc(CLIENT, m.ResolveSession(3, prefix), 0))

    assert resolve("id").result.session_id == in_memory
    assert resolve("ab", ["ab12", "ab34"]).error == "ab matches 2 sessions (ab12, ab34); give more of the id"
    assert resolve("ab1", ["ab12"]).result.session_id == "ab12"
    assert resolve("i", ["i999"]).error == f"i matches 2 sessions ({', '.join(sorted([in_memory, 'i999']))}); give more of the id"
    many = [f"0{n:031x}" for n in range(5)]  # the read shows five of the 3,100 it counted
    assert resolve("0", many, count=3100).error == f"0 matches 3100 sessions ({', '.join(many)}, …); give more of the id"
    assert resolve("zz").error == "unknown session zz"
    assert "cannot be empty" in resolve(" ").error


# ---------------------------------------------------------------- a first token is never paced


def awaited_by_definition(machine: Coordinator) -> bool:
    return any(gen.stream.first_token_at is None for gen in machine.active.values())


def test_a_reply_is_awaited_from_its_send_until_its_first_delta_or_its_end_and_again_when_rerun():
    machine = make(generator_dead_ms=3000)
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 60, 2, 0), 100.0)
    assert not machine.first_token_awaited()
    _, first, _ = start(machine, "one", now=100.0)
    assert machine.first_token_awaited()
    delta(machine, first.generation_id, 1, "hi", 100.1)
    assert not machine.first_token_awaited()  # streaming: its loop may be paced again
    sid, second, _ = start(machine, "two", now=100.2)
    assert machine.first_token_awaited()
    assert reply(machine.handle_rpc(CLIENT, m.Cancel(3, sid), 100.3)).ok
    assert not machine.first_token_awaited()  # cancelled before a token: nothing is awaited any more
    _, third, _ = start(machine, "three", now=100.4)
    out = machine.tick(103.5)  # its generator is lost before a token: the job runs again, still awaited
    assert [e.msg.generation_id for e in effects(out, ToGenerators)] == [third.generation_id]
    assert machine.first_token_awaited()
    delta(machine, third.generation_id, 1, "at last", 103.6)
    assert not machine.first_token_awaited()


@settings(max_examples=200, deadline=None)
@given(plan=st.lists(st.tuples(st.sampled_from(["send", "delta", "cancel", "done", "tick"]),
                               st.integers(0, 5), st.floats(0, 2.0)), max_size=40))
def test_first_token_awaited_is_always_whether_some_active_reply_has_no_token(plan):
    machine = make(generator_dead_ms=3000)
    now = 100.0
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 60, 8, 0), now)
    replies: list[tuple[str, str, list[int]]] = []  # (session id, generation id, [deltas sent])
    for action, pick, step in plan:
        now += step
        live = [r for r in replies if r[1] in machine.active]
        if action == "send" or not live:
            sid, r, _ = start(machine, f"text {len(replies)}", now=now)
            replies.append((sid, r.generation_id, [0]))
        elif action == "delta":
            sid, gen_id, seq = live[pick % len(live)]
            seq[0] += 1
            delta(machine, gen_id, seq[0], "x", now)
        elif action == "cancel":
            sid, gen_id, _ = live[pick % len(live)]
            machine.handle_rpc(CLIENT, m.Cancel(3, sid), now)
        elif action == "done":
            sid, gen_id, seq = live[pick % len(live)]
            machine.handle_event(m.GenDone(gen_id, seq[0], seq[0], "stop", seq[0], "server"), now)
        else:
            machine.tick(now)
        assert len(machine.streams.first_token_wait.candidates) <= len(machine.active)  # bounded without being asked
        assert machine.first_token_awaited() == awaited_by_definition(machine)
