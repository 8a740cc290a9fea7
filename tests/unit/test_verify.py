"""The load test's checker must be able to fail."""
from __future__ import annotations

from tools.report import percentiles, timeline
from tools.verify import StreamOutcome, verify_stream

EXPECTED = "the whole reply, exactly"


def outcome(**kw) -> StreamOutcome:
    base = dict(status="completed", text=EXPECTED, cancel_requested=False, kept_text=None, db_status="completed",
                db_content=EXPECTED)
    return StreamOutcome(**(base | kw))


def test_a_right_stream_passes():
    assert verify_stream(outcome(), EXPECTED) == []
    cut = EXPECTED[:9]
    assert verify_stream(outcome(status="cancelled", text=cut, cancel_requested=True, kept_text=cut,
                                 db_status="cancelled", db_content=cut), EXPECTED) == []


def test_a_corrupted_stream_is_caught():
    bad = EXPECTED.replace("whole", "wh0le")
    problems = verify_stream(outcome(text=bad, db_content=bad), EXPECTED)
    assert problems and "first difference at 6" in problems[0]


def test_a_missing_tail_is_caught():
    assert verify_stream(outcome(text=EXPECTED[:-3], db_content=EXPECTED[:-3]), EXPECTED)
    assert verify_stream(outcome(db_content=EXPECTED[:-3]), EXPECTED)  # the client had it, the database not


def test_a_wrong_status_is_caught():
    assert verify_stream(outcome(db_status="streaming"), EXPECTED)
    assert verify_stream(outcome(status="cancelled", db_status="cancelled"), EXPECTED)  # nobody cancelled
    assert verify_stream(outcome(status="error", db_status="error"), EXPECTED)


def test_a_cancelled_stream_must_keep_what_the_client_had_and_be_a_prefix():
    cut = EXPECTED[:9]
    longer = EXPECTED[:12]
    assert verify_stream(outcome(status="cancelled", text=longer, cancel_requested=True, kept_text=cut,
                                 db_status="cancelled", db_content=longer), EXPECTED)
    assert verify_stream(outcome(status="cancelled", text="not it", cancel_requested=True, kept_text="not it",
                                 db_status="cancelled", db_content="not it"), EXPECTED)


def test_percentiles_and_timeline():
    p = percentiles([float(v) for v in range(1, 101)])
    assert (p["p50"], p["p95"], p["p99"], p["n"]) == (51.0, 96.0, 100.0, 100)
    assert percentiles([])["p50"] is None
    assert timeline([(10.0, 5), (10.5, 5), (12.2, 7)]) == [[0, 10], [1, 0], [2, 7]]


def test_upstream_to_client_is_each_tokens_wait_for_the_first_view_that_holds_it():
    from tools.report import upstream_to_client_ms
    sent = [(3, 10.0), (7, 10.05), (12, 10.10), (15, 10.15)]  # the answer's length after each token, and when
    arrivals = [(3, 10.02), (12, 10.13), (14, 10.2)]  # a view that skipped 7, and a reply cancelled before 15
    got = upstream_to_client_ms(sent, arrivals)
    assert [round(ms, 6) for ms in got] == [20.0, 80.0, 30.0]  # 7 waited for the view at 12; 15 never came
    assert upstream_to_client_ms(sent, []) == [] and upstream_to_client_ms([], arrivals) == []


def test_a_share_of_load_messages_ask_for_markdown_the_same_ones_every_time():
    from services.mock_llm.script import MARKDOWN, reply_text
    from tools.loadtest import LoadSpec
    from tools.verify import expected_answer, load_message, wants_markdown
    spec = LoadSpec(tokens=12, markdown_frac=0.3, seed=7)
    texts = [load_message("run", i, spec) for i in range(1000)]
    chosen = [i for i in range(1000) if wants_markdown(7, i, 0.3)]
    assert 200 < len(chosen) < 400 and chosen == [i for i in range(1000) if wants_markdown(7, i, 0.3)]
    assert [i for i, t in enumerate(texts) if "[[mock markdown " in t] == chosen
    assert expected_answer(texts[chosen[0]], "m", 12) == MARKDOWN
    plain = next(t for i, t in enumerate(texts) if i not in chosen)
    assert expected_answer(plain, "m", 12) == reply_text([{"role": "user", "content": plain}], "m", 12)
    assert not any(wants_markdown(7, i, 0.0) for i in range(1000))
