"""Sessions as trees in the pure coordinator (DESIGN.md, "Sessions are trees"): edit, regenerate as a sibling,
switch, the prompt and its preview along the active branch, deleting a branch, fork, the tree's view, and rows of an
earlier version read as one branch."""
from __future__ import annotations

import msgspec
import pytest

from clients.manage import draw_tree
from protocol import answers, messages as m
from services.coordinator.machine import ReplyTo, ToClients, ToControl, ToGenerators, ToPersister
from services.coordinator.prompt import prompt_hash, rebuild
from services.coordinator.sessions import SessionState
from tests.unit.test_coordinator_machine import CLIENT, ack_all, delta, effects, make, reply, start
from tests.unit.test_persister_shell import heard, persister  # noqa: F401 (a fixture)


def finish(machine, r, text, now):
    out = delta(machine, r.generation_id, 1, text, now)
    out += machine.handle_event(m.GenDone(r.generation_id, 1, len(text), "stop", 1, "server"), now)
    return out


def job(out) -> m.Job:
    (j,) = effects(out, ToGenerators)
    return j.msg


def ask(machine, msg, now):
    """The answer (None: deferred until applied) and the effects."""
    out = machine.handle_rpc(CLIENT, msg, now)
    answered = effects(out, ReplyTo)
    return (answered[0].msg if answered else None), out


def conversation(machine):
    """q1 -> a1 -> q2 -> a2, every operation acked: (session id, [q1, a1, q2, a2] ids)."""
    sid, r1, out1 = start(machine, "q1", now=100)
    out1 += finish(machine, r1, "a1", 100.5)
    _, r2, out2 = start(machine, "q2", now=101, session_id=sid)
    out2 += finish(machine, r2, "a2", 101.5)
    ack_all(machine, [out1, out2], 102)
    return sid, [r.message_id for r in machine.sessions[sid].history]


def path_of(machine, sid, now=200.0):
    history = reply(machine.handle_rpc(CLIENT, m.History(90, sid), now)).result
    return [(h.role, h.content, h.sibling_index, h.sibling_count) for h in history.messages]


def apply_save(machine, out, now):
    """The persister's answer to the SaveSession in ``out``: returns what the coordinator did then."""
    (save,) = effects(out, ToPersister, m.SaveSession)
    return machine.handle_event(m.SessionSaved(save.msg.session_id, save.msg.created_at), now), save.msg


# ---------------------------------------------------------------- edit


def test_an_edit_is_a_new_branch_beside_the_old_one_and_its_prompt_follows_it():
    machine = make()
    sid, (q1, a1, q2, a2) = conversation(machine)
    answer, out = ask(machine, m.EditMessage(5, sid, "3", "q2 again", "e-1"), 103)  # 3: q2, as history numbers it
    assert answer.ok
    creates = [c.msg for c in effects(out, ToPersister, m.CreateMessage)]
    assert [(c.role, c.parent_id) for c in creates] == [("user", a1), ("assistant", creates[0].message_id)]
    assert job(out).messages == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                 {"role": "user", "content": "q2 again"}]
    assert path_of(machine, sid) == [("user", "q1", 0, 1), ("assistant", "a1", 0, 1), ("user", "q2 again", 1, 2),
                                     ("assistant", "", 0, 1)]
    sess = machine.sessions[sid]
    assert [r.content for r in sess.lineage(a2)] == ["q1", "a1", "q2", "a2"]  # the old branch, whole


def test_an_edit_of_the_first_message_makes_a_second_first_message():
    machine = make()
    sid, (q1, *_) = conversation(machine)
    answer, out = ask(machine, m.EditMessage(5, sid, q1[:6], "q1 again", "e-1"), 103)  # a unique start of its id
    assert answer.ok and job(out).messages == [{"role": "user", "content": "q1 again"}]
    assert [c.msg.parent_id for c in effects(out, ToPersister, m.CreateMessage)][0] == ""
    assert path_of(machine, sid)[0] == ("user", "q1 again", 1, 2)


@pytest.mark.parametrize("ref, words", [("2", "model's reply"), ("9", "no message 9"), ("0", "no message 0"),
                                        ("nope", "no message nope"), ("id", "matches")])
def test_an_edit_of_what_is_not_your_message_is_refused_and_changes_nothing(ref, words):
    machine = make()
    sid, _ = conversation(machine)
    before = list(machine.sessions[sid].history)
    answer, out = ask(machine, m.EditMessage(5, sid, ref, "x", "e-1"), 103)
    assert not answer.ok and words in answer.error
    assert machine.sessions[sid].history == before and effects(out, ToPersister) == []


def test_an_edit_while_a_reply_streams_is_refused_and_the_reply_goes_on():
    machine = make()
    sid, r, _ = start(machine, "q1")
    answer, out = ask(machine, m.EditMessage(5, sid, "1", "other", "e-1"), 100.2)
    assert not answer.ok and "streaming" in answer.error and effects(out, ToControl) == []
    assert sid in {g.session_id for g in machine.active.values()}


# ---------------------------------------------------------------- regenerate and switch


def test_regenerate_keeps_the_old_reply_as_a_sibling_that_can_be_switched_back_to():
    machine = make()
    sid, (q1, a1, q2, a2) = conversation(machine)
    answer, out = ask(machine, m.Regenerate(5, sid, "r-1"), 103)
    new = answer.result.message_id
    out += finish(machine, answer.result, "a2 better", 103.5)
    ack_all(machine, [out], 103.6)
    assert path_of(machine, sid)[-1] == ("assistant", "a2 better", 1, 2)
    switched, out = ask(machine, m.SwitchBranch(6, sid, "4", 0), 104)  # message 4's first version
    assert switched is None  # answered once applied
    done, save = apply_save(machine, out, 104.1)
    assert save.active_leaf == a2
    (answer,) = [e.msg for e in effects(done, ReplyTo)]
    assert answer.result == answers.BranchSwitched(session_id=sid, leaf_id=a2)
    assert [(e.msg.change, e.msg.message_id) for e in effects(done, ToClients, m.SessionChanged)] == [("branched", a2)]
    assert path_of(machine, sid)[-1] == ("assistant", "a2", 0, 2)
    _, out = ask(machine, m.Send(7, sid, "q3", "s-3"), 105)  # the next turn follows the branch switched to
    assert job(out).messages[-2:] == [{"role": "assistant", "content": "a2"}, {"role": "user", "content": "q3"}]
    assert new in machine.sessions[sid].children[q2]


def test_switching_to_a_message_goes_to_the_newest_end_of_its_branches():
    machine = make()
    sid, (q1, a1, q2, a2) = conversation(machine)
    _, out = ask(machine, m.EditMessage(5, sid, "1", "q1 again", "e-1"), 103)
    ack_all(machine, [out], 103.1)
    answer, out = ask(machine, m.SwitchBranch(6, sid, q1), 104)
    apply_save(machine, out, 104.1)
    assert machine.sessions[sid].leaf == a2
    for bad, words in ((m.SwitchBranch(7, sid, q1, 2), "has 2 versions"), (m.SwitchBranch(8, sid, "zz"), "no message")):
        answer, out = ask(machine, bad, 105)
        assert not answer.ok and words in answer.error and effects(out, ToPersister) == []


def test_a_switch_waits_for_the_creates_it_follows_so_an_older_row_never_lands_after_it():
    machine = make()
    sid, r, sent = start(machine, "q1")
    finish(machine, r, "a1", 100.5)
    answer, out = ask(machine, m.SwitchBranch(6, sid, "1"), 101)
    done, _ = apply_save(machine, out, 101.1)
    assert effects(done, ReplyTo) == []  # the creates, which carry the leaf too, are not applied yet
    done = ack_all(machine, [sent], 101.2)
    assert [e.msg.result.leaf_id for e in effects(done, ReplyTo)] == [r.message_id]


def test_a_reply_streams_on_its_own_branch_to_its_end_while_the_user_switches():
    machine = make()
    sid, (q1, a1, q2, a2) = conversation(machine)
    regen, out = ask(machine, m.Regenerate(5, sid, "r-1"), 103)
    ack_all(machine, [out], 103.1)
    _, out = ask(machine, m.SwitchBranch(6, sid, "4", 0), 103.2)
    apply_save(machine, out, 103.3)
    out = finish(machine, regen.result, "streamed on", 103.5)
    assert effects(out, ToControl) == []  # not cancelled
    assert machine.sessions[sid].record(regen.result.message_id).content == "streamed on"
    assert path_of(machine, sid)[-1] == ("assistant", "a2", 0, 2)


# ---------------------------------------------------------------- the preview stays exact


def test_every_reply_rebuilds_exactly_the_prompt_it_was_sent_after_edits_elsewhere_in_the_tree():
    machine = make()
    sid, r, out = start(machine, "q1")
    sent = {r.message_id: job(out)}
    finish(machine, r, "a1", 100.5)
    steps = [m.Send(3, sid, "q2", "s2"), m.EditMessage(4, sid, "1", "q1 b", "e1"), m.Send(5, sid, "q3", "s3"),
             m.Regenerate(6, sid, "g1"), m.EditMessage(7, sid, "3", "q3 b", "e2")]
    for i, step in enumerate(steps):
        answer, out = ask(machine, step, 101 + i)
        assert answer.ok, answer.error
        sent[answer.result.message_id] = job(out)
        finish(machine, answer.result, f"reply {i}", 101.5 + i)
    sess = machine.sessions[sid]
    assert len(sess.children[""]) == 2 and len(sess.history) == 11
    for message_id, j in sent.items():
        record = sess.record(message_id)
        messages, _, problem = rebuild(sess.lineage(message_id), record)
        assert problem is None and messages == j.messages
        assert prompt_hash(messages, record.model, record.params) == record.prompt_hash == j.prompt_hash


# ---------------------------------------------------------------- delete a branch


def test_deleting_a_branch_takes_its_subtree_stops_its_reply_and_leaves_the_rest():
    machine = make()
    sid, (q1, a1, q2, a2) = conversation(machine)
    edit, out = ask(machine, m.EditMessage(5, sid, "3", "q2 b", "e-1"), 103)
    delta(machine, edit.result.generation_id, 1, "half", 103.1)
    user_b = machine.sessions[sid].record(edit.result.message_id).parent_id
    answer, out = ask(machine, m.DeleteBranch(6, sid, user_b), 104)
    assert m.CancelGeneration(edit.result.generation_id) in [e.msg for e in effects(out, ToControl)]
    (purge,) = [e.msg for e in effects(out, ToPersister, m.PurgeMessages)]
    assert purge.message_ids == [user_b, edit.result.message_id] and purge.active_leaf == a2
    assert [r.message_id for r in machine.sessions[sid].history] == [q1, a1, q2, a2]
    done = machine.handle_event(m.SessionsPurged(purge.op_id, purge.message_ids), 104.1)
    (answer,) = [e.msg for e in effects(done, ReplyTo)]
    assert answer.result == answers.BranchDeleted(session_id=sid, deleted=purge.message_ids, leaf_id=a2)
    assert [(e.msg.change, e.msg.message_id) for e in effects(done, ToClients, m.SessionChanged)] == [("branched", a2)]
    assert effects(done, ToClients, m.Final) == []  # the stopped reply's final is never published
    assert path_of(machine, sid)[2] == ("user", "q2", 0, 1)


def test_deleting_the_first_message_empties_the_session_but_keeps_it():
    machine = make()
    sid, (q1, *_) = conversation(machine)
    _, out = ask(machine, m.DeleteBranch(6, sid, "1"), 104)
    (purge,) = [e.msg for e in effects(out, ToPersister, m.PurgeMessages)]
    assert len(purge.message_ids) == 4 and purge.active_leaf is None
    assert machine.sessions[sid].history == [] and path_of(machine, sid) == []


# ---------------------------------------------------------------- fork


def test_a_fork_copies_the_branch_up_to_a_message_with_prompts_that_still_rebuild_exactly():
    machine = make()
    sid, (q1, a1, q2, a2) = conversation(machine)
    answer, out = ask(machine, m.ForkSession(5, sid, "4"), 103)
    creates = [c.msg for c in effects(out, ToPersister, m.CreateMessage)]
    assert [(c.role, c.content, c.status) for c in creates] == [
        ("user", "q1", "completed"), ("assistant", "a1", "completed"), ("user", "q2", "completed"),
        ("assistant", "a2", "completed")]
    assert creates[1].copied.stats["tokens"] == 1 and creates[0].copied.content_hash is None
    fork_id = creates[0].session_id
    assert fork_id != sid and [c.parent_id for c in creates] == ["", *(c.message_id for c in creates[:-1])]
    assert effects(out, ReplyTo) == []
    assert effects(ack_all(machine, [out], 103.1), ReplyTo) == []  # and the fork's own row, new now
    done, save = apply_save(machine, out, 103.2)
    assert (save.session_id, save.created_at, save.active_leaf) == (fork_id, 103, creates[-1].message_id)
    (answer,) = [e.msg for e in effects(done, ReplyTo)]
    assert answer.result == answers.SessionForked(session_id=fork_id, source_id=sid, message_count=4)
    fork = machine.sessions[fork_id]
    assert fork.title == "q1 (fork)"
    for source, copy in zip(machine.sessions[sid].history, fork.history):
        if source.role == "assistant":
            original = rebuild(machine.sessions[sid].lineage(source.message_id), source)
            assert rebuild(fork.lineage(copy.message_id), copy) == (original[0], [], None)
            assert copy.prompt_hash == source.prompt_hash
    _, out = ask(machine, m.Send(6, fork_id, "q3", "s"), 104)  # it goes on like any session
    assert [msg["content"] for msg in job(out).messages] == ["q1", "a1", "q2", "a2", "q3"]


def test_a_fork_leaves_out_a_reply_still_streaming_and_refuses_one_named():
    machine = make()
    sid, (q1, a1, q2, a2) = conversation(machine)
    regen, _ = ask(machine, m.Regenerate(5, sid, "r"), 103)
    _, out = ask(machine, m.ForkSession(6, sid), 103.1)
    assert [c.msg.content for c in effects(out, ToPersister, m.CreateMessage)] == ["q1", "a1", "q2"]
    answer, out = ask(machine, m.ForkSession(7, sid, regen.result.message_id), 103.2)
    assert not answer.ok and "still streaming" in answer.error and effects(out, ToPersister) == []


# ---------------------------------------------------------------- the tree, and rows of an earlier version


def test_the_tree_lists_every_message_marks_the_active_branch_and_draws_compactly():
    machine = make()
    sid, (q1, a1, q2, a2) = conversation(machine)
    edit, out = ask(machine, m.EditMessage(5, sid, "3", "q2 b", "e-1"), 103)
    finish(machine, edit.result, "a2 b", 103.5)
    tree = reply(machine.handle_rpc(CLIENT, m.SessionTree(6, sid), 104)).result
    assert [(n.line, n.active) for n in tree.nodes] == [("q1", True), ("a1", True), ("q2", False), ("a2", False),
                                                        ("q2 b", True), ("a2 b", True)]
    lines = draw_tree(tree.nodes)
    assert [line.split()[-1] for line in lines] == ["q1", "a1", "q2", "a2", "b", "b"]
    assert lines[2].startswith("      ├─ ") and lines[4].startswith("*   3 └─ ")
    assert lines[3].startswith("      │  ") and lines[5].startswith("*   4    ")
    paged = reply(machine.handle_rpc(CLIENT, m.SessionTree(7, sid, 4), 104)).result
    assert [n.line for n in paged.nodes] == ["q2 b", "a2 b"] and paged.next is None and paged.total == 6


def record(message_id, role, content, superseded=False, status="completed"):
    return m.MessageRecord(message_id=message_id, session_id="s", role=role, content=content, status=status,
                           created_at=1.0, superseded=superseded)


def test_rows_of_an_earlier_version_read_as_one_branch_with_superseded_replies_as_siblings():
    rows = [record("u1", "user", "q1"), record("a1", "assistant", "first", superseded=True),
            record("a1b", "assistant", "second"), record("u2", "user", "q2"), record("a2", "assistant", "a2")]
    sess = SessionState.from_stored({"session_id": "s", "title": "t", "system": None, "messages": rows})
    assert [(r.message_id, r.parent_id) for r in sess.history] == [
        ("u1", ""), ("a1", "u1"), ("a1b", "u1"), ("u2", "a1b"), ("a2", "u2")]
    assert sess.leaf == "a2" and [r.message_id for r in sess.path()] == ["u1", "a1b", "u2", "a2"]
    assert sess.siblings(sess.record("a1")) == ["a1", "a1b"]
    stored = SessionState.from_stored({"session_id": "s", "title": "t", "system": None, "active_leaf": "gone",
                                       "messages": [record("u1", "user", "q1")]})
    assert stored.leaf == "u1"  # a leaf that is not there: the newest message


# ---------------------------------------------------------------- the persister and the store


def test_the_store_keeps_the_tree_the_leaf_copies_and_deletes_a_branch_text_and_all(persister):  # noqa: F811
    from services import store
    shell, acks = persister
    marker = "zqbranchmarker77"
    shell.commit([m.CreateMessage("u1", "s1", "t", None, "user", "q1", "completed", 1.0, parent_id=""),
                   m.CreateMessage("a1", "s1", "t", None, "assistant", "a1", "completed", 1.1, parent_id="u1",
                                   copied=m.Copied("thought", {"tokens": 1}, None, "h1", None)),
                   m.CreateMessage("u2", "s1", "t", None, "user", f"q2 {marker}", "completed", 1.2, parent_id="a1"),
                   m.CreateMessage("a2", "s1", "t", None, "assistant", "", "streaming", 1.3, "g2", parent_id="u2")])
    for i in range(20):
        shell.commit([m.Append("a2", i * 24, f"{marker} {i:07d}")])
    shell.commit([m.CreateMessage("u3", "s1", "t", None, "user", "q2 b", "completed", 1.4, parent_id="a1")])
    heard(acks)
    loaded = store.load_session("s1")
    assert loaded["active_leaf"] == "u3"
    assert [(r.message_id, r.parent_id) for r in loaded["messages"]] == [
        ("u1", ""), ("a1", "u1"), ("u2", "a1"), ("a2", "u2"), ("u3", "a1")]
    assert (loaded["messages"][1].reasoning, loaded["messages"][1].stats) == ("thought", {"tokens": 1})
    shell.commit([m.SaveSession("s1", "t", None, None, 2.0, active_leaf="a2")])
    assert store.load_session("s1")["active_leaf"] == "a2"
    shell.commit([m.PurgeMessages("s1", ["u2", "a2", "nope"], "u3", "op-b")])
    assert [msg for msg in heard(acks) if isinstance(msg, m.SessionsPurged)] == [
        m.SessionsPurged("op-b", ["u2", "a2"])]
    loaded = store.load_session("s1")
    assert [r.message_id for r in loaded["messages"]] == ["u1", "a1", "u3"] and loaded["active_leaf"] == "u3"
    shell.commit([m.CreateMessage("a3", "s1", "t", None, "assistant", "", "streaming", 3.0, "g3", parent_id="u3")])
    positions = [row[0] for row in shell.db.execute_sql("select position from message order by position")]
    assert positions == sorted(set(positions)) and len(positions) == 4  # after the last, never one twice
    path = shell.db.database
    raw = b"".join(open(name, "rb").read() for name in (path, path + "-wal"))
    assert marker.encode() not in raw


# ---------------------------------------------------------------- import, in the pure coordinator


def exported(machine, sid):
    page = reply(machine.handle_rpc(CLIENT, m.ExportSession(80, sid), 300)).result
    assert page.next is None
    return page


def test_an_import_in_parts_writes_each_message_final_keeps_the_leaf_and_adds_nothing_twice():
    machine = make()
    sid, (q1, a1, q2, a2) = conversation(machine)
    _, out = ask(machine, m.SwitchBranch(5, sid, "2"), 103)  # the leaf is a1's branch end: a2 (one branch)
    apply_save(machine, out, 103.1)
    page = exported(machine, sid)
    other = make()
    header = msgspec.structs.replace(page.session, active_leaf=a1)  # an older leaf, to see it kept
    part, out = ask(other, m.ImportSession(1, header, page.messages[:3], last=False), 400)
    assert part.result == answers.ImportPart(session_id=sid, received=3) and effects(out, ToPersister) == []
    answer, out = ask(other, m.ImportSession(2, header, page.messages[3:]), 401)
    assert answer is None  # answered once applied
    creates = [e.msg for e in effects(out, ToPersister, m.CreateMessage)]
    assert [c.message_id for c in creates] == [q1, a1, q2, a2]
    assert {c.session_active_leaf for c in creates} == {a1} and all(c.generation_id is None for c in creates)
    assert creates[1].copied.stats == page.messages[1].stats
    done = ack_all(other, [out], 402)
    (answered,) = [e.msg for e in effects(done, ReplyTo)]
    assert answered.result == answers.SessionImported(session_id=sid, created=4, existing=0)
    assert other.sessions[sid].leaf == a1
    again, out = ask(other, m.ImportSession(3, header, page.messages), 403)
    assert again.result == answers.SessionImported(session_id=sid, created=0, existing=4)
    assert effects(out, ToPersister) == []


@pytest.mark.parametrize("change, words", [
    ({"role": "system"}, "message 2 ('id3'): role must be user, assistant or tool"),
    ({"parent_id": "elsewhere"}, "message 2 ('id3'): parent_id 'elsewhere' is not a message before it"),
    ({"message_id": ""}, "message 2 (''): message_id must be 1 to 64 printable characters"),
    ({"message_id": "id2"}, "message 2 ('id2'): message_id is given twice"),
    ({"content": "nul \x00"}, "message 2 ('id3'): content contains a NUL character"),
    ({"created_at": float("nan")}, "created_at is not a finite number"),
])
def test_an_import_with_a_wrong_field_is_refused_naming_it_and_changes_nothing(change, words):
    machine = make()
    sid, _ = conversation(machine)
    page = exported(machine, sid)
    messages = list(page.messages)
    messages[1] = msgspec.structs.replace(messages[1], **change)
    other = make()
    answer, out = ask(other, m.ImportSession(1, page.session, messages), 400)
    assert not answer.ok and words in answer.error
    assert out == [ReplyTo(CLIENT, answer)] and sid not in other.sessions


def test_a_reply_exported_while_streaming_comes_back_interrupted_with_its_text():
    machine = make()
    sid, r, _ = start(machine, "q1")
    delta(machine, r.generation_id, 1, "half a", 100.1)
    page = exported(machine, sid)
    assert page.messages[1].content == "half a" and page.messages[1].status == "streaming"
    other = make()
    _, out = ask(other, m.ImportSession(1, page.session, page.messages), 400)
    (create,) = [e.msg for e in effects(out, ToPersister, m.CreateMessage) if e.msg.role == "assistant"]
    assert (create.status, create.content, create.copied.error) == (
        "interrupted", "half a", "interrupted: exported while it was streaming")


def test_a_request_retried_after_its_reply_was_deleted_starts_afresh():
    machine = make()
    sid, r, out = start(machine, "q1")
    finish(machine, r, "a1", 100.5)
    ack_all(machine, [out], 100.6)
    _, out = ask(machine, m.Send(5, sid, "q2", "same-key"), 101)
    ask(machine, m.DeleteBranch(6, sid, "3"), 102)
    again, _ = ask(machine, m.Send(7, sid, "q2", "same-key"), 103)
    assert again.ok and machine.sessions[sid].record(again.result.message_id) is not None


def test_a_user_message_stores_the_chain_of_its_conversation_and_a_row_without_one_is_worked_out():
    from protocol.conversation import turn_chain
    machine = make()
    sid, (q1, a1, q2, a2) = conversation(machine)
    sess = machine.sessions[sid]
    expected = turn_chain(turn_chain(turn_chain("", "user", "q1"), "assistant", "a1"), "user", "q2")
    assert sess.record(q2).chain == expected and sess.record(a1).chain is None  # a reply's is not stored
    sess.record(q1).chain = sess.record(q2).chain = None  # rows of an earlier version
    assert sess.chain_of(a2) == turn_chain(expected, "assistant", "a2") and sess.record(q2).chain == expected
    _, out = ask(machine, m.Send(7, sid, "q3", "k-3"), 103)
    (create,) = [c.msg for c in effects(out, ToPersister, m.CreateMessage) if c.msg.role == "user"]
    assert create.chain == turn_chain(turn_chain(expected, "assistant", "a2"), "user", "q3")
