"""Tools through the coordinator (the gateway's tool calls): a request's tools go upstream as part of its prompt,
a reply's calls are kept, and tools' results come back as messages of their own that the next prompt carries,
each checked against the calls it answers. Pure: the machine's effects."""
from __future__ import annotations

import pytest

from protocol import messages as m
from services.coordinator.machine import ToGenerators, ToPersister
from services.coordinator.prompt import prompt_hash
from tests.unit.test_branches import ask, job
from tests.unit.test_coordinator_machine import CLIENT, ack_all, effects, make, reply

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}]


def called(machine, now=100.0):
    """A session whose reply called get_weather: (session id, the send's result, every effect so far)."""
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), now)).result.session_id
    out = machine.handle_rpc(CLIENT, m.Send(2, sid, "weather in Oslo?", "k1", tools=WEATHER,
                                            tool_choice="auto"), now)
    started = reply(out).result
    out += machine.handle_event(m.GenStarted(started.generation_id, "gen-A"), now)
    out += machine.handle_event(m.GenToolCall(started.generation_id, 0, "call_1", "get_weather", '{"city":'), now)
    out += machine.handle_event(m.GenToolCall(started.generation_id, 0, "", "", ' "Oslo"}'), now)
    out += machine.handle_event(m.GenDone(started.generation_id, 0, 0, "tool_calls", 9, "server"), now + 0.5)
    out += ack_all(machine, [out], now + 1)
    return sid, started, out


def test_the_tools_go_upstream_with_the_prompt_and_its_hash_covers_them():
    machine = make()
    sid, started, out = called(machine)
    sent = job(out[:len(out)])
    assert sent.params == {"tools": WEATHER, "tool_choice": "auto"}
    assert sent.prompt_hash == prompt_hash(sent.messages, sent.model, sent.params) == started.prompt_hash
    assert sent.prompt_hash != prompt_hash(sent.messages, sent.model, {})
    reply_create = [c.msg for c in effects(out, ToPersister, m.CreateMessage) if c.msg.role == "assistant"][0]
    assert reply_create.params == sent.params  # stored with the reply: its prompt is built again exactly
    record = machine.sessions[sid].record(started.message_id)
    assert record.tool_calls == [{"id": "call_1", "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]


def test_a_tools_result_is_a_message_of_its_own_and_the_next_prompt_carries_it_after_the_call():
    machine = make()
    sid, first, _ = called(machine)
    answer, out = ask(machine, m.Send(3, sid, "", "k2", tool_results=[m.ToolOutput("call_1", "sunny, 21 C")],
                                      tools=WEATHER), 102)
    assert answer.ok, answer.error
    creates = [c.msg for c in effects(out, ToPersister, m.CreateMessage)]
    assert [(c.role, c.content, c.tool_call_id, c.parent_id) for c in creates[:1]] == [
        ("tool", "sunny, 21 C", "call_1", first.message_id)]
    assert creates[1].role == "assistant" and creates[1].parent_id == creates[0].message_id
    sent = job(out)
    assert sent.messages == [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"}]
    # the preview, built again from the session once the reply is over, is what was sent, with its params
    gen = answer.result.generation_id
    done = machine.handle_event(m.GenStarted(gen, "gen-A"), 103)
    done += machine.handle_event(m.GenDelta(gen, 1, "Sunny.", 1, 103), 103)
    done += machine.handle_event(m.GenDone(gen, 1, 6, "stop", 2, "server"), 103.5)
    ack_all(machine, [out, done], 104)
    preview = reply(machine.handle_rpc(CLIENT, m.Preview(9, answer.result.message_id), 105)).result
    assert preview.exact and preview.messages == sent.messages and preview.params == sent.params
    assert "[tool result for call_1]\nsunny, 21 C" in preview.preview and "tools: get_weather" in preview.preview
    # regenerate answers the tool's result again (not the user's question)
    again, out = ask(machine, m.Regenerate(10, sid, "k3"), 106)
    assert again.ok and job(out).messages[-1] == sent.messages[-1]


def test_a_result_and_a_question_together_go_in_that_order():
    machine = make()
    sid, first, _ = called(machine)
    answer, out = ask(machine, m.Send(3, sid, "and tomorrow?", "k2", tool_results=[m.ToolOutput("call_1", "sunny")]),
                      102)
    assert answer.ok
    assert [(x["role"], x["content"]) for x in job(out).messages[-2:]] == [("tool", "sunny"),
                                                                           ("user", "and tomorrow?")]
    assert [c.msg.role for c in effects(out, ToPersister, m.CreateMessage)] == ["tool", "user", "assistant"]


@pytest.mark.parametrize("msg, words", [
    (m.Send(3, "", "", "k", tool_results=[m.ToolOutput("call_9", "x")]), "made no call 'call_9'"),
    (m.Send(3, "", "", "k", tool_results=[m.ToolOutput("call_1", "x"), m.ToolOutput("call_1", "y")]),
     "answered twice"),
    (m.Send(3, "", "", "k", tool_results=[m.ToolOutput("call_1", "x\x00")]), "NUL"),
    (m.Send(3, "", "q", "k", tools=[{"type": "function", "function": {"name": "bad name!"}}]), "function.name"),
    (m.Send(3, "", "q", "k", tools=[{"type": "web_search"}]), "function tools"),
    (m.Send(3, "", "q", "k", tools=WEATHER, tool_choice={"type": "function", "function": {"name": "nope"}}),
     "tool_choice"),
    (m.Send(3, "", "q", "k", tools=[{"type": "function", "function": {"name": "f", "description": "x" * 300_000}}]),
     "KiB"),
    (m.Send(3, "", "", "k"), "empty message"),
])
def test_a_wrong_tool_or_result_is_refused_in_words_and_changes_nothing(msg, words):
    machine = make()
    sid, first, _ = called(machine)
    before = [r.message_id for r in machine.sessions[sid].history]
    answer, out = ask(machine, m.Send(**{f: getattr(msg, f) for f in msg.__struct_fields__} | {"session_id": sid}),
                      102)
    assert not answer.ok and words in answer.error
    assert [r.message_id for r in machine.sessions[sid].history] == before
    assert not effects(out, ToPersister) and not effects(out, ToGenerators)


def test_a_result_after_a_reply_that_called_nothing_is_refused():
    machine = make()
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 100)).result.session_id
    answer, _ = ask(machine, m.Send(2, sid, "", "k", tool_results=[m.ToolOutput("call_1", "x")]), 100)
    assert not answer.ok and "made no call" in answer.error


def test_a_call_reaches_clients_after_the_words_before_it_even_when_they_were_being_coalesced():
    machine = make(flush_ms=10_000, flush_chars=10_000)
    sid = reply(machine.handle_rpc(CLIENT, m.NewSession(1), 100)).result.session_id
    started = reply(machine.handle_rpc(CLIENT, m.Send(2, sid, "q", "k", tools=WEATHER), 100)).result
    gen = started.generation_id
    machine.handle_event(m.GenStarted(gen, "gen-A"), 100)
    out = machine.handle_event(m.GenDelta(gen, 1, "Let me look.", 1, 100), 100)
    out += machine.handle_event(m.GenDelta(gen, 2, " One moment.", 2, 100.001), 100.001)
    out += machine.handle_event(m.GenToolCall(gen, 0, "call_1", "get_weather", "{}"), 100.002)
    to_clients = [e.msg for e in out if type(e).__name__ == "ToClients"
                  and isinstance(e.msg, (m.StreamDelta, m.StreamToolCall))]
    assert isinstance(to_clients[-1], m.StreamToolCall)
    assert "".join(x.text for x in to_clients if isinstance(x, m.StreamDelta)) == "Let me look. One moment."
