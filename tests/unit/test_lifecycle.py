"""A reply's lifecycle (protocol/lifecycle.py): every pair of statuses, allowed or refused by the table, and the one
rule of a text at an offset, against the plain definition for every small case."""
from __future__ import annotations

import itertools

import pytest

from protocol.lifecycle import CUT, FINAL, IllegalMove, NOT_PROMPTED, Status, continuable, fresh_at, move

Q, S, C, X, E, I = (Status.QUEUED, Status.STREAMING, Status.COMPLETED, Status.CANCELLED, Status.ERROR,
                    Status.INTERRUPTED)
ALLOWED = {  # written out pair by pair, apart from the table it checks
    (Q, Q), (Q, S), (Q, C), (Q, X), (Q, E), (Q, I),
    (S, S), (S, Q), (S, C), (S, X), (S, E), (S, I),
    (C, C), (C, Q), (C, E), (X, X), (X, Q), (X, E), (E, E), (E, Q), (I, I), (I, Q), (I, E),
}


@pytest.mark.parametrize("current, new", list(itertools.product(Status, Status)))
def test_every_pair_of_statuses_is_allowed_or_refused_as_the_table_says(current, new):
    if (current, new) in ALLOWED:
        assert move(current, new) == new and move(current.value, new.value) == new
    else:
        with pytest.raises(IllegalMove, match=f"a {current} reply cannot become {new}"):
            move(current, new)


def test_words_that_are_not_statuses_are_refused():
    with pytest.raises(IllegalMove, match="not statuses"):
        move("streaming", "done")
    with pytest.raises(IllegalMove, match="not statuses"):
        move("", "completed")


def test_what_is_final_continuable_and_left_out_of_prompts():
    assert FINAL == {C, X, E, I} and CUT == {X, E, I} and NOT_PROMPTED == {Q, S, X, E, I}
    assert [continuable(s, None) for s in Status] == [False, False, False, True, True, True]
    assert continuable(C, "length") and not continuable(C, "stop") and not continuable(S, "length")


@pytest.mark.parametrize("have", range(6))
def test_text_at_an_offset_is_applied_only_where_it_continues(have):
    whole = "abcdefghij"
    for offset, length in itertools.product(range(8), range(6)):
        text = whole[offset:offset + length]
        fresh = fresh_at(have, offset, text)
        if offset > have:
            assert fresh is None  # a gap
        else:
            assert whole[:have] + fresh == whole[:max(have, offset + len(text))]  # a replay adds ""
