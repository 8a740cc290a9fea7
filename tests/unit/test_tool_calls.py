"""Tool calls, through the pure parts: the generator's reading of a chunk's tool_calls, the coordinator's machine
(to clients by offset, checkpointed, with the final row), the persister's core, and a client's view."""
from __future__ import annotations

from protocol import messages as m
from clients.view import APPLIED, GAP, IGNORED, ReplyView
from services.generator.rules import tool_call_deltas
from services.persister.core import PersisterCore, WriteToolCalls
from tests.unit.test_coordinator_machine import effects, make
from tests.unit.test_continue import streaming
from services.coordinator.machine import ToClients, ToPersister


def test_a_chunks_tool_calls_are_read_as_openai_streams_them_and_bad_ones_skipped():
    first = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]
    assert tool_call_deltas(first) == [(0, "call_1", "get_weather", "")]
    assert tool_call_deltas([{"index": 0, "function": {"arguments": '{"ci'}}]) == [(0, "", "", '{"ci')]
    assert tool_call_deltas([{"function": {"name": "f"}}, {"function": {"name": "g"}}]) == [(0, "", "f", ""),
                                                                                           (1, "", "g", "")]
    bad = ["text", {"index": -1, "id": "x"}, {"index": True, "id": "x"}, {"index": 10**9, "id": "x"},
           {"index": 0, "function": {"name": 7, "arguments": None}}, {"index": 0}]
    assert tool_call_deltas(bad) == []


def call_events(out):
    return [e.msg for e in effects(out, ToClients, m.StreamToolCall)]


def test_a_tool_call_goes_to_clients_by_offset_is_checkpointed_and_ends_in_the_final_row():
    machine = make()
    sid, gid, outs = streaming(machine)
    first = machine.handle_event(m.GenToolCall(gid, 0, "call_1", "get_weather", ""), 101.0)
    more = machine.handle_event(m.GenToolCall(gid, 0, "", "", '{"city": '), 101.1)
    last = machine.handle_event(m.GenToolCall(gid, 0, "", "", '"Oslo"}'), 101.2)
    events = call_events(first) + call_events(more) + call_events(last)
    assert [(e.index, e.call_id, e.name, e.offset, e.arguments) for e in events] == [
        (0, "call_1", "get_weather", 0, ""), (0, "call_1", "get_weather", 0, '{"city": '),
        (0, "call_1", "get_weather", 9, '"Oslo"}')]
    checkpoints = [e.msg for out in (first, more, last, machine.tick(102.0)) for e in effects(out, ToPersister, m.SaveToolCalls)]
    assert checkpoints and checkpoints[-1].tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    done = machine.handle_event(m.GenDone(gid, 2, 9, "tool_calls", 3, "server"), 102.1)
    (final,) = effects(done, ToPersister, m.Finalize)
    assert final.msg.tool_calls == checkpoints[-1].tool_calls
    snap = [e.msg for e in machine.handle_rpc(b"c", m.Snapshot(9, sid), 102.2) if not isinstance(e, ToPersister)]
    assert snap[0].result.tool_calls == checkpoints[-1].tool_calls


def test_a_tool_call_of_an_ended_or_unknown_generation_is_dropped():
    machine = make()
    sid, gid, outs = streaming(machine)
    machine.handle_event(m.GenDone(gid, 2, 9, "stop", 3, "server"), 101.0)
    assert call_events(machine.handle_event(m.GenToolCall(gid, 0, "c", "f", "{}"), 101.1)) == []
    assert call_events(machine.handle_event(m.GenToolCall("nobody", 0, "c", "f", "{}"), 101.1)) == []


def test_the_persister_checkpoints_the_calls_of_a_streaming_reply_only():
    core = PersisterCore()
    core.loaded = True
    create = m.CreateMessage("msg", "s", "t", None, "assistant", "", "streaming", 1.0, "g")
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    plan = core.plan([create, m.SaveToolCalls("msg", calls)])
    assert [w for w in plan.writes if isinstance(w, WriteToolCalls)] == [WriteToolCalls("msg", calls)]
    core.plan([m.Finalize("msg", "completed", 0, "h", {}, None, 0, None, calls)])
    assert not [w for w in core.plan([m.SaveToolCalls("msg", [])]).writes if isinstance(w, WriteToolCalls)]


def test_a_clients_view_joins_a_calls_arguments_by_offset_and_asks_for_a_snapshot_on_a_gap():
    view = ReplyView("g")

    def event(index, offset, text, call_id="c1", name="f"):
        return m.StreamToolCall("s", "g", index, call_id, name, offset, text)

    assert view.apply(event(0, 0, '{"a"')) == APPLIED
    assert view.apply(event(0, 0, '{"a"')) == IGNORED  # a replay
    assert view.apply(event(0, 4, ": 1}")) == APPLIED
    assert view.apply(event(0, 99, "x")) == GAP and view.apply(event(2, 0, "x")) == GAP
    assert view.tool_calls == [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]


def test_a_catch_up_after_the_coordinators_restart_brings_the_tool_calls_whole():
    """The generator keeps every call whole and sends them with the last piece of its catch-up."""
    from services.generator.machine import catch_up_parts
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]
    parts = catch_up_parts(m.ResumeGeneration("g", 0, 0), 3, "x" * 600_000, 0, "", calls)
    assert len(parts) == 3 and [p.tool_calls for p in parts] == [None, None, calls]
    assert [p.more for p in parts] == [True, True, False]


def test_the_generator_keeps_a_call_whole_and_sends_its_pieces():
    from services.generator.rules import Generation
    gen = Generation.of(m.Job("g", [], "m", {}, "h"), "auto")
    first = gen.take_tool_calls([{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}])
    more = gen.take_tool_calls([{"index": 0, "function": {"arguments": "{}"}}, {"index": 5, "id": "skipped"}])
    assert [(e.index, e.call_id, e.name, e.arguments) for e in first + more] == [(0, "c1", "f", ""), (0, "", "", "{}")]
    assert gen.tool_calls == [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
