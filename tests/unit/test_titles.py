"""Titles the model writes (CHATTER_AUTO_TITLE=1), in the pure coordinator: asked once after a session's first
reply, as a generation that is never a message; its text becomes the title unless one was given by hand."""
from __future__ import annotations

from protocol import messages as m
from services.coordinator.machine import ToClients, ToGenerators, ToPersister
from services.coordinator.titles import ASK, clean
from tests.unit.test_coordinator_machine import CLIENT, ack_all, delta, effects, make, reply, start


def finish(machine, r, text, now):
    out = delta(machine, r.generation_id, 1, text, now)
    return out + machine.handle_event(m.GenDone(r.generation_id, 1, len(text), "stop", 1, "server"), now)


def title_job(out) -> m.Job | None:
    jobs = [e.msg for e in effects(out, ToGenerators) if e.msg.messages[0]["content"] == ASK]
    return jobs[0] if jobs else None


def test_after_the_first_reply_the_model_writes_the_title_and_nothing_joins_the_conversation():
    machine = make(auto_title=True)
    sid, r, out = start(machine, "Plan a weekend in Lyon, please")
    done = finish(machine, r, "Day one: the old town.", 100.5)
    job = title_job(done)
    assert job is not None and "Plan a weekend in Lyon" in job.messages[1]["content"]
    assert "Day one" in job.messages[1]["content"] and job.params == {"max_tokens": 24}
    machine.handle_event(m.GenStarted(job.generation_id, "gen-A"), 100.6)
    batch = m.GenDeltaBatch([m.DeltaItem(job.generation_id, 1, '"A weekend', 2, 100.7),
                             m.DeltaItem(r.generation_id, 9, "late", 1, 100.7)])  # a batch may mix generations
    machine.handle_event(batch, 100.7)
    machine.handle_event(m.GenDelta(job.generation_id, 2, ' in Lyon."\nMore text', 3, 100.8), 100.8)
    out = machine.handle_event(m.GenDone(job.generation_id, 2, 20, "stop", 5, "server"), 100.9)
    (save,) = [e.msg for e in effects(out, ToPersister, m.SaveSession)]
    assert (save.session_title, save.session_title_set) == ("A weekend in Lyon", False)
    assert [(e.msg.change, e.msg.title) for e in effects(out, ToClients, m.SessionChanged)] == [
        ("renamed", "A weekend in Lyon")]
    history = reply(machine.handle_rpc(CLIENT, m.History(5, sid), 101)).result.messages
    assert [h.role for h in history] == ["user", "assistant"]  # the title's generation is no message
    _, r2, _ = start(machine, "and Paris?", now=102, session_id=sid)
    assert title_job(finish(machine, r2, "Sure.", 102.5)) is None  # once per session


def test_a_title_given_by_hand_is_kept_and_without_the_setting_nothing_is_asked():
    machine = make(auto_title=True)
    sid, r, out = start(machine, "hello")
    ack_all(machine, [out], 100.1)
    machine.handle_rpc(CLIENT, m.RenameSession(3, sid, "Mine"), 100.2)
    assert title_job(finish(machine, r, "hi", 100.5)) is None
    plain = make()
    _, r, _ = start(plain, "hello")
    assert title_job(finish(plain, r, "hi", 100.5)) is None
    machine = make(auto_title=True)
    sid, r, _ = start(machine, "hello")
    job = title_job(finish(machine, r, "hi", 100.5))
    machine.handle_rpc(CLIENT, m.RenameSession(4, sid, "Named meanwhile"), 100.6)
    out = machine.handle_event(m.GenDelta(job.generation_id, 1, "Model title", 2, 100.7), 100.7)
    out += machine.handle_event(m.GenDone(job.generation_id, 1, 11, "stop", 2, "server"), 100.8)
    assert effects(out, ToClients, m.SessionChanged) == [] and machine.sessions[sid].title == "Named meanwhile"


def test_a_models_title_is_cleaned_to_one_short_line():
    assert clean('  \n## **"Trip to Lyon."**\nsecond line') == "Trip to Lyon"
    assert clean("«Voyage à Lyon»") == "Voyage à Lyon"
    assert len(clean("word " * 40)) <= 60 and clean("") == ""
