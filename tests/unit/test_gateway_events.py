"""The Responses API's events of a reply, numbered from the data (clients/gateway/events.py): any cut of the
texts into deltas, any resume point, before and after the reply ends, gives exactly the texts once, in order, and
the same numbers."""
from __future__ import annotations

import dataclasses

from hypothesis import given, strategies as st

from clients.gateway.events import ReplyState, events_after, last_number

TEXT = st.text(alphabet=st.sampled_from("ab é🙂\n"), max_size=30)


def state(**kw) -> ReplyState:
    return ReplyState(message_id="m1", session_id="s1", model="mock-1", created_at=1.0, **kw)


def texts(events: list[dict]) -> tuple[str, str]:
    reasoning = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    answer = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    return reasoning, answer


def grown(reasoning: str, text: str, cuts: list[int], status: str) -> list[ReplyState]:
    """The reply as a gateway sees it grow: the thinking, then the answer, in pieces cut at ``cuts``, then ended."""
    whole = reasoning + text
    points = sorted({min(c, len(whole)) for c in cuts} | {0, len(whole)})
    out = [state(status="queued")]
    for end in points[1:]:
        out.append(state(reasoning=whole[:min(end, len(reasoning))], text=whole[len(reasoning):end],
                         status="streaming"))
    out.append(state(reasoning=reasoning, text=text, status=status, finish_reason="stop"))
    return out


def streamed(steps: list[ReplyState]) -> tuple[list[dict], int, list[int]]:
    """What a client live from the start got as the reply grew: its events, the last number, and every number
    (strictly increasing, checked)."""
    live, last = [], -1
    for step in steps:
        fresh = events_after(step, last)
        live += fresh
        last = fresh[-1]["sequence_number"] if fresh else last
    numbers = [e["sequence_number"] for e in live]
    assert numbers == sorted(set(numbers))
    return live, last, numbers


@given(TEXT, TEXT, st.lists(st.integers(0, 60), max_size=8), st.sampled_from(["completed", "cancelled", "error"]))
def test_live_events_and_every_resume_give_the_texts_exactly_once_with_the_same_numbers(reasoning, text, cuts, status):
    steps = grown(reasoning, text, cuts, status)
    live, last, numbers = streamed(steps)  # strictly increasing
    assert texts(live) == (reasoning, text)
    final = steps[-1]
    whole = events_after(final, -1)
    assert last == last_number(final) == whole[-1]["sequence_number"]
    assert [e["type"] for e in live if "delta" not in e] == [e["type"] for e in whole if "delta" not in e]
    assert whole[-1]["type"] == {"completed": "response.completed", "cancelled": "response.incomplete",
                                 "error": "response.failed"}[status]
    for resume_after in [-1, *numbers]:  # a client that had every event up to N, from the live stream
        had = [e for e in live if e["sequence_number"] <= resume_after]
        rest = events_after(final, resume_after)
        assert all(e["sequence_number"] > resume_after for e in rest)
        assert texts(had + rest) == (reasoning, text)


@given(TEXT.filter(bool), TEXT.filter(bool), st.data())
def test_a_resume_inside_a_delta_cuts_it_where_the_number_falls(reasoning, text, data):
    final = state(reasoning=reasoning, text=text, status="completed", finish_reason="stop")
    start = data.draw(st.integers(2, len(reasoning) + 1))  # the client had the thinking up to start - 2
    rest = events_after(final, start)
    (delta,) = [e for e in rest if e["type"] == "response.reasoning_text.delta"]
    assert delta["delta"] == reasoning[start - 2:] and delta["sequence_number"] == 2 + len(reasoning)


def test_the_layout_waits_for_the_first_text_and_a_length_cut_is_incomplete():
    assert [e["type"] for e in events_after(state(status="queued"), -1)] == ["response.created",
                                                                             "response.in_progress"]
    cut = state(text="abc", status="completed", finish_reason="length", stats={"tokens": 3, "tokens_source": "server"})
    events = events_after(cut, -1)
    assert [e["sequence_number"] for e in events] == [0, 1, 2, 3, 6, 7, 8, 9, 10]
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1]["response"]["usage"]["chatter"]["output_tokens_source"] == "server"
    assert dataclasses.replace(cut, status="error", error="boom").status == "error"


def call(index: int, arguments: str) -> dict:
    return {"id": f"call_{index}", "type": "function", "function": {"name": f"f{index}", "arguments": arguments}}


def grown_with_calls(reasoning: str, text: str, arguments: list[str], cuts: list[int]) -> list[ReplyState]:
    """A reply that thinks, writes, then calls tools, as a gateway sees it grow: each call appears once the stream
    reaches it (with no arguments yet), and its arguments grow in pieces cut at ``cuts``."""
    marks, at = [], len(reasoning) + len(text)
    for args in arguments:  # where each call begins in the whole stream, and where its arguments end
        marks.append((at, at + len(args)))
        at += len(args) + 1  # +1: the call's own first piece (its id and name)
    points = sorted({min(c, at) for c in cuts} | {0, at})
    out = [state(status="queued")]
    for end in points[1:]:
        calls = [call(i, args[:max(0, end - begin - 1)]) for i, (args, (begin, _)) in
                 enumerate(zip(arguments, marks)) if end > begin]
        out.append(state(reasoning=reasoning[:end], text=text[:max(0, end - len(reasoning))],
                         tool_calls=calls, status="streaming"))
    out.append(state(reasoning=reasoning, text=text, tool_calls=[call(i, a) for i, a in enumerate(arguments)],
                     status="completed", finish_reason="tool_calls"))
    return out


def joined_calls(events: list[dict]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in events:
        if e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call":
            out.setdefault(e["item"]["id"], "")
        if e["type"] == "response.function_call_arguments.delta":
            out[e["item_id"]] += e["delta"]
    return out


@given(TEXT, TEXT, st.lists(TEXT, min_size=1, max_size=3), st.lists(st.integers(0, 120), max_size=10))
def test_tool_calls_stream_and_resume_exactly_once_with_the_same_numbers(reasoning, text, arguments, cuts):
    steps = grown_with_calls(reasoning, text, arguments, cuts)
    live, last, numbers = streamed(steps)
    final = steps[-1]
    whole = events_after(final, -1)
    expected = {f"fc_m1_{i}": args for i, args in enumerate(arguments)}
    assert joined_calls(live) == joined_calls(whole) == expected
    assert texts(live) == (reasoning, text)
    assert [e["type"] for e in live if "delta" not in e] == [e["type"] for e in whole if "delta" not in e]
    done = [e for e in whole if e["type"] == "response.function_call_arguments.done"]
    assert [(e["arguments"], e["name"]) for e in done] == [(a, f"f{i}") for i, a in enumerate(arguments)]
    assert whole[-1]["type"] == "response.completed" and last == whole[-1]["sequence_number"]
    output = whole[-1]["response"]["output"]
    assert [item["type"] for item in output] == (["reasoning"] * bool(reasoning) + ["message"] * bool(text)
                                                 + ["function_call"] * len(arguments))
    for resume_after in [-1, *numbers]:
        had = [e for e in live if e["sequence_number"] <= resume_after]
        rest = events_after(final, resume_after)
        assert joined_calls(had + rest) == expected and texts(had + rest) == (reasoning, text)
