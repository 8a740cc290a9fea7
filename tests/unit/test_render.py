from __future__ import annotations

from clients.render import ReplyRenderer, final_stats_line, split_finished, stored_stats_line


def test_finished_blocks_end_at_the_last_blank_line_outside_a_code_fence():
    assert split_finished("one paragraph\n\nthe next, still being writ") == len("one paragraph\n\n")
    assert split_finished("no blank line yet") == 0
    fenced = "intro\n\n```python\nx = 1\n\ny = 2\n"  # the blank line inside the open fence does not count
    assert split_finished(fenced) == len("intro\n\n")
    closed = fenced + "```\n\nafter"
    assert split_finished(closed) == len(closed) - len("after")


def test_the_final_stats_line_labels_its_source_and_context():
    outcome = {"tokens": 42, "tokens_source": "server", "duration_ms": 2100.0, "tok_per_s": 20.5,
               "ttft_ms": 95.0, "status": "completed", "error": None}
    line = final_stats_line(outcome, {"prompt_tokens": 120, "max_input_tokens": 8192, "dropped_messages": 2})
    assert line == ("42 tokens (server) | 2.1s | 20.5 tok/s | TTFT 95 ms | ctx ~120/8192 "
                    "(2 old messages left out) | completed")
    cancelled = outcome | {"tokens_source": None, "tok_per_s": None, "status": "error", "error": "stalled"}
    assert final_stats_line(cancelled).endswith("(estimated) | 2.1s | – tok/s | TTFT 95 ms | error | stalled")
    cut = final_stats_line(outcome | {"finish_reason": "length"})
    assert cut.endswith("| completed (length limit)")
    assert final_stats_line(outcome | {"finish_reason": "stop"}).endswith("| completed")
    unsaved = final_stats_line(outcome | {"saved": False})
    assert unsaved.startswith("42 tokens (server)") and "| completed | NOT SAVED YET" in unsaved


def test_tilde_fences_indented_code_and_loose_lists_are_one_block_each():
    tilde = "intro\n\n~~~\ncode\n\nmore code\n"  # an open ~~~ fence: the blank line inside does not end it
    assert split_finished(tilde) == len("intro\n\n")
    indented = "intro\n\n    code\n\n    more code\n"
    assert split_finished(indented) == len("intro\n\n")
    loose = "- one\n\n- two\n\n- thr"  # a list across blank lines is still being written
    assert split_finished(loose) == 0
    done = "- one\n\n- two\n\nafter the list"
    assert split_finished(done) == len("- one\n\n- two\n\n")


def rendered(renderer) -> str:
    from rich.console import Console
    probe = Console(width=80, record=True, force_terminal=False, color_system=None)
    probe.print(renderer._region())
    return probe.export_text()


def test_thinking_is_folded_to_its_newest_lines_then_to_one_line_when_the_answer_begins():
    import io
    from rich.console import Console
    from clients.render import THINKING_FOLD_LINES, ReplyRenderer
    screen = io.StringIO()
    renderer = ReplyRenderer(Console(file=screen, width=80, force_terminal=True, color_system=None), plain=False)
    with renderer:
        renderer.thinking("".join(f"line {i}\n" for i in range(10)) + "line 10", tokens=11)
        region = rendered(renderer)
        shown = [f"line {i}" for i in range(11) if f"line {i}\n" in region + "\n"]
        assert shown == [f"line {i}" for i in range(11 - THINKING_FOLD_LINES, 11)]
        assert "Thinking…" in region and "11 tokens (estimated)" in region
        renderer.update("The answer.", tokens=12)
        assert "line 10" not in rendered(renderer) and "The answer." in rendered(renderer)
    assert "Thought for " in screen.getvalue() and "line 3" not in screen.getvalue()


def test_thinking_shown_in_full_is_printed_line_by_line():
    import io
    from rich.console import Console
    from clients.render import ReplyRenderer
    screen = io.StringIO()
    renderer = ReplyRenderer(Console(file=screen, width=80, force_terminal=True, color_system=None), plain=False,
                             show_thinking=True)
    with renderer:
        renderer.thinking("first thought\nsecond tho")
        renderer.thinking("ught\n")
        renderer.update("Answer.")
    out = screen.getvalue()
    assert "first thought" in out and "second thought" in out and out.index("second thought") < out.index("Thought for")


def test_the_final_stats_line_says_how_long_it_thought_and_whose_count_it_is():
    outcome = {"tokens": 42, "tokens_source": "server", "duration_ms": 2100.0, "tok_per_s": 20.5, "ttft_ms": 95.0,
               "status": "completed", "error": None, "thinking_ms": 1234.0, "reasoning_tokens": 30,
               "reasoning_tokens_source": "server"}
    assert "| thought 1.2s, 30 tokens (server) | completed" in final_stats_line(outcome)
    assert "thought" not in final_stats_line(outcome | {"thinking_ms": None, "reasoning_tokens": None})


def test_a_continued_replys_stats_count_each_segment_and_tell_its_own_ttft_from_the_continuations():
    outcome = {"tokens": 314, "tokens_source": "estimated", "duration_ms": 4000.0, "tok_per_s": 50.0, "ttft_ms": 55.3,
               "status": "completed", "error": None,
               "segments": [{"from": 0, "tokens": 111, "tokens_source": "estimated", "ttft_ms": 80.1},
                            {"from": 480, "tokens": 203, "tokens_source": "server"}]}
    line = final_stats_line(outcome)
    assert line == "111 estimated + 203 server tokens | 4s | 50 tok/s | TTFT 80.1 ms, continued after 55.3 ms | completed"
    older = outcome | {"segments": [{"from": 0, "tokens": 111, "tokens_source": "estimated"}, outcome["segments"][1]]}
    assert "TTFT of the last segment 55.3 ms" in final_stats_line(older)  # an earlier version kept no TTFT of its own
    assert final_stats_line(outcome | {"segments": []}).startswith("314 tokens (estimated)")


def test_a_stored_replys_stats_line_is_the_one_it_ended_with():
    from protocol.conversation import MessageView
    stats = {"tokens": 42, "tokens_source": "server", "duration_ms": 2100.0, "tok_per_s": 20.5, "ttft_ms": 95.0,
             "finish_reason": "stop"}
    msg = MessageView(message_id="m", session_id="s", role="assistant", content="x", status="completed",
                      created_at=0.0, stats=stats)
    assert stored_stats_line(msg) == final_stats_line({**stats, "status": "completed", "error": None})
    assert stored_stats_line(MessageView(message_id="m", session_id="s", role="assistant", content="", created_at=0.0,
                                         status="cancelled", stats={})).endswith("| cancelled")


def test_a_think_block_of_whitespace_alone_shows_no_thinking(capsys):
    for thinking, shown in (("\n", False), (" \n\n ", False), ("\nreally thinking", True)):
        renderer = ReplyRenderer(plain=True)
        renderer.thinking(thinking, 1)
        renderer.update("the answer", 3)
        err = capsys.readouterr().err
        assert ("Thinking…" in err) is shown and ("Thought for" in err) is shown, (thinking, err)
