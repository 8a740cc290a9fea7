"""What real model servers do, through the mock's modes: a server that runs one request at a time and holds
the others (serial), a context length it tells in /v1/models and enforces (context), and its own words for
an error. Real processes, real sockets, a real database."""
from __future__ import annotations

import json
import time

from services.mock_llm.script import reply_text
from tests.integration.stack import wait_until

MODEL = "mock-1"


def expected(text: str, tokens: int) -> str:
    return reply_text([{"role": "user", "content": text}], MODEL, tokens)


def test_requests_a_serial_server_holds_are_waiting_not_stalled(fresh_stack):
    """Four replies of about a second each on a one-at-a-time server: the last waits three seconds for its
    first token, twice the stall limit, and still completes."""
    stack = fresh_stack(CHATTER_MOCK_SERIAL="1", CHATTER_STALL_MS="1500")
    texts = [f"in line {i} [[mock tokens=40 tps=40 ttft_ms=0]]" for i in range(4)]
    outs = stack.send_all(texts, timeout=60)
    assert [o["status"] for o in outs] == ["completed"] * 4, [o["error"] for o in outs]
    assert [o["content"] for o in outs] == [expected(text, 40) for text in texts]
    assert sum(entry.get("queued", False) for entry in stack.journal()) >= 2  # they really waited their turn
    assert max(o["ttft_ms"] for o in outs) > 1500  # longer than the stall limit, and not a stall


def test_the_first_token_has_its_own_limit_and_the_error_names_it(fresh_stack):
    stack = fresh_stack(CHATTER_MOCK_SERIAL="1", CHATTER_FIRST_TOKEN_MS="1500", CHATTER_STALL_MS="60000")
    first = stack.spawn_cli("send", "a long one first [[mock tokens=120 tps=40 ttft_ms=0]]", "--json")
    time.sleep(0.5)
    try:
        waiting = stack.cli_json("send", "then me [[mock tokens=10 ttft_ms=0]]")
        ahead = json.loads(first.communicate(timeout=60)[0])
    finally:
        if first.poll() is None:
            first.kill()
    assert ahead["status"] == "completed"
    assert waiting["status"] == "error" and "no first token" in waiting["error"]
    assert "1.5 s" in waiting["error"] and "CHATTER_FIRST_TOKEN_MS" in waiting["error"]
    assert waiting["content"] == ""
    assert stack.db_message(waiting["message_id"])["status"] == "error"


def test_a_reply_cut_at_the_length_limit_says_so_everywhere(fresh_stack):
    stack = fresh_stack(CHATTER_MOCK_CONTEXT="60")
    text = "a story too long [[mock tokens=200]]"
    out = stack.cli_json("send", text)
    assert out["status"] == "completed" and out["finish_reason"] == "length"
    assert len(out["content"]) < len(expected(text, 200)) and expected(text, 200).startswith(out["content"])
    shown = stack.cli("send", "another long one [[mock tokens=200]]")  # the text form: stats on stderr
    assert shown.returncode == 0 and "completed (length limit)" in shown.stderr.decode()
    history = stack.cli("history", out["session_id"]).stdout.decode()
    assert "completed (length limit)" in history
    watched = json.loads(stack.cli("watch", out["session_id"], "--once", "--json").stdout)
    assert watched["finish_reason"] == "length"
    plain = stack.cli_json("send", "a short one [[mock tokens=5]]")
    assert plain["finish_reason"] == "stop" and plain["status"] == "completed"


def test_the_context_budget_follows_the_servers_context_length(fresh_stack):
    """The mock tells max_model_len 400 in /v1/models, as vLLM does: with no budget set, the prompt's budget
    is 400 less a quarter for the reply, so a long conversation is trimmed to fit instead of refused."""
    stack = fresh_stack(CHATTER_MOCK_CONTEXT="400")
    first = stack.cli_json("send", "start [[mock tokens=5]]")
    session = first["session_id"]
    status = wait_until(lambda: (s := stack.cli_json("status", "--session", session))["context"]["max_input_tokens"]
                        == 300 and s, what="the server's context length in the budget")
    assert status["context"]["max_input_tokens"] == 300
    words = " ".join(["word"] * 120)
    for i in range(4):  # each turn ~125 tokens: together far over the server's 400
        out = stack.cli_json("send", f"turn {i}: {words} [[mock tokens=5]]", "--session", session)
        assert out["status"] == "completed", out["error"]
    preview = stack.cli_json("preview", out["message_id"])
    assert preview["dropped_message_ids"]  # older turns were left out to fit


def test_a_per_model_setting_decides_when_the_server_does_not_say(fresh_stack):
    stack = fresh_stack(CHATTER_MODEL_CONTEXT="mock-1=1000,other=50")
    session = stack.cli_json("send", "hi [[mock tokens=5]]")["session_id"]
    assert stack.cli_json("status", "--session", session)["context"]["max_input_tokens"] == 750


def test_an_error_status_keeps_the_servers_own_words(fresh_stack):
    stack = fresh_stack()
    out = stack.cli_json("send", "let me in [[mock fail_status=401]]")
    assert out["status"] == "error"
    assert out["error"] == "upstream refused the request: HTTP 401: injected failure 401"
