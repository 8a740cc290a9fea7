"""Tool calls through the gateway with the real ``openai`` SDK, against real processes and the mock: a request's
function tools reach the upstream, the calls stream as ``function_call`` items (resumable inside their arguments,
like text), a ``function_call_output`` goes back to the model after the call it answers, and Chat Completions
does the same in its own shape."""
from __future__ import annotations

import json
import textwrap

import openai
import pytest

from services.mock_llm.script import reply_text, tool_call_arguments
from tests.integration.test_gateway import MODEL, gateway, sdk  # noqa: F401 (gateway: a fixture)

SEARCH = {"type": "function", "name": "search", "description": "search the notes",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}
SEARCH_CHAT = {"type": "function", "function": {k: v for k, v in SEARCH.items() if k != "type"}}


def request_for(stack, last_content: str) -> dict:
    """The newest upstream request whose last message says ``last_content``."""
    return [e for e in stack.journal() if e["body"]["messages"][-1].get("content") == last_content][-1]["body"]


def arguments_of(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")


def test_a_function_call_streams_resumes_and_its_output_goes_back_to_the_model(gateway):
    client = sdk(gateway)
    text = "find my notes [[mock tokens=4 tool_call=search]]"
    events = list(client.responses.create(model=MODEL, input=text, tools=[SEARCH], tool_choice="auto", stream=True))
    sent = request_for(gateway, text)
    assert sent["tools"] == [SEARCH_CHAT] and sent["tool_choice"] == "auto"  # Chat Completions' shape upstream
    expected = tool_call_arguments(sent["messages"], MODEL)
    final = events[-1].response
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert (call.name, call.arguments, call.status) == ("search", expected, "completed")
    assert arguments_of(events) == expected and final.status == "completed"
    assert [e.type for e in events if e.type.startswith("response.function_call")][-1] == \
        "response.function_call_arguments.done"
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(set(numbers))
    # a resume from inside the arguments: event N ends where its number says, so the rest begins there exactly
    (added,) = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    half = len(expected) // 2
    cut = added.sequence_number + half
    rest = list(client.responses.retrieve(final.id, stream=True, starting_after=cut))
    assert arguments_of(rest) == expected[half:]
    assert [e.sequence_number for e in rest if "delta" not in e.type] == [
        e.sequence_number for e in events if e.sequence_number > cut and "delta" not in e.type]
    assert [e.sequence_number for e in rest if "delta" in e.type] == [
        [e for e in events if e.type == "response.function_call_arguments.delta"][-1].sequence_number]
    stored = gateway.cli_json("history", final.conversation.id)["messages"][-1]
    assert stored["tool_calls"][0]["function"] == {"name": "search", "arguments": expected}
    # the tool's result goes back, after the call it answers, and the model answers it in words
    answer = client.responses.create(model=MODEL, previous_response_id=final.id, tools=[SEARCH], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "3 notes found"}])
    back = request_for(gateway, "3 notes found")["messages"]
    assert back[-1] == {"role": "tool", "content": "3 notes found", "tool_call_id": call.call_id}
    assert back[-2]["tool_calls"][0]["id"] == call.call_id
    assert answer.status == "completed" and answer.output_text == reply_text(back, MODEL, 4)
    assert not [item for item in answer.output if item.type == "function_call"]
    items = client.responses.input_items.list(answer.id, order="asc").data
    assert [item.type for item in items] == ["message", "message", "function_call", "function_call_output"]
    assert items[-1].output == "3 notes found" and items[2].arguments == expected
    history = gateway.cli_json("history", final.conversation.id)["messages"]
    assert [(h["role"], h["content"]) for h in history[-2:]] == [("tool", "3 notes found"),
                                                                 ("assistant", answer.output_text)]
    preview = gateway.cli_json("preview", answer.id.removeprefix("resp_"))
    assert preview["messages"] == back and preview["exact"]
    assert f"[tool result for {call.call_id}]" in gateway.cli("history", final.conversation.id).stdout.decode()
    exported = gateway.cli("export", final.conversation.id, "--format", "markdown").stdout.decode()
    assert f"## Tool result for `{call.call_id}`" in exported and "3 notes found" in exported
    openai_shape = json.loads(gateway.cli("export", final.conversation.id, "--format", "openai").stdout)
    assert openai_shape["messages"][-2:] == [back[-1], {"role": "assistant", "content": answer.output_text}]
    # a result for a call that was never made is refused, and nothing is asked upstream
    asked = len(gateway.journal())
    with pytest.raises(openai.BadRequestError, match="made no call"):
        client.responses.create(model=MODEL, previous_response_id=final.id, input=[
            {"type": "function_call_output", "call_id": "call_nope", "output": "x"}])
    with pytest.raises(openai.BadRequestError, match="web_search"):
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert len(gateway.journal()) == asked


def test_a_whole_conversation_with_its_calls_given_in_the_input_is_seeded_then_answered(gateway):
    client = sdk(gateway)
    call = {"type": "function_call", "call_id": "call_a", "name": "search", "arguments": '{"query": "x"}'}
    answer = client.responses.create(model=MODEL, tools=[SEARCH], input=[
        {"role": "user", "content": "look it up [[mock tokens=3]]"}, call,
        {"type": "function_call_output", "call_id": "call_a", "output": "found x"}])
    back = request_for(gateway, "found x")["messages"]
    assert [msg["role"] for msg in back] == ["user", "assistant", "tool"]
    assert back[1]["tool_calls"] == [{"id": "call_a", "type": "function",
                                      "function": {"name": "search", "arguments": '{"query": "x"}'}}]
    assert answer.output_text == reply_text(back, MODEL, 3)


def test_chat_completions_pass_tools_stream_the_calls_and_take_a_tool_message_back(gateway):
    client = sdk(gateway)
    text = "look it up [[mock tokens=3 tool_call=search]]"
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}], tools=[SEARCH_CHAT], stream=True)
    session = raw.headers["X-Chatter-Session"]
    chunks = list(raw.parse())
    expected = tool_call_arguments(request_for(gateway, text)["messages"], MODEL)
    pieces = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert pieces[0].id and pieces[0].function.name == "search"
    assert "".join(p.function.arguments or "" for p in pieces) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    messages = [{"role": "user", "content": text},
                {"role": "assistant", "content": content, "tool_calls": [
                    {"id": pieces[0].id, "type": "function", "function": {"name": "search", "arguments": expected}}]},
                {"role": "tool", "tool_call_id": pieces[0].id, "content": "two hits"}]
    done = client.chat.completions.create(model=MODEL, messages=messages, tools=[SEARCH_CHAT],
                                          extra_headers={"X-Chatter-Session": session})
    back = request_for(gateway, "two hits")["messages"]
    assert back[-1] == {"role": "tool", "content": "two hits", "tool_call_id": pieces[0].id}
    assert done.choices[0].message.content == reply_text(back, MODEL, 3)
    assert len(gateway.cli_json("history", session)["messages"]) == 4
    whole = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "again " + text}],
                                           tools=[SEARCH_CHAT])
    (call,) = whole.choices[0].message.tool_calls
    assert whole.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments)["limit"] == 3


def test_the_docs_tool_example_runs(gateway):
    from tools.spawn import REPO
    readme = (REPO / "docs" / "HTTP.md").read_text()
    code = textwrap.dedent(readme.split("- **Tool calls.**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0])
    code = code.replace('input="notes on Oslo?"', 'input="notes on Oslo? [[mock tokens=3 tool_call=search]]"')
    scope: dict = {"client": sdk(gateway)}
    exec(compile(code, "docs/HTTP.md", "exec"), scope)  # noqa: S102 (the docs' own example, as a reader runs it)
    assert scope["answer"].status == "completed" and scope["answer"].output_text
    assert request_for(gateway, "3 notes found")["messages"][-1]["tool_call_id"] == scope["call"].call_id
