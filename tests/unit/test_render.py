from __future__ import annotations

from clients.render import final_stats_line, split_finished


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
