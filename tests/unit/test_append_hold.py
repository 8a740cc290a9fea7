"""The persister's append hold, pure (``services/persister/core.py: AppendHold``): a checkpoint append waits up to
its hold for a commit something else needs; nothing is lost, nothing of one message is reordered, and a finalize
or an interrupt never goes before the text it ends."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from protocol import messages as m
from services.persister.core import AppendHold


def append(message_id: str, offset: int = 0, text: str = "x") -> m.Append:
    return m.Append(message_id, offset, text)


def finalize(message_id: str) -> m.Finalize:
    return m.Finalize(message_id, "completed", 1, "h", {})


def create(message_id: str) -> m.CreateMessage:
    return m.CreateMessage(message_id, "s1", "t", None, "assistant", "", "streaming", 1.0, "g-" + message_id)


def test_appends_alone_wait_for_their_hold_then_go_in_order():
    hold = AppendHold(0.25)
    a1, b1, a2 = append("a", 0), append("b", 0), append("a", 1)
    assert hold.take([a1, b1], 10.0) == [] and hold.due_in(10.0) == 0.25
    assert hold.take([a2], 10.1) == [] and round(hold.due_in(10.1), 6) == 0.15  # the oldest sets the time
    assert hold.take([], 10.2) == []
    assert hold.take([], 10.25) == [a1, b1, a2]
    assert hold.held == [] and hold.due_in(10.3) is None


def test_a_finalize_takes_its_own_messages_held_appends_before_it_and_leaves_the_others():
    hold = AppendHold(0.25)
    a1, b1, a2, fa = append("a", 0), append("b", 0), append("a", 1), finalize("a")
    hold.take([a1, b1], 1.0)
    assert hold.take([a2, fa], 1.1) == [a1, a2, fa]
    assert hold.held == [b1] and hold.held_since == 1.0  # b's wait still counts from when it came


def test_creates_and_reopens_go_at_once_and_pull_their_messages_appends():
    hold = AppendHold(0.25)
    c, a1 = create("a"), append("a", 0)
    assert hold.take([c], 1.0) == [c] and hold.held_since is None
    hold.take([a1], 1.01)
    reopen = m.Reopen("a", "g2", "", "", m.ContinuedPrompt([], "h", "p"))
    assert hold.take([reopen], 1.02) == [a1, reopen]
    assert hold.held == [] and hold.held_since is None


def test_an_interrupt_takes_everything_held_first():
    hold = AppendHold(0.25)
    a1, b1 = append("a"), append("b")
    hold.take([a1], 1.0)
    interrupt = m.InterruptOrphans("coordinator restarted", [], "c1.1")
    assert hold.take([b1, interrupt], 1.01) == [a1, b1, interrupt]
    assert hold.held == []


def test_a_hold_of_zero_holds_nothing():
    hold = AppendHold(0)
    ops = [append("a"), append("b", 0), finalize("b")]
    assert hold.take(ops, 1.0) == ops and hold.due_in(1.0) is None


def test_release_gives_everything_held():
    hold = AppendHold(10)
    ops = [append("a"), append("b")]
    hold.take(ops, 1.0)
    assert hold.release() == ops and hold.held == [] and hold.due_in(2.0) is None


ops_strategy = st.lists(st.lists(st.tuples(st.sampled_from(["append", "append", "append", "finalize", "create",
                                                              "interrupt"]),
                                           st.sampled_from(["a", "b", "c"])), max_size=6),
                        max_size=12)


@settings(max_examples=300, deadline=None)
@given(batches=ops_strategy, gaps=st.lists(st.sampled_from([0.0, 0.01, 0.1, 0.3]), min_size=12, max_size=12),
       hold_s=st.sampled_from([0.0, 0.05, 0.25]))
def test_nothing_is_lost_reordered_within_a_message_or_held_past_its_time(batches, gaps, hold_s):
    hold = AppendHold(hold_s)
    now, arrived, out, seen_at = 0.0, [], [], {}
    counter = 0
    for batch, gap in zip(batches, gaps):
        now += gap
        ops = []
        for kind, message_id in batch:
            counter += 1
            op = {"append": lambda: append(message_id, counter), "finalize": lambda: finalize(message_id),
                  "create": lambda: create(message_id),
                  "interrupt": lambda: m.InterruptOrphans(str(counter), [], "c1.1")}[kind]()
            ops.append(op)
            seen_at[id(op)] = now
        arrived += ops
        out += hold.take(ops, now)
        # nothing held arrived longer ago than the hold
        assert all(now - seen_at[id(op)] < hold_s for op in hold.held)
        assert all(type(op) is m.Append for op in hold.held)
    out += hold.release()
    assert sorted(map(id, out)) == sorted(map(id, arrived)) and len(out) == len(arrived)  # each exactly once
    position = {id(op): i for i, op in enumerate(out)}
    for i, op in enumerate(arrived):
        for later in arrived[i + 1:]:
            same_message = getattr(op, "message_id", None) == getattr(later, "message_id", None) is not None
            barrier = type(later) is m.InterruptOrphans or type(op) is m.InterruptOrphans
            if same_message or barrier:
                assert position[id(op)] < position[id(later)], (op, later)


def test_a_saved_session_goes_at_once_and_pulls_no_append():
    hold = AppendHold(0.25)
    a1 = append("a")
    save = m.SaveSession("s1", "", None, None, 1.0)
    assert hold.take([a1, save], 1.0) == [save] and hold.held == [a1]
