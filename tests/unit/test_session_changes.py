"""Rename and delete in the pure coordinator, and a deletion in the persister and the store: answered once applied,
watchers told, nothing of a deleted session resent, kept or readable, and its text gone from the file."""
from __future__ import annotations

import sqlite3

from protocol import answers, messages as m
from services.coordinator.effects import ForgetReadCaches
from services.coordinator.machine import ReplyTo, ToClients, ToControl, ToPersister
from services.persister import core
from tests.unit.test_coordinator_machine import CLIENT, ack_all, delta, effects, make, reply, start
from tests.unit.test_persister_shell import heard, persister  # noqa: F401 (a fixture)


def replies(out) -> list[m.Reply]:
    return [e.msg for e in effects(out, ReplyTo)]


def changed(out) -> list[tuple[str, str, str]]:
    return [(e.msg.session_id, e.msg.change, e.msg.title) for e in effects(out, ToClients, m.SessionChanged)]


# ---------------------------------------------------------------- rename


def test_a_rename_is_answered_and_published_once_its_save_is_applied():
    machine = make()
    sid, first, out = start(machine, "line one\nline two")
    ack_all(machine, [out], 100.1)
    out = machine.handle_rpc(CLIENT, m.RenameSession(7, sid, "  Trip   to Lyon "), 101)
    assert replies(out) == [] and changed(out) == []  # not applied yet
    (save,) = effects(out, ToPersister, m.SaveSession)
    assert (save.msg.session_title, save.msg.session_title_set) == ("Trip to Lyon", True)
    done = machine.handle_event(m.SessionSaved(sid, save.msg.created_at), 101.1)
    (answer,) = replies(done)
    assert answer.ok and answer.result == answers.SessionRenamed(session_id=sid, title="Trip to Lyon")
    assert changed(done) == [(sid, "renamed", "Trip to Lyon")]
    assert machine.handle_event(m.SessionSaved(sid, save.msg.created_at), 101.2) == []  # answered once
    out = machine.handle_rpc(CLIENT, m.RenameSession(8, sid, ""), 102)
    (save,) = effects(out, ToPersister, m.SaveSession)
    assert (save.msg.session_title, save.msg.session_title_set) == ("line one", False)  # the automatic one again


def test_a_rename_waits_for_the_create_of_a_message_sent_before_its_save_was_applied():
    machine = make()
    sid, first, out = start(machine, "hello")
    ack_all(machine, [out], 100.1)
    machine.handle_event(m.GenDone(first.generation_id, 0, 0, "stop", 0, "server"), 100.2)
    out = machine.handle_rpc(CLIENT, m.RenameSession(7, sid, "Named"), 101)
    sent = machine.handle_rpc(CLIENT, m.Send(8, sid, "more", "r2"), 101.1)  # its create carries the title
    creates = effects(sent, ToPersister, m.CreateMessage)
    assert {c.msg.session_title for c in creates} == {"Named"} and all(c.msg.session_title_set for c in creates)
    assert replies(machine.handle_event(m.SessionSaved(sid, 0.0), 101.2)) == []  # an older save's answer
    done = ack_all(machine, [sent], 101.3)
    assert [r.result.title for r in replies(done)] == ["Named"]


def test_a_rename_refuses_what_cannot_be_stored_and_unknown_sessions():
    machine = make()
    sid, _, _ = start(machine, "hello")
    assert "NUL" in reply(machine.handle_rpc(CLIENT, m.RenameSession(7, sid, "a\x00b"), 101)).error
    assert "unknown session" in reply(machine.handle_rpc(CLIENT, m.RenameSession(8, "f" * 32, "x"), 101)).error


# ---------------------------------------------------------------- delete


def test_deleting_a_session_stops_its_reply_forgets_it_and_answers_once_purged():
    machine = make()
    keep, kept_reply, out_keep = start(machine, "keep me")
    sid, first, out = start(machine, "delete me")
    ack_all(machine, [out, out_keep], 100.1)
    delta(machine, first.generation_id, 1, "half", 100.2)
    out = machine.handle_rpc(CLIENT, m.DeleteSessions(9, [sid, sid, "f" * 32]), 100.3)
    assert replies(out) == []  # answered once the persister applied it
    assert m.CancelGeneration(first.generation_id) in [e.msg for e in effects(out, ToControl)]
    (purge,) = effects(out, ToPersister, m.PurgeSessions)
    assert purge.msg.session_ids == [sid, "f" * 32]
    kinds = [type(e.msg).__name__ for e in effects(out, ToPersister)]
    assert kinds.index("PurgeSessions") > kinds.index("Finalize"), "the purge goes after what it deletes"
    assert sid not in machine.sessions and first.generation_id not in machine.active
    assert not machine.finalizing
    for request in (m.History(10, sid), m.Send(11, sid, "again", "r9"), m.RenameSession(12, sid, "x")):
        assert f"session {sid} was deleted" in reply(machine.handle_rpc(CLIENT, request, 100.4)).error
    machine.load_session({"session_id": sid, "title": "", "system": None, "messages": []})  # a read in flight
    assert sid not in machine.sessions
    resent = [e.msg for e in effects(machine.tick(200.0), ToPersister) if not isinstance(e.msg, m.InterruptOrphans)]
    assert resent == [purge.msg], "only the purge is resent"
    done = machine.handle_event(m.SessionsPurged(purge.msg.op_id, [sid]), 200.1)
    (answer,) = replies(done)
    assert answer.result == answers.SessionsDeleted(deleted=[sid])
    assert changed(done) == [(sid, "deleted", "")]
    assert [e for e in done if isinstance(e, ForgetReadCaches)]
    assert machine.handle_event(m.SessionsPurged(purge.msg.op_id, [sid]), 200.2) == []  # a resend's answer
    assert [e for e in effects(machine.tick(300.0), ToPersister) if not isinstance(e.msg, m.InterruptOrphans)] == []
    listed = reply(machine.handle_rpc(CLIENT, m.Sessions(13), 300.1)).result.sessions
    assert [row.session_id for row in listed] == [keep]


def test_a_session_only_in_memory_is_deleted_too():
    machine = make()
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1, save=False), 100)).result.session_id
    out = machine.handle_rpc(CLIENT, m.DeleteSessions(2, [sid]), 100.1)
    (purge,) = effects(out, ToPersister, m.PurgeSessions)
    (answer,) = replies(machine.handle_event(m.SessionsPurged(purge.msg.op_id, []), 100.2))
    assert answer.result.deleted == [sid]


def test_the_persister_core_plans_a_purge_after_the_appends_it_held():
    hold = core.AppendHold(10.0)
    appends = [m.Append("a1", 0, "text")]
    assert hold.take(appends, 0.0) == []  # held, waiting for company
    purge = m.PurgeSessions(["s1"], "op")
    assert hold.take([purge], 0.1) == [*appends, purge]
    persister_core = core.PersisterCore()
    persister_core.load([], {}, [None, None])
    plan = persister_core.plan([m.CreateMessage("a1", "s1", "", None, "assistant", "", "streaming", 1.0, "g"),
                                m.Append("a1", 0, "text"), purge])
    assert [type(w).__name__ for w in plan.writes] == ["UpsertSession", "InsertMessage", "InsertChunks", "PurgeRows"]
    persister_core.forget_messages(["a1"])
    assert "a1" not in persister_core.open and not persister_core.first_chunk


def test_the_persister_deletes_every_row_and_the_logs_text_and_zeroes_what_it_freed(persister):  # noqa: F811
    shell, acks = persister
    marker, keep = "zqmarkerdeleted01", "zqmarkerkept0001"
    shell.commit([m.CreateMessage("u1", "s1", f"title {marker}", f"system {marker}", "user", f"hi {marker}",
                                  "completed", 1.0),
                  m.CreateMessage("a1", "s1", f"title {marker}", None, "assistant", "", "streaming", 1.0, "g1"),
                  m.CreateMessage("k1", "s2", "kept", None, "assistant", "", "streaming", 1.0, "g2")])
    for i in range(40):  # one commit's appends of both replies packed in one row of the log
        shell.commit([m.Append("a1", i * 35, f"{marker} {i:011d} {'x' * 5}"),
                      m.Append("k1", i * 35, f"{keep} {i:012d} {'y' * 5}")])
    shell.commit([m.Finalize("a1", "completed", 1400, "h", {}, None)])
    heard(acks)
    path = shell.db.database
    before = b"".join(open(name, "rb").read() for name in (path, path + "-wal"))
    assert marker.encode() in before, "never written in plain: this test could not fail"
    shell.commit([m.PurgeSessions(["s1", "nope"], "op-1")])
    answered = [msg for msg in heard(acks) if isinstance(msg, m.SessionsPurged)]
    assert answered == [m.SessionsPurged("op-1", ["s1"])]
    with sqlite3.connect(path) as conn:
        assert conn.execute("select count(*) from message where session_id = 's1'").fetchone() == (0,)
        assert conn.execute("select count(*) from session where id = 's1'").fetchone() == (0,)
    from services import store
    entries = [e for row in store.CHUNK_LOG[0].select().tuples() for e in store.log_entries(row[:6])]
    entries += [e for row in store.CHUNK_LOG[1].select().tuples() for e in store.log_entries(row[:6])]
    assert not [e for e in entries if e[1] == "a1"] and len([e for e in entries if e[1] == "k1"]) == 40
    raw = b"".join(open(name, "rb").read() for name in (path, path + "-wal"))
    assert marker.encode() not in raw
    assert store.streamed_texts("k1")[0].count(keep) == 40, "the other reply's text went too"


def test_a_rename_still_waiting_when_its_session_is_deleted_is_refused_at_once():
    machine = make()
    sid, _, out = start(machine, "hello")
    ack_all(machine, [out], 100.1)
    machine.handle_rpc(b"renamer", m.RenameSession(7, sid, "Named"), 101)
    out = machine.handle_rpc(CLIENT, m.DeleteSessions(8, [sid]), 101.1)
    (refusal,) = [e.msg for e in effects(out, ReplyTo) if e.client == b"renamer"]
    assert (refusal.req_id, refusal.ok, refusal.error) == (7, False, f"session {sid} was deleted")
