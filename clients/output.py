"""How replies and their stats are printed: shared by every command."""
from __future__ import annotations

import signal

from clients.api import ChatterError, Client
from clients.view import ReplyView
from protocol import answers

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 130


def outcome_json(session_id: str, view: ReplyView, started: answers.ReplyStarted | answers.Snapshot) -> dict:
    """The object ``send --json``, ``regenerate --json`` and ``watch --once --json`` print."""
    final = view.final or {}
    stats = final.get("stats") or {}
    return {
        "session_id": session_id,
        "generation_id": view.generation_id,
        "message_id": final.get("message_id") or started.message_id,
        "status": view.status,
        "content": view.text,
        "prompt_hash": started.prompt_hash,
        "tokens": stats.get("tokens"),
        "tokens_source": stats.get("tokens_source"),
        "ttft_ms": stats.get("ttft_ms"),
        "duration_ms": stats.get("duration_ms"),
        "tok_per_s": stats.get("tok_per_s"),
        "finish_reason": stats.get("finish_reason"),  # the server's: stop, length, content_filter...
        "reasoning": view.reasoning,  # a reasoning model's thinking before its answer ("" without)
        "tool_calls": view.tool_calls,  # the tools it called, as OpenAI's API has them ([] without)
        "reasoning_tokens": stats.get("reasoning_tokens"),  # part of tokens
        "reasoning_tokens_source": stats.get("reasoning_tokens_source"),
        "thinking_ms": stats.get("thinking_ms"),
        "error": final.get("error"),
        # a reply continued (chatter continue, or by itself after a fault): its segments, each with its tokens
        "continued": stats.get("continued", 0),
        "continued_after": stats.get("continued_after", []),
        "segments": stats.get("segments", []),
        "saved": not final.get("unsaved", False),  # False: complete, but the persister has not made it durable
    }


FINISH_WORDS = {"length": "length limit", "content_filter": "content filter", "tool_calls": "tool calls",
                "function_call": "function call"}


def status_label(status: str, finish_reason: str | None) -> str:
    """A reply's status as shown: a completed reply that the server ended for another reason than its own
    stop says which (``completed (length limit)``: cut at the model's or the request's token limit)."""
    if status == "completed" and finish_reason and finish_reason != "stop":
        return f"completed ({FINISH_WORDS.get(finish_reason, finish_reason)})"
    return status


def exit_code(status: str, saved: bool = True) -> int:
    if not saved:
        return EXIT_ERROR
    return {"completed": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(status, EXIT_ERROR)


class SigintFlag:
    """While entered, Ctrl+C (SIGINT) raises this flag instead of KeyboardInterrupt."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None

    def __call__(self) -> bool:
        return self.raised

    def __enter__(self) -> SigintFlag:
        self.raised = False
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, _signum, _frame) -> None:
        self.raised = True

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)


def resolve_session(client: Client, given: str) -> str:
    """A full session id, or a unique prefix of any stored session's."""
    if not given.strip():
        raise ChatterError("a session id (or a unique prefix of one) cannot be empty")
    if len(given) >= 32:
        return given
    return client.resolve(given)  # the coordinator asks the database's index, however many sessions there are
