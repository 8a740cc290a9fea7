"""Every rpc answer built at the largest size its request allows still fits a frame: the coordinator's machine
is filled as far as its bounds let a user fill it (texts of CHATTER_MAX_TEXT_CHARS at its highest, replies of
many MB, thousands of sessions, messages and generations), each request's answer is encoded, and a paged answer
is read to its end. The next answer too large for a frame is found here, not by a user (whose coordinator it
killed: the shell now refuses it alone, but the answer is then lost)."""
from __future__ import annotations

import itertools
import uuid

import pytest

from protocol import codec, messages as m
from protocol.codec import MAX_FRAME_BYTES
from services.coordinator.effects import ReplyTo, ToClients, ToGenerators, ToPersister
from services.coordinator.machine import Coordinator
from services.config import MAX_TEXT_CHARS_MOST, CoordinatorSettings

MAX_TEXT = MAX_TEXT_CHARS_MOST  # the highest CHATTER_MAX_TEXT_CHARS allows
BIG = "🙂" * MAX_TEXT  # 1.6 MiB of UTF-8: a user text or system prompt at the limit
CLIENT = b"c"


def words(text: str, model: str) -> int:
    return len(text) // 4 + 1


def machine(**settings) -> Coordinator:
    return Coordinator(CoordinatorSettings(**({"adopt_grace_ms": 0, "max_text_chars": MAX_TEXT,
                                                 "max_cached_sessions": 1_000_000} | settings)), words,
                       new_id=lambda: uuid.uuid4().hex, new_ordered_id=lambda: uuid.uuid4().hex)


_req = itertools.count(1)


def answer(coordinator: Coordinator, make_request, now: float = 100.0):
    """The request's answer, encoded as the shell would (a ``FrameTooLarge`` fails the test), decoded back."""
    request = make_request(next(_req))
    out = coordinator.handle_rpc(CLIENT, request, now)
    for effect in out:  # what the request sends elsewhere fits too: the started event, the job, the persister's
        if isinstance(effect, ToGenerators):
            assert max(map(len, m.job_frames(effect.msg))) <= MAX_FRAME_BYTES
        elif isinstance(effect, (ToClients, ToPersister)):
            assert len(effect.msg.encode()) <= MAX_FRAME_BYTES
    (reply,) = [e.msg for e in out if isinstance(e, ReplyTo)]
    frame = reply.encode()
    assert len(frame) <= MAX_FRAME_BYTES
    decoded = codec.decode(frame, (m.Reply,))
    assert decoded.ok, decoded.error
    return decoded.result


def session_with_replies(coordinator: Coordinator, replies: list[str], system: str | None = BIG) -> str:
    sid = answer(coordinator, lambda r: m.NewSession(r, system, None, 2**31 - 1)).session_id
    for i, text in enumerate(replies):
        started = answer(coordinator, lambda r: m.Send(r, sid, BIG if i == 0 else f"turn {i}", f"q{i}"))
        gen = started.generation_id
        coordinator.handle_event(m.GenStarted(gen, "gen-A"), 100.0)
        coordinator.handle_event(m.GenDelta(gen, 1, text, 1, 100.0), 100.0)
        if i < len(replies) - 1:
            coordinator.handle_event(m.GenDone(gen, 1, len(text), "stop", 1, "server"), 100.0)
    return sid


def test_a_history_of_a_session_of_many_megabytes_reads_whole_in_pages_that_fit():
    coordinator = machine()
    replies = ["数据 " * 400_000, "ab🙂" * 1_000_000, "x" * 5_000_000]  # the last one still streaming
    sid = session_with_replies(coordinator, replies)
    page = answer(coordinator, lambda r: m.History(r, sid))
    got, pages = list(page.messages), 1
    while page.next is not None:
        at = page.next
        page = answer(coordinator, lambda r: m.History(r, sid, at.message_id, at.offset, at.reasoning_offset))
        if got and page.messages and got[-1].message_id == page.messages[0].message_id:
            last = got.pop()
            page.messages[0].content = last.content[:at.offset] + page.messages[0].content
        got += page.messages
        pages += 1
    assert [msg.content for msg in got if msg.role == "assistant"] == replies and pages > 5


def test_a_snapshot_of_a_reply_of_many_megabytes_after_the_longest_user_text_reads_whole():
    coordinator = machine()
    sid = session_with_replies(coordinator, ["über " * 2_000_000])
    page = answer(coordinator, lambda r: m.Snapshot(r, sid))
    assert page.user_text == BIG
    text = page.text
    while page.more:
        page = answer(coordinator, lambda r: m.Snapshot(r, sid, page.generation_id, len(text), 0))
        text = text[:page.offset] + page.text
    assert text == "über " * 2_000_000


def test_a_preview_of_the_largest_prompt_reads_whole():
    coordinator = machine()
    sid = session_with_replies(coordinator, ["a" * 100, "b" * 100])
    message_id = coordinator.sessions[sid].history[-1].message_id
    page = answer(coordinator, lambda r: m.Preview(r, message_id))
    preview, pages = page.preview, 1
    while page.next is not None:
        at = page.next
        page = answer(coordinator, lambda r: m.Preview(r, message_id, *at))
        preview, pages = preview[:page.preview_offset] + page.preview, pages + 1
    assert BIG in preview and pages >= 3


def test_the_longest_list_of_sessions_comes_in_pages_that_fit():
    coordinator = machine()
    owner = "u" * 64  # the longest user name: a gateway user's list carries it in every row
    rows = [{"session_id": uuid.uuid4().hex, "title": "🙂" * 300, "message_count": 2**31 - 1,
             "last_activity": float(i), "status": "completed", "owner": owner} for i in range(5_000)]
    coordinator.load_summaries(rows)  # what the shell read for the page: as many as a request may ask
    for asked in (lambda r: m.Sessions(r, 100_000), lambda r: m.Sessions(r, 100_000, owner=owner)):
        page = answer(coordinator, asked)
        assert page.more and 0 < len(page.sessions) < len(rows)


def test_a_send_that_leaves_out_thousands_of_messages_answers_in_a_frame():
    """150,000 messages, a budget that holds the newest few: the ids left out are counted, not all listed."""
    coordinator = machine()
    sid = answer(coordinator, lambda r: m.NewSession(r, None, None, 50)).session_id
    sess = coordinator.sessions[sid]
    for _ in range(75_000):
        for role in ("user", "assistant"):
            sess.add_record(m.MessageRecord(message_id=uuid.uuid4().hex, session_id=sid, role=role,
                                            content="word " * 5, status="completed", created_at=1.0,
                                            parent_id=sess.leaf or ""))
    started = answer(coordinator, lambda r: m.Send(r, sid, "the newest", "q"))
    assert started.dropped_count > 149_000 and len(started.dropped_message_ids) < started.dropped_count


@pytest.mark.parametrize("active", [3_000])
def test_a_status_of_thousands_of_replies_under_way_answers_in_a_frame(active):
    coordinator = machine()
    for i in range(active):
        sid = answer(coordinator, lambda r: m.NewSession(r, None, "m" * 128)).session_id
        answer(coordinator, lambda r: m.Send(r, sid, "hi", f"q{i}", "m" * 128))
    status = answer(coordinator, lambda r: m.Status(r))
    assert status.active_total == active and len(status.active) < active


def test_the_settings_of_a_session_with_the_longest_system_prompt_answer_in_a_frame():
    coordinator = machine()
    sid = answer(coordinator, lambda r: m.NewSession(r, None)).session_id
    params = {"temperature": 1.0, "max_tokens": 2**31 - 1}
    settings = answer(coordinator, lambda r: m.ConfigureSession(r, sid, BIG, 2**31 - 1, "m" * 128, params))
    assert settings.system == BIG


def test_a_search_of_the_most_hits_with_the_longest_titles_and_snippets_answers_in_a_frame():
    from protocol import answers
    from services.store.search import SNIPPET_CHARS, bounded
    word = "x" * 400_000  # a message that is one word: its snippet is cut around the match, marks paired
    snippet = bounded(f"a \x02{word}\x03 b")
    assert len(snippet) <= SNIPPET_CHARS + 4 and snippet.count("\x02") == snippet.count("\x03") == 1
    coordinator = machine()
    request = m.Search(next(_req), "x", None, 1000)
    rows = [{"session_id": uuid.uuid4().hex, "title": "🙂" * m.TITLE_CHARS, "message_id": uuid.uuid4().hex,
             "role": "assistant", "created_at": 1.0, "snippet": snippet} for _ in range(1000)]
    coordinator.views.found(request, rows)
    (reply,) = [e.msg for e in coordinator.handle_rpc(CLIENT, request, 100.0) if isinstance(e, ReplyTo)]
    frame = reply.encode()
    assert len(frame) <= MAX_FRAME_BYTES and len(codec.decode(frame, (m.Reply,)).result.hits) == 1000
    assert isinstance(codec.decode(frame, (m.Reply,)).result, answers.SearchResults)


def test_deleting_the_most_sessions_at_once_fits_a_frame_each_way():
    coordinator = machine()
    ids = [uuid.uuid4().hex * 2 for _ in range(m.DELETE_AT_ONCE)]  # 64 characters, an id's most
    out = coordinator.handle_rpc(CLIENT, m.DeleteSessions(next(_req), ids), 100.0)
    (purge,) = [e.msg for e in out if isinstance(e, ToPersister)]
    assert len(purge.encode()) <= MAX_FRAME_BYTES
    done = coordinator.handle_event(m.SessionsPurged(purge.op_id, ids), 100.1)
    (reply,) = [e.msg for e in done if isinstance(e, ReplyTo)]
    assert len(reply.encode()) <= MAX_FRAME_BYTES and reply.result.deleted == ids
    assert all(len(e.msg.encode()) <= MAX_FRAME_BYTES for e in done if isinstance(e, ToClients))
