"""Answers that grow with the data come in pages that each fit a frame, and the asker's joining of the pages
gives back the whole answer: snapshots and histories (``services/coordinator/pages.py``, ``Client``'s joins)."""
from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from clients.api import join_history
from protocol import codec, messages as m, answers
from protocol.conversation import MessageView
from services.coordinator import pages

TEXTS = st.text(alphabet=st.sampled_from(["a", "é", "🙂", "数", "\n", " "]), max_size=400)


def frame_of(result) -> int:
    return len(m.Reply(1, True, result, None).encode())


def read_snapshot(whole: answers.Snapshot) -> tuple[answers.Snapshot, int]:
    """What ``Client.snapshot`` does, against the page cutter: pages asked from the texts so far."""
    page = pages.snapshot_page(whole, 0, 0)
    text, reasoning, user_text, count = page.text, page.reasoning, page.user_text, 1
    while page.more:
        page = pages.snapshot_page(whole, len(text), len(reasoning))
        assert page.user_text is None  # the first page carries it
        text, reasoning, count = text[:page.offset] + page.text, reasoning[:page.reasoning_offset] + page.reasoning, count + 1
    return msgspec.structs.replace(page, text=text, reasoning=reasoning, user_text=user_text, more=False), count


def snapshot(text: str, reasoning: str = "", user_text: str | None = "hi") -> answers.Snapshot:
    return answers.Snapshot(generation_id="g", message_id="m", status="streaming", text=text, final=False,
                            stats={"tokens": 3}, user_text=user_text, reasoning=reasoning)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(TEXTS, TEXTS, st.integers(8, 200))
def test_a_snapshot_read_page_by_page_is_the_whole_snapshot(monkeypatch_page, text, reasoning, page_bytes):
    monkeypatch_page(page_bytes)
    got, _ = read_snapshot(snapshot(text, reasoning))
    assert (got.text, got.reasoning, got.user_text) == (text, reasoning, "hi")


@pytest.fixture
def monkeypatch_page(monkeypatch):
    return lambda size: monkeypatch.setattr(pages, "PAGE_BYTES", size)


def test_a_snapshot_over_a_frame_comes_in_pages_that_each_fit():
    text, reasoning = "über 🙂 数据 " * 300_000, "thought " * 200_000  # 6.6 MB and 1.6 MB of UTF-8
    whole = snapshot(text, reasoning, user_text="u" * 500_000)
    with pytest.raises(codec.FrameTooLarge):
        frame_of(whole)
    page, sizes = pages.snapshot_page(whole, 0, 0), []
    have_text, have_reasoning = page.text, page.reasoning
    sizes.append(frame_of(page))
    while page.more:
        page = pages.snapshot_page(whole, len(have_text), len(have_reasoning))
        sizes.append(frame_of(page))
        have_text, have_reasoning = have_text + page.text, have_reasoning + page.reasoning
    assert (have_text, have_reasoning) == (text, reasoning)
    assert len(sizes) >= 4 and max(sizes) <= codec.MAX_FRAME_BYTES


def test_a_page_asked_past_a_text_cut_meanwhile_begins_at_its_end():
    """A cancel cut the reply below what the asker had: the page says where the text ends now."""
    page = pages.snapshot_page(snapshot("abc", "xy"), 10, 5)
    assert (page.offset, page.text, page.reasoning_offset, page.reasoning, page.more) == (3, "", 2, "", False)


def views(texts: list[tuple[str, str]]) -> list[MessageView]:
    return [MessageView(message_id=f"m{i}", session_id="s", role="assistant", content=content, status="completed",
                        created_at=float(i), reasoning=reasoning) for i, (content, reasoning) in enumerate(texts)]


def read_history(all_views: list[MessageView], head: answers.History) -> tuple[answers.History, int]:
    """What ``Client.history`` does, against the page cutter: each page from where the one before said."""
    whole, count = pages.history_page(head, iter(all_views), 0, 0), 1
    while whole.next is not None:
        at = whole.next
        start = next(i for i, v in enumerate(all_views) if v.message_id == at.message_id)
        whole = join_history(whole, pages.history_page(head, iter(all_views[start:]), at.offset,
                                                       at.reasoning_offset))
        count += 1
    return whole, count


HEAD = answers.History(session_id="s", title="t", system=None, max_input_tokens=8192, messages=[])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(TEXTS, TEXTS), max_size=6), st.integers(450, 900))
def test_a_history_read_page_by_page_is_the_whole_history(monkeypatch_page, texts, page_bytes):
    monkeypatch_page(page_bytes)  # a page holds a message's fields (~290 bytes) and a little text
    all_views = views(texts)
    got, _ = read_history(all_views, HEAD)
    assert got.messages == all_views and got.next is None


def test_a_history_over_a_frame_comes_in_pages_that_each_fit():
    """Five replies of ~1.3 MB each, one of 4.6 MB with its thinking: 12 MB, read whole."""
    all_views = views([("ab 🙂 " * 200_000, "")] * 4 + [("数据 " * 500_000, "think " * 300_000)])
    with pytest.raises(codec.FrameTooLarge):
        frame_of(msgspec.structs.replace(HEAD, messages=all_views))
    got, count = read_history(all_views, HEAD)
    assert got.messages == all_views and count >= 4
    page = pages.history_page(HEAD, iter(all_views), 0, 0)
    while page.next is not None:
        assert frame_of(page) <= codec.MAX_FRAME_BYTES
        start = next(i for i, v in enumerate(all_views) if v.message_id == page.next.message_id)
        page = pages.history_page(HEAD, iter(all_views[start:]), page.next.offset, page.next.reasoning_offset)


def test_a_history_with_a_system_prompt_of_two_mib_still_moves_on():
    head = msgspec.structs.replace(HEAD, system="🙂" * 419_430)  # CHATTER_MAX_TEXT_CHARS at its highest
    all_views = views([("x" * 3_000_000, "")])
    got, count = read_history(all_views, head)
    assert got.messages == all_views and count >= 3


def test_a_message_too_large_without_its_text_is_refused_in_words(monkeypatch_page):
    monkeypatch_page(100)
    with pytest.raises(pages.TooLargeToPage, match="message m0 is"):
        pages.history_page(msgspec.structs.replace(HEAD, title="t" * 200), iter(views([("a", "")])), 0, 0)


def test_a_message_whose_fields_leave_no_room_for_its_text_is_refused_not_paged_forever(monkeypatch_page):
    """The page cutter always moves on: a message that fits only without any of its text is not a page."""
    monkeypatch_page(400)
    with pytest.raises(pages.TooLargeToPage, match="a page holds no text beside it"):
        read_history(views([("", "é")]), HEAD)
    page = pages.history_page(HEAD, iter(views([("a", ""), ("", "é" * 100)])), 0, 0)
    assert [v.message_id for v in page.messages] == ["m0"] and page.next.message_id == "m1"
