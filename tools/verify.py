"""The load test's verifier: pure, so a test can show it catches what it must."""
from __future__ import annotations

import random
from dataclasses import dataclass

from services.mock_llm.script import MARKDOWN, reply_text


def wants_markdown(seed: int, index: int, share: float) -> bool:
    """Whether a load test's stream ``index`` asks the mock for its Markdown document (``--markdown-frac``): the
    same streams for the same seed, in any client."""
    return share > 0 and random.Random(f"{seed}:{index}").random() < share


def load_message(run_id: str, index: int, spec, thinking: str = "") -> str:
    """A load test's message: its run and number, and the mock's scenario (``spec``: ``tools.loadtest.LoadSpec``)."""
    markdown = " markdown" if wants_markdown(spec.seed, index, spec.markdown_frac) else ""
    return (f"loadtest {run_id} #{index} "
            f"[[mock{markdown} tokens={spec.tokens} tps={spec.tps:g} ttft_ms={spec.ttft_ms:g}{thinking}]]")


def expected_answer(text: str, model: str, tokens: int) -> str:
    """The mock's answer to a load test's message: its Markdown document when the message asks for it, else its
    deterministic words."""
    if "[[mock markdown" in text:
        return MARKDOWN
    return reply_text([{"role": "user", "content": text}], model, tokens)


@dataclass(frozen=True)
class StreamOutcome:
    status: str  # what the client ended with
    text: str
    cancel_requested: bool
    kept_text: str | None  # what the client had when it cancelled
    db_status: str | None
    db_content: str | None
    reasoning: str = ""  # the thinking the client ended with, and the database's
    db_reasoning: str | None = ""


def verify_stream(outcome: StreamOutcome, expected: str, expected_reasoning: str = "") -> list[str]:
    """Every way a stream can be wrong; empty when it is right. ``expected`` is the mock's full reply, and
    ``expected_reasoning`` its thinking before it: the thinking is checked by the same rules as the answer."""
    problems = []
    thinking = outcome.reasoning
    if outcome.status == "completed" or (outcome.status == "cancelled" and outcome.text):
        if thinking != expected_reasoning:  # an answer comes only after the whole thinking
            problems.append(f"thinking differs from the mock's ({len(thinking)} vs {len(expected_reasoning)} chars, "
                            f"first difference at {first_difference(thinking, expected_reasoning)})")
    elif outcome.status == "cancelled" and not expected_reasoning.startswith(thinking):
        problems.append(f"cancelled thinking is not a prefix of the mock's (differs at "
                        f"{first_difference(thinking, expected_reasoning)})")
    if outcome.db_reasoning != thinking and outcome.status in ("completed", "cancelled"):
        db = outcome.db_reasoning or ""
        problems.append(f"database thinking differs from the client's ({len(db)} vs {len(thinking)} chars)")
    if outcome.status == "completed":
        if outcome.text != expected:
            problems.append(f"completed text differs from the mock's ({len(outcome.text)} vs {len(expected)} chars, "
                            f"first difference at {first_difference(outcome.text, expected)})")
    elif outcome.status == "cancelled":
        if not outcome.cancel_requested:
            problems.append("cancelled without a cancel")
        if not expected.startswith(outcome.text):
            problems.append(f"cancelled text is not a prefix of the mock's (differs at "
                            f"{first_difference(outcome.text, expected)})")
        if outcome.kept_text is not None and outcome.text != outcome.kept_text:
            problems.append(f"cancelled text is not what the client had at cancel "
                            f"({len(outcome.text)} vs {len(outcome.kept_text)} chars)")
    else:
        problems.append(f"ended {outcome.status}")
    if outcome.db_status != outcome.status:
        problems.append(f"database status {outcome.db_status}, client saw {outcome.status}")
    if outcome.db_content != outcome.text:
        db = outcome.db_content or ""
        problems.append(f"database content differs from the client's ({len(db)} vs {len(outcome.text)} chars)")
    return problems


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
