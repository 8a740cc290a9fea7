"""The gateway's users in the pure coordinator: added and revoked once stored, a token known only by its hash,
sessions owned by the user who made them."""
from __future__ import annotations

import hashlib

from protocol import answers, messages as m
from services.coordinator.machine import ReplyTo, ToPersister
from tests.unit.test_coordinator_machine import CLIENT, effects, make, reply


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def answered(out):
    return [e.msg for e in effects(out, ReplyTo)]


def test_a_user_is_added_once_stored_signs_in_by_its_tokens_hash_and_is_revoked():
    machine = make()
    machine.users.loaded([])
    out = machine.handle_rpc(CLIENT, m.AddUser(1, "ada", digest("tok-a")), 10)
    (save,) = [e.msg for e in effects(out, ToPersister, m.SaveUser)]
    assert answered(out) == [] and save.token_hash == digest("tok-a") and "tok-a" not in repr(save)
    (done,) = answered(machine.handle_event(m.UserSaved(save.op_id), 10.1))
    assert done.result == answers.UserChanged(user=answers.UserView(name="ada", created_at=10, revoked_at=None))
    assert reply(machine.handle_rpc(CLIENT, m.WhoIs(2, digest("tok-a")), 11)).result == answers.SignedIn(name="ada")
    for bad, words in ((m.AddUser(3, "ada", digest("other")), "already"),
                       (m.AddUser(4, "bob", digest("tok-a")), "another user's"),
                       (m.WhoIs(5, digest("nope")), "unknown or revoked"), (m.RevokeUser(6, "zed"), "no user zed")):
        refused = reply(machine.handle_rpc(CLIENT, bad, 12))
        assert not refused.ok and words in refused.error
    out = machine.handle_rpc(CLIENT, m.RevokeUser(7, "ada"), 13)
    (save,) = [e.msg for e in effects(out, ToPersister, m.SaveUser)]
    assert save.revoked_at == 13
    machine.handle_event(m.UserSaved(save.op_id), 13.1)
    assert not reply(machine.handle_rpc(CLIENT, m.WhoIs(8, digest("tok-a")), 14)).ok
    listed = reply(machine.handle_rpc(CLIENT, m.Users(9), 15)).result
    assert [(u.name, u.revoked_at) for u in listed.users] == [("ada", 13)]


def test_a_save_is_resent_until_the_persister_answers():
    machine = make()
    machine.users.loaded([])
    out = machine.handle_rpc(CLIENT, m.AddUser(1, "ada", digest("t")), 10)
    (save,) = [e.msg for e in effects(out, ToPersister, m.SaveUser)]
    assert save in [e.msg for e in machine.tick(20)]  # past the resend time
    machine.handle_event(m.UserSaved(save.op_id), 20.1)
    assert save not in [e.msg for e in machine.tick(40)]


def test_a_session_made_for_a_user_is_owned_by_it_in_every_write_and_answer():
    machine = make()
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1, owner="ada"), 10)).result.session_id
    out = machine.handle_rpc(CLIENT, m.Send(2, sid, "hi", "r"), 11)
    assert {c.msg.session_owner for c in effects(out, ToPersister, m.CreateMessage)} == {"ada"}
    assert reply(machine.handle_rpc(CLIENT, m.History(3, sid), 12)).result.owner == "ada"
    message_id = reply(out).result.message_id
    assert reply(machine.handle_rpc(CLIENT, m.ReplyOf(4, message_id), 12)).result.owner == "ada"
