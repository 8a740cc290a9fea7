from __future__ import annotations

from hypothesis import given, strategies as st

from services.mock_llm.script import (Scenario, reply_text, reply_tokens, request_key, request_keys, scenario_for,
                                      tokens_of_key, turn_key)


def test_the_reply_is_a_pure_function_of_the_request():
    msgs = [{"role": "user", "content": "hi"}]
    assert reply_text(msgs, "m", 30) == reply_text(msgs, "m", 30)
    assert reply_text(msgs, "m", 30) != reply_text([{"role": "user", "content": "ho"}], "m", 30)
    assert reply_text(msgs, "m", 30) != reply_text(msgs, "other", 30)
    assert reply_tokens(msgs, "m", 30)[:10] == reply_tokens(msgs, "m", 10)  # a prefix is a shorter reply
    assert len(reply_tokens(msgs, "m", 7)) == 7


def test_scenario_from_directive_body_field_and_defaults():
    base = Scenario(tokens=5)
    body = {"messages": [{"role": "user", "content": "x [[mock tokens=9 fail_status=503 no_finish]]"}]}
    s = scenario_for(body, base)
    assert (s.tokens, s.fail_status, s.no_finish, s.tps) == (9, 503, True, base.tps)
    s = scenario_for(body | {"mock": {"tokens": 3, "bogus": 1}}, base)
    assert s.tokens == 3
    assert scenario_for({"messages": []}, base) == base


def test_request_key_ignores_transport_fields():
    body = {"messages": [{"role": "user", "content": "a"}], "model": "m"}
    assert request_key(body) == request_key(body | {"stream": True, "stream_options": {"include_usage": True}})


def test_the_thinking_is_a_pure_function_of_the_request_and_not_the_answer():
    from services.mock_llm.script import reasoning_text, reasoning_tokens
    msgs = [{"role": "user", "content": "think first"}]
    assert reasoning_text(msgs, "m", 20) == reasoning_text(msgs, "m", 20)
    assert reasoning_tokens(msgs, "m", 20)[:5] == reasoning_tokens(msgs, "m", 5)
    assert reasoning_text(msgs, "m", 20) != reply_text(msgs, "m", 20)


def test_a_reasoning_scenario_names_one_of_the_three_forms():
    import pytest
    body = {"messages": [{"role": "user", "content": "x [[mock reasoning_tokens=7 reasoning_field=think_tags]]"}]}
    s = scenario_for(body, Scenario())
    assert (s.reasoning_tokens, s.reasoning_field) == (7, "think_tags")
    assert scenario_for({"messages": [{"role": "user", "content": "[[mock reasoning_tokens=3]]"}]},
                        Scenario()).reasoning_field == "reasoning_content"
    with pytest.raises(ValueError, match="reasoning_field must be one of"):
        scenario_for({"messages": [{"role": "user", "content": "[[mock reasoning_field=thoughts]]"}]}, Scenario())


def test_shared_ticks_never_wake_early_and_a_cancelled_sleeper_leaves_the_others_sleeping_in_its_tick():
    import asyncio
    import time

    from services.mock_llm.__main__ import TICK_S, Ticks

    async def run():
        ticks = Ticks()
        due = (int(time.monotonic() / TICK_S) + 20 + 0.1) * TICK_S  # a tenth into a tick, 20 ticks ahead
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, when: float) -> None:
            await ticks.until(when)
            woke.append((name, time.monotonic()))
        dues = {"gone": due, "a": due, "b": due + TICK_S / 3, "later": due + 0.01}
        tasks = {name: asyncio.create_task(sleeper(name, when)) for name, when in dues.items()}
        await asyncio.sleep(0)
        assert len(ticks.due) == 2  # a, b and gone share one tick: one timer
        assert min(ticks.due) * TICK_S >= due  # its timer is not before any of theirs
        tasks["gone"].cancel()
        await asyncio.wait(tasks.values(), timeout=2)
        assert tasks["gone"].cancelled() and not ticks.due
        return dict(woke), dues
    woke, dues = asyncio.run(run())
    assert set(woke) == {"a", "b", "later"}
    assert all(woke[name] >= dues[name] for name in woke)  # never early


_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                  "content": st.text(max_size=8)})


@given(st.lists(_MESSAGE, max_size=4), st.one_of(st.text(max_size=6), st.none(), st.integers()),
       st.integers(0, 30))
def test_the_servers_keys_are_the_request_and_turn_keys_and_its_seed_the_replys(messages, model, n):
    """The server hashes a request once where it can (``request_keys``), and with a string model its key seeds
    the reply (services/mock_llm/__main__.py, ``completions``)."""
    body = {"messages": messages, "model": model, "stream": True}
    assert request_keys(body) == (request_key(body), turn_key(body))
    if isinstance(model, str):
        assert tokens_of_key(request_key(body), n) == reply_tokens(messages, model, n)


def test_the_markdown_mode_answers_the_whole_document_and_continues_it_exactly():
    from services.mock_llm.script import MARKDOWN, MARKDOWN_TOKENS, continued_tokens
    body = {"messages": [{"role": "user", "content": "format it [[mock markdown]]"}]}
    assert scenario_for(body, Scenario()).markdown and not scenario_for({"messages": []}, Scenario()).markdown
    assert "".join(MARKDOWN_TOKENS) == MARKDOWN
    for needle in ("```python", "```javascript", "| Python |", "     - from", "数据流", "🙂", "<script>",
                   "javascript:alert"):
        assert needle in MARKDOWN
    for cut in (0, 1, 57, len(MARKDOWN) // 2, len(MARKDOWN) - 1):
        trailing = body["messages"] + [{"role": "assistant", "content": MARKDOWN[:cut]}]
        assert MARKDOWN[:cut] + "".join(continued_tokens(trailing, "m", 40, MARKDOWN[:cut], markdown=True)) == MARKDOWN
