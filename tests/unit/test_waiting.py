"""``services.waiting.FirstTokenWait``: whether a reply still waits for its first token, with its candidates
bounded by the live replies even when nobody asks (a loop busy for hours never paces, so never asks)."""
from __future__ import annotations

from hypothesis import given, strategies as st

from services.waiting import FirstTokenWait


@given(st.lists(st.tuples(st.sampled_from(["start", "token", "end", "ask"]), st.integers(0, 7)), max_size=80))
def test_the_answer_is_whether_a_live_reply_has_no_token_and_the_set_stays_bounded(plan):
    live: dict[str, bool] = {}  # generation id -> has a token
    wait = FirstTokenWait(lambda gen_id: gen_id in live and not live[gen_id])
    for step, n in plan:
        gen_id = f"g{n}"
        if step == "start" and gen_id not in live:
            live[gen_id] = False
            wait.add(gen_id)
        elif step == "token" and gen_id in live:
            live[gen_id] = True
        elif step == "end" and gen_id in live:
            del live[gen_id]
            wait.ended(gen_id)
        elif step == "ask":
            assert wait() == any(not token for token in live.values())
        assert wait.candidates <= set(live)


def test_a_thousand_replies_that_ended_unasked_leave_nothing_behind():
    wait = FirstTokenWait(lambda gen_id: True)
    for i in range(1000):
        wait.add(f"g{i}")
        wait.ended(f"g{i}")
    assert wait.candidates == set() and not wait()
