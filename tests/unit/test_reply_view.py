from __future__ import annotations

from clients.view import APPLIED, GAP, IGNORED, ReplyView
from protocol import messages as m, answers


def d(offset, text, gen="g"):
    return m.StreamDelta("s", gen, offset, text, 1)


def final(length, status="completed", gen="g"):
    return m.Final("s", gen, "msg", status, length, "h", {"tokens": 1}, None)


def test_applies_only_where_the_offset_continues():
    view = ReplyView("g")
    assert view.apply(d(0, "ab")) == APPLIED
    assert view.apply(d(0, "ab")) == IGNORED  # replay
    assert view.apply(d(1, "bcd")) == APPLIED  # overlap: only the fresh part
    assert view.text == "abcd" and view.take_new_text() == "abcd"
    assert view.apply(d(6, "x")) == GAP and view.gaps == 1
    assert view.apply(d(0, "zz", gen="other")) == IGNORED
    assert view.text == "abcd"


def test_final_cuts_a_longer_view_and_a_longer_final_is_a_gap():
    view = ReplyView("g")
    view.apply(d(0, "hello world"))
    assert view.apply(final(20)) == GAP and view.final is None
    assert view.apply(final(5, "cancelled")) == APPLIED
    assert view.text == "hello" and view.status == "cancelled"


def snapshot(generation_id, text, final, status, stats=None, message_id=None) -> answers.Snapshot:
    return answers.Snapshot(generation_id=generation_id, message_id=message_id, status=status, text=text,
                            final=final, stats=stats or {})


def test_snapshot_fills_a_gap_and_can_end_the_reply():
    view = ReplyView("g")
    view.apply(d(0, "ab"))
    view.take_new_text()
    view.apply_snapshot(snapshot("g", "abcdef", False, "streaming"))
    assert view.text == "abcdef" and view.take_new_text() == "cdef" and view.final is None
    view.apply(d(6, "gh"))
    view.apply_snapshot(snapshot("g", "abcdefgh", True, "completed", stats={"tokens": 3}, message_id="msg"))
    assert view.final["status"] == "completed" and view.text == "abcdefgh"
    assert view.apply_snapshot(snapshot("other", "zzz", False, "streaming")) == IGNORED


def test_after_cancel_nothing_more_is_rendered_and_the_kept_text_is_what_was_rendered():
    view = ReplyView("g")
    view.apply(d(0, "shown "))
    assert view.take_new_text() == "shown "
    assert view.cancel() == (len("shown "), 0) and view.kept_text == "shown "
    view.apply(d(6, "arrived after the cancel"))
    assert view.take_new_text() == ""  # applied (offsets stay exact) but never rendered
    assert view.apply(final(6, "cancelled")) == APPLIED
    assert view.text == view.kept_text == "shown " and view.status == "cancelled"


def test_a_reply_that_ended_but_is_not_durable_can_stop_the_wait_marked_unsaved():
    view = ReplyView("g")
    view.apply(d(0, "all of it"))
    view.apply_snapshot(snapshot("g", "all of it", False, "completed", message_id="msg"))
    assert view.final is None and view.ended is not None  # ended, still waiting for its durable final
    view.stop_waiting_for_durability()
    assert view.final["unsaved"] and view.final["status"] == view.status == "completed"
    assert view.text == "all of it"
    still = ReplyView("g")
    still.apply_snapshot(snapshot("g", "half", False, "streaming"))
    assert still.ended is None  # a reply still streaming is not "ended"
