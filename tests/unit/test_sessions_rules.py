"""Issue 3's rules in the pure coordinator: regenerate, the context budget, the stall watchdog,
idempotent requests, session views."""
from __future__ import annotations

import pytest

from protocol import messages as m
from protocol.conversation import MessageRecord
from services.coordinator.machine import ToClients, ToControl, ToGenerators, ToPersister
from services.coordinator.prompt import PromptTooLarge, assemble, prompt_hash
from services.coordinator.book import UNSAVED_SESSION_KEEP_S
from tests.unit.test_coordinator_machine import CLIENT, ack_all, delta, effects, make, reply, start, words


def finish(machine, r, text="done", now=100.5):
    delta(machine, r.generation_id, 1, text, now)
    machine.handle_event(m.GenDone(r.generation_id, 1, len(text), "stop", 1, "server"), now)


def job_of(out):
    (job,) = effects(out, ToGenerators)
    return job.msg


# ---------------------------------------------------------------- regenerate


def test_regenerate_while_streaming_cancels_and_answers_the_same_turn_on_a_sibling_branch():
    machine = make()
    sid, first, _ = start(machine, "question")
    delta(machine, first.generation_id, 1, "half an ans", 100.1)
    out = machine.handle_rpc(CLIENT, m.Regenerate(5, sid, "regen-1"), 100.2)
    result = reply(out).result
    assert result.generation_id != first.generation_id
    (fin,) = effects(out, ToPersister, m.Finalize)
    assert (fin.msg.message_id, fin.msg.status) == (first.message_id, "cancelled")
    assert m.CancelGeneration(first.generation_id) in [e.msg for e in effects(out, ToControl)]
    creates = effects(out, ToPersister, m.CreateMessage)
    user_id = machine.sessions[sid].history[0].message_id
    assert [(c.msg.role, c.msg.parent_id) for c in creates] == [("assistant", user_id)]  # no new user message
    assert job_of(out).messages == [{"role": "user", "content": "question"}]
    history = reply(machine.handle_rpc(CLIENT, m.History(6, sid), 100.3)).result.messages
    assert [(h.role, h.status, h.sibling_index, h.sibling_count) for h in history] == [
        ("user", "completed", 0, 1), ("assistant", "queued", 1, 2)]  # the cancelled one is kept beside it


def test_next_prompt_follows_the_regenerated_branch_and_leaves_out_cancelled_replies():
    machine = make()
    sid, first, _ = start(machine, "q1")
    finish(machine, first, "answer one")
    regen = reply(machine.handle_rpc(CLIENT, m.Regenerate(5, sid, "r1"), 101)).result
    finish(machine, regen, "better one", 101.5)
    _, _, out = start(machine, "q2", now=102, session_id=sid)
    assert job_of(out).messages == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "better one"},
                                    {"role": "user", "content": "q2"}]


def test_regenerate_of_an_empty_session_is_refused_and_a_retry_is_idempotent():
    machine = make()
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 0)).result.session_id
    assert "nothing to regenerate" in reply(machine.handle_rpc(CLIENT, m.Regenerate(2, sid, "x"), 0)).error
    _, first, _ = start(machine, "q", session_id=sid)
    finish(machine, first)
    once = machine.handle_rpc(CLIENT, m.Regenerate(3, sid, "same"), 101)
    again = machine.handle_rpc(CLIENT, m.Regenerate(4, sid, "same"), 101.1)
    assert reply(again).result == reply(once).result and effects(again, ToGenerators) == []


# ---------------------------------------------------------------- the context budget


def record(message_id, role, content, status="completed", **more):
    return m.MessageRecord(message_id=message_id, session_id="s", role=role, content=content, status=status,
                           created_at=1.0, **more)


def test_oldest_turns_are_dropped_whole_system_and_newest_always_stay():
    history = []
    for i in range(10):
        history += [record(f"u{i}", "user", "word " * 20), record(f"a{i}", "assistant", "word " * 20)]
    prompt = assemble("sys", history, "newest", "m", {}, words, max_input_tokens=200)
    assert prompt.prompt_tokens <= 200
    assert prompt.messages[0] == ("system", "sys") and prompt.messages[-1] == ("user", "newest")
    kept = len(prompt.messages) - 2
    assert kept % 2 == 0 and kept > 0  # whole turns
    assert prompt.dropped_message_ids == tuple(f"{r}{i}" for i in range(10 - kept // 2) for r in "ua")
    assert assemble("sys", history, "newest", "m", {}, words, 0).dropped_message_ids == ()  # 0: no budget


def test_a_message_that_cannot_fit_even_alone_is_refused():
    with pytest.raises(PromptTooLarge):
        assemble("sys " * 50, [], "hello", "m", {}, words, max_input_tokens=20)
    machine = make(max_input_tokens=10)
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 0)).result.session_id
    refused = reply(machine.handle_rpc(CLIENT, m.Send(2, sid, "word " * 30, "r"), 0))
    assert not refused.ok and "budget" in refused.error
    assert machine.sessions[sid].history == []  # nothing half-created


def test_the_session_budget_overrides_the_default_and_is_reported():
    machine = make(max_input_tokens=10_000)
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1, None, None, 60), 0)).result.session_id
    for i in range(6):
        _, r, _ = start(machine, "word " * 10, now=float(i), session_id=sid)
        finish(machine, r, "word " * 10, now=i + 0.5)
    _, r, out = start(machine, "last", now=10, session_id=sid)
    (started,) = effects(out, ToClients, m.Started)
    assert started.msg.max_input_tokens == 60 and started.msg.dropped_message_ids
    assert started.msg.prompt_tokens <= 60
    status = reply(machine.handle_rpc(CLIENT, m.Status(3, sid), 11)).result
    assert status.context.max_input_tokens == 60 and status.context.history_tokens > 60
    machine.handle_rpc(CLIENT, m.ConfigureSession(4, sid, "be brief", 0), 12)
    assert machine.sessions[sid].system == "be brief" and machine.generators.budget(machine.sessions[sid]) == 10_000


# ---------------------------------------------------------------- stall watchdog


def test_a_generation_without_deltas_for_stall_ms_ends_as_stalled_and_its_upstream_is_cancelled():
    machine = make(stall_ms=30_000, generator_dead_ms=10**9)
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 60, 1, 0), 100.0)
    sid, r, _ = start(machine, now=100.0)
    delta(machine, r.generation_id, 1, "a", 101.0)
    assert effects(machine.tick(130.5), ToPersister, m.Finalize) == []
    out = machine.tick(131.3)
    (fin,) = effects(out, ToPersister, m.Finalize)
    assert fin.msg.status == "error" and fin.msg.error == "stalled: no token for 30 s (CHATTER_STALL_MS)"
    assert m.CancelGeneration(r.generation_id) in [e.msg for e in effects(out, ToControl)]


def test_waiting_for_the_first_token_is_not_a_stall_and_has_its_own_limit():
    """A server that runs one request at a time holds the others with nothing to say: past CHATTER_STALL_MS
    that is still waiting; past CHATTER_FIRST_TOKEN_MS it ends, naming that limit."""
    machine = make(stall_ms=30_000, first_token_ms=300_000, generator_dead_ms=10**9)
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 60, 1, 0), 100.0)
    _, r, _ = start(machine, now=100.0)  # taken by a generator at 100.0, no token yet
    assert effects(machine.tick(200.0), ToPersister, m.Finalize) == []  # far past the stall limit: waiting
    out = machine.tick(400.5)
    (fin,) = effects(out, ToPersister, m.Finalize)
    assert fin.msg.error == "no first token for 300 s (CHATTER_FIRST_TOKEN_MS)"
    assert m.CancelGeneration(r.generation_id) in [e.msg for e in effects(out, ToControl)]


def test_a_job_no_generator_takes_is_a_stall():
    machine = make(stall_ms=30_000, first_token_ms=300_000)
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 100.0)).result.session_id
    machine.handle_rpc(CLIENT, m.Send(2, sid, "anyone?", ""), 100.0)  # queued, never started
    (fin,) = effects(machine.tick(131.0), ToPersister, m.Finalize)
    assert fin.msg.error == "stalled: no generator took the job for 30 s (CHATTER_STALL_MS)"


# ---------------------------------------------------------------- views


def test_snapshot_of_a_given_generation_and_the_user_turn_it_answers():
    machine = make(flush_ms=0)
    sid, first, _ = start(machine, "q1")
    finish(machine, first, "a1")
    _, second, _ = start(machine, "q2", now=101, session_id=sid)
    delta(machine, second.generation_id, 1, "part", 101.1)
    old = reply(machine.handle_rpc(CLIENT, m.Snapshot(3, sid, first.generation_id), 102)).result
    assert (old.text, old.status, old.user_text) == ("a1", "completed", "q1")
    now_ = reply(machine.handle_rpc(CLIENT, m.Snapshot(4, sid), 102)).result
    assert (now_.generation_id, now_.text, now_.final, now_.user_text) == (
        second.generation_id, "part", False, "q2")
    assert not reply(machine.handle_rpc(CLIENT, m.Snapshot(5, sid, "nope"), 102)).ok


def test_sessions_list_merges_memory_over_the_database_newest_first():
    machine = make()
    machine.load_summaries([{"session_id": "old", "title": "from disk", "message_count": 4, "last_activity": 5.0,
                             "status": "completed"}])
    sid, r, _ = start(machine, "fresh title", now=50.0)
    rows = reply(machine.handle_rpc(CLIENT, m.Sessions(1, 10), 51)).result.sessions
    assert [(row.session_id, row.status, row.title) for row in rows] == [
        (sid, "streaming", "fresh title"), ("old", "completed", "from disk")]


def test_a_users_sessions_list_holds_only_that_users_sessions_from_memory_and_the_database():
    """The gateway's list (``owner``): another user's session, or the administrator's, is never in it, whether
    it is in memory or only in the database; without an owner (the CLI) every session is."""
    machine = make()
    machine.load_summaries([{"session_id": "disk-ann", "title": "d", "message_count": 2, "last_activity": 5.0,
                             "status": "completed", "owner": "ann"},
                            {"session_id": "disk-bob", "title": "d", "message_count": 2, "last_activity": 6.0,
                             "status": "completed", "owner": "bob"}])
    for owner, now in (("ann", 50.0), ("bob", 51.0), (None, 52.0)):
        sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1, owner=owner), now)).result.session_id
        start(machine, f"by {owner}", now=now, session_id=sid)

    def listed(owner):
        rows = reply(machine.handle_rpc(CLIENT, m.Sessions(1, 10, owner=owner), 60)).result.sessions
        return [(row.title, row.owner) for row in rows]

    assert listed("ann") == [("by ann", "ann"), ("d", "ann")]
    assert listed("bob") == [("by bob", "bob"), ("d", "bob")]
    assert listed(None) == [("by None", None), ("by bob", "bob"), ("by ann", "ann"), ("d", "bob"), ("d", "ann")]
    assert listed("carol") == []


def test_the_sessions_list_pages_by_last_activity_and_id_over_the_database_and_memory():
    """Each page is what the shell read for it (one more than the page) merged with memory, before the cursor:
    read page by page, the list is every session once, newest first, and ``more`` is false only at the end."""
    machine = make()
    stored = [{"session_id": f"d{i}", "title": "disk", "message_count": 2, "last_activity": float(i),
               "status": "completed"} for i in range(7)] + [
              {"session_id": "tie", "title": "disk", "message_count": 2, "last_activity": 3.0, "status": "completed"}]
    in_memory = [start(machine, f"q{i}", now=10.0 + i)[0] for i in range(3)]

    def page(limit, before=None, before_id=None):
        rows = sorted((r for r in stored if before is None or (r["last_activity"], r["session_id"]) < (before, before_id)),
                      key=lambda r: (r["last_activity"], r["session_id"]), reverse=True)[:limit + 1]
        machine.load_summaries(rows)  # what the shell's read of this page found
        return reply(machine.handle_rpc(CLIENT, m.Sessions(1, limit, before, before_id), 20)).result

    listed, last = [], None
    while True:
        got = page(3, last and last.last_activity, last and last.session_id)
        listed += got.sessions
        if not got.more:
            break
        last = got.sessions[-1]
    assert [row.session_id for row in listed] == in_memory[::-1] + ["d6", "d5", "d4", "tie", "d3", "d2", "d1", "d0"]


def test_a_session_in_memory_is_listed_once_though_its_stored_row_is_older():
    """The database's row of a session active since (in memory, newer) is not listed again on the next page by
    its older time."""
    machine = make()
    sids = [start(machine, f"q{i}", now=10.0 + i)[0] for i in range(3)]
    stored = [{"session_id": sid, "title": "disk", "message_count": 1, "last_activity": 1.0 + i,
               "status": "completed"} for i, sid in enumerate(sids)]
    machine.load_summaries(stored)
    first = reply(machine.handle_rpc(CLIENT, m.Sessions(1, 2), 20)).result
    assert [row.session_id for row in first.sessions] == sids[:0:-1] and first.more
    machine.load_summaries([row for row in stored if row["last_activity"] < first.sessions[-1].last_activity])
    last = first.sessions[-1]
    second = reply(machine.handle_rpc(CLIENT, m.Sessions(1, 2, last.last_activity, last.session_id), 20)).result
    assert [row.session_id for row in second.sessions] == [sids[0]]


def test_a_session_loaded_after_a_restart_keeps_request_ids_and_has_no_live_reply():
    machine = make()
    machine.load_session({"session_id": "s", "title": "t", "system": None, "messages": [
        record("u1", "user", "q"),
        record("a1", "assistant", "partial", "streaming", client_request_id="req-9", generation_id="g1",
               prompt_hash="h")]})
    assert machine.sessions["s"].history[1].status == "interrupted"
    again = reply(machine.handle_rpc(CLIENT, m.Send(2, "s", "q", "req-9"), 1))
    assert again.result.message_id == "a1" and not machine.active


def test_session_settings_reach_the_job_and_the_prompt_hash_from_the_next_reply_on():
    machine = make()
    sid, r, first = start(machine, "q1")
    assert (job_of(first).params, job_of(first).stream) == ({}, None)
    done = reply(machine.handle_rpc(CLIENT, m.ConfigureSession(
        3, sid, None, None, "other-model", {"temperature": 0.5, "max_tokens": 64, "stream": False}), 100.1)).result
    assert (done.model, done.params, done.stream) == ("other-model", {"temperature": 0.5, "max_tokens": 64},
                                                               False)
    assert machine.active[r.generation_id].prompt.params == ()  # the reply under way keeps its frozen prompt
    finish(machine, r)
    _, second, out = start(machine, "q2", now=101, session_id=sid)
    job = job_of(out)
    assert (job.model, job.params, job.stream) == ("other-model", {"max_tokens": 64, "temperature": 0.5}, False)
    assert job.prompt_hash == prompt_hash(job.messages, "other-model", {"max_tokens": 64, "temperature": 0.5})
    machine.handle_rpc(CLIENT, m.ConfigureSession(4, sid, None, None, "", {"temperature": None, "stream": None}), 102)
    assert machine.sessions[sid].params == {"max_tokens": 64} and machine.sessions[sid].stream is None


def test_settings_asked_with_no_change_are_read_and_write_nothing():
    machine = make()
    sid, r, _ = start(machine, "q1")
    machine.handle_rpc(CLIENT, m.ConfigureSession(3, sid, "be terse"), 100.1)
    out = machine.handle_rpc(CLIENT, m.ConfigureSession(4, sid), 100.2)
    assert reply(out).result.system == "be terse"
    assert not [e for e in out if isinstance(e, ToPersister)]  # the page's Settings reads without a write
    changed = machine.handle_rpc(CLIENT, m.ConfigureSession(5, sid, None, None, None, {"temperature": 0.1}), 100.3)
    assert [e for e in changed if isinstance(e, ToPersister)]


def test_bad_session_settings_are_refused_and_change_nothing():
    machine = make()
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 0)).result.session_id
    for params in ({"temperature": 9}, {"temperature": True}, {"max_tokens": 0}, {"max_tokens": 2**31},
                   {"stream": "yes"}, {"continue_style": "guess"}, {"top_k": 3}):
        refused = reply(machine.handle_rpc(CLIENT, m.ConfigureSession(2, sid, None, None, None, params), 0))
        assert not refused.ok and "bad setting" in refused.error
    assert not reply(machine.handle_rpc(CLIENT, m.ConfigureSession(3, sid, None, -5), 0)).ok
    assert machine.sessions[sid].params == {} and machine.sessions[sid].stream is None


def test_session_settings_are_saved_with_the_session_and_read_back_after_it_left_memory():
    machine = make()
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 0)).result.session_id
    out = machine.handle_rpc(CLIENT, m.ConfigureSession(2, sid, "be brief", 300, "other-model", {
        "temperature": 0.25, "max_tokens": 64, "stream": False, "continue_style": "prefill"}), 1)
    (save,) = [e.msg for e in out if isinstance(e, ToPersister)]
    stored = {"session_id": sid, "title": "", "system": save.session_system,  # the row, as load_session reads it
              "max_input_tokens": save.session_max_input_tokens, "model": save.session_model,
              "settings": save.session_settings, "messages": []}
    again = make()  # a restarted coordinator, or this one after the session was evicted
    again.load_session(stored)
    sess = again.sessions[sid]
    assert (sess.system, sess.max_input_tokens, sess.model, sess.params, sess.stream, sess.continue_style) == (
        "be brief", 300, "other-model", {"temperature": 0.25, "max_tokens": 64}, False, "prefill")
    _, _, out = start(again, "q", now=2, session_id=sid)
    job = job_of(out)
    assert (job.model, job.params, job.stream) == ("other-model", {"temperature": 0.25, "max_tokens": 64}, False)


def test_stored_settings_that_config_could_not_have_set_are_left_at_their_defaults():
    machine = make()
    for settings in (None, "junk", {"params": "junk"}, {"params": {"temperature": 7, "top_k": 3, "max_tokens": None},
                                                         "stream": "yes", "continue_style": "guess"}):
        machine.load_session({"session_id": "s", "title": "", "system": None, "model": None,
                              "settings": settings, "messages": []})
        sess = machine.sessions.pop("s")
        assert (sess.params, sess.stream, sess.continue_style) == ({}, None, None)
    machine.load_session({"session_id": "s", "title": "", "system": None, "settings": {  # a row of before: no model
        "params": {"temperature": 0, "top_k": 3}, "stream": True}, "messages": []})
    assert (machine.sessions["s"].params, machine.sessions["s"].stream, machine.sessions["s"].model) == (
        {"temperature": 0}, True, None)


def finished_sessions(machine, count: int, unacked: tuple[int, ...] = ()) -> list[str]:
    """``count`` sessions with one completed reply each, the i-th at time i; the persister acks all but
    ``unacked``."""
    sessions = []
    for i in range(count):
        sid, r, out = start(machine, f"q{i}", now=float(i))
        outs = [out, delta(machine, r.generation_id, 1, "done", i + 0.1),
                machine.handle_event(m.GenDone(r.generation_id, 1, 4, "stop", 1, "server"), i + 0.2)]
        if i not in unacked:
            ack_all(machine, outs, i + 0.3)
        sessions.append(sid)
    return sessions


def test_idle_sessions_beyond_the_cap_leave_memory_busy_and_unpersisted_ones_stay():
    machine = make(max_cached_sessions=3)
    sessions = finished_sessions(machine, 4, unacked=(1,))  # the second one's persister never answers: it stays
    streaming, _, _ = start(machine, "still going", now=10.0)
    machine.tick(10.1)
    assert streaming in machine.sessions  # busy: never evicted
    assert sessions[1] in machine.sessions  # its finalize is not durable yet: kept
    assert sessions[0] not in machine.sessions and sessions[2] not in machine.sessions  # the oldest idle, durable
    assert sessions[3] in machine.sessions and len(machine.sessions) == 3
    assert set(machine.message_sessions.values()) == set(machine.sessions)
    machine.load_session({"session_id": sessions[0], "title": "q0", "system": None, "messages": []})
    assert sessions[0] in machine.sessions  # read back from the database when asked for


def test_the_budget_follows_the_context_a_live_generators_server_tells_and_forgets_a_lost_one():
    machine = make(max_input_tokens=8192, generator_dead_ms=3000, model_contexts={"mock-1": 1000})
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 100.0)).result.session_id

    def budget(now):
        return reply(machine.handle_rpc(CLIENT, m.Status(2, sid), now)).result.context.max_input_tokens

    assert budget(100.0) == 750  # CHATTER_MODEL_CONTEXT: 1000, less a quarter for the reply
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 60, 0, 0, 1, {"mock-1": 2048}), 100.0)
    machine.handle_event(m.GeneratorHeartbeat("gen-B", 60, 0, 0, 2, {"mock-1": 400}), 100.0)
    assert budget(100.0) == 300  # the servers say, the smallest wins
    machine.handle_event(m.GeneratorHeartbeat("gen-A", 60, 0, 0, 1, {"mock-1": 2048}), 103.5)
    machine.tick(104.0)  # gen-B silent past CHATTER_GENERATOR_DEAD_MS: lost, and what its server said with it
    assert budget(104.0) == 1536
    machine.handle_rpc(CLIENT, m.ConfigureSession(3, sid, None, None, None, {"max_tokens": 100}), 104.0)
    assert budget(104.0) == 1948  # the session's max_tokens is the room kept for the reply
    machine.handle_rpc(CLIENT, m.ConfigureSession(4, sid, None, 500, None, None), 104.0)
    assert budget(104.0) == 500  # the session's own budget wins over all


def test_a_session_read_back_from_the_database_counts_as_recently_used_and_the_least_recent_idle_go_first():
    machine = make(max_cached_sessions=3)
    sessions = finished_sessions(machine, 3)
    stored = MessageRecord(message_id="m-stored", session_id="stored-long-ago", role="user", content="old",
                           status="completed", created_at=-100.0)
    old = {"session_id": "stored-long-ago", "title": "t", "system": None, "updated_at": -100.0,
           "messages": [stored]}
    machine.load_session(old)  # asked for now (a client opened it): four cached, one over the cap
    sid, r, out = start(machine, "again", session_id=sessions[0], now=5.0)  # the oldest is active again
    machine.tick(5.1)
    assert set(machine.sessions) == {sessions[0], sessions[2], "stored-long-ago"}  # the least recent idle left
    assert set(machine.message_sessions.values()) == set(machine.sessions)


def test_a_session_leaves_memory_only_once_its_row_as_it_stands_is_durable_messages_or_not():
    machine = make(max_cached_sessions=1)
    (configured,) = finished_sessions(machine, 1)  # a reply, durable; then /config, whose save is not acked yet
    machine.handle_rpc(CLIENT, m.ConfigureSession(1, configured, params={"temperature": 1}), 10.0)

    def new(req_id, save=True):
        return reply(machine.handle_rpc(CLIENT, m.NewSession(req_id, save=save), 10.0 + req_id)).result.session_id

    acked, unacked, unsaved, newest = new(2), new(3), new(4, save=False), new(5)
    machine.handle_event(m.SessionSaved(acked, 12.0), 16.0)
    machine.tick(17.0)
    assert acked not in machine.sessions  # empty, and its row is durable: read back when asked for
    assert {configured, unacked, unsaved, newest} <= set(machine.sessions)  # not durable as they stand, or only here
    machine.handle_event(m.SessionSaved(configured, 10.0), 18.0)
    machine.handle_event(m.PersistRejected(unacked, "no room"), 18.0)  # never stored: it stays, only in memory
    machine.tick(19.0)
    assert configured not in machine.sessions and {unacked, unsaved, newest} <= set(machine.sessions)


def test_a_session_made_for_a_message_that_never_came_is_dropped_once_it_waited_past_the_keep_time():
    machine = make(max_cached_sessions=1)
    (durable,) = finished_sessions(machine, 1)

    def unsaved(req_id, now):
        return reply(machine.handle_rpc(CLIENT, m.NewSession(req_id, save=False), now)).result.session_id

    waited, fresh = unsaved(1, 10.0), unsaved(2, 10.0 + UNSAVED_SESSION_KEEP_S)
    machine.tick(10.0 + UNSAVED_SESSION_KEEP_S + 0.1)
    assert durable not in machine.sessions  # the durable one first, as always
    assert waited not in machine.sessions and fresh in machine.sessions  # over the cap and past its keep time
    assert machine.counters["unsaved_sessions_dropped"] == 1
    refused = reply(machine.handle_rpc(CLIENT, m.Send(3, waited, "late", "r-late"), 80.0))
    assert not refused.ok and "unknown session" in refused.error
