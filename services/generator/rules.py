"""The generator's rules, pure: how one upstream stream is numbered, how it must end, and which failures
are retried. The asyncio shell (``__main__``) does the I/O and applies these.

- A reply has two texts: the answer, and the thinking of a reasoning model (``reasoning_content`` or
  ``reasoning`` in the delta, or a leading ``<think>...</think>`` in the content, split out here by
  ``ThinkTags``). Each text numbers its deltas with its own seq, from 1; chunks without text (role,
  finish, usage) get none. Either kind is a token: the first of either ends the wait for a first token.
- A stream that ends without a finish reason is ``truncated``, never ``completed``.
- A NUL character in the model's text becomes U+FFFD: PostgreSQL cannot store NUL in text, and a reply
  must read the same on every database and every client.
- Before the first token, a failure is retried (408, 409, 429, 5xx, unreachable), with exponential
  backoff and jitter, or after the server's Retry-After, until the retry deadline. Silence before the
  first token is waiting, up to its own limit (CHATTER_FIRST_TOKEN_MS), never retried.
  After the first token, a failure ends the generation as ``error`` and keeps the text.
"""
from __future__ import annotations

import json
import random
import socket
from dataclasses import dataclass, field

from protocol import messages as m
from protocol.codec import PIECE_CHARS, pieces
from protocol.conversation import tool_call_at
from protocol.conversation import THINK_CLOSE, THINK_OPEN

RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 4.0
BACKOFF_JITTER = 0.1  # up to 10% more, so the retries of many streams spread out
REPLACEMENT = "\ufffd"  # for a NUL in the model's text


class RetryBeforeFirstToken(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class JobFailed(Exception):
    """Ends the generation as ``error`` with this reason."""


_START, _THINKING, _ANSWER = "start", "thinking", "answer"


class ThinkTags:
    """Splits a ``<think>...</think>`` block that opens a reply out of its content, as the content streams
    in pieces that may cut a tag anywhere (llama-server with ``--reasoning-format none``, Ollama's older
    OpenAI endpoint). ``feed`` returns ``(thinking, text)`` pieces; text that may be the start of a tag is
    held until the next piece tells (at most a tag's length), and ``end`` gives what is still held.

    Modes (CHATTER_THINK_TAGS): ``auto``, only a ``<think>`` at the very start (after any whitespace) opens
    thinking; ``on``, the reply starts in thinking even without it (templates that put ``<think>`` in the
    prompt, as DeepSeek-R1's distills do), up to ``</think>``; ``off``, content is all answer."""

    __slots__ = ("state", "held", "open_implied")

    def __init__(self, mode: str = "auto") -> None:
        self.state = _ANSWER if mode == "off" else _START
        self.open_implied = mode == "on"
        self.held = ""

    def feed(self, text: str) -> list[tuple[bool, str]]:
        if self.state is _ANSWER:
            return [(False, text)] if text else []
        text, self.held = self.held + text, ""
        if self.state is _START:
            bare = text.lstrip()
            if len(bare) < len(THINK_OPEN) and THINK_OPEN.startswith(bare):
                self.held = text  # may still be the opening tag
                return []
            if bare.startswith(THINK_OPEN):
                text = bare[len(THINK_OPEN):]
            elif not self.open_implied:
                self.state = _ANSWER
                return [(False, text)]
            self.state = _THINKING
        end = text.find(THINK_CLOSE)
        if end >= 0:
            self.state = _ANSWER
            rest = text[end + len(THINK_CLOSE):]
            return [piece for piece in ((True, text[:end]), (False, rest)) if piece[1]]
        keep = next((k for k in range(len(THINK_CLOSE) - 1, 0, -1) if text.endswith(THINK_CLOSE[:k])), 0)
        self.held = text[len(text) - keep:] if keep else ""
        return [(True, text[:len(text) - keep])] if len(text) > keep else []

    def server_parses(self) -> str:
        """Thinking came in a field of its own: the server splits it out, so content is all answer from now on.
        Returns what was held at the start (whitespace, say), which is answer."""
        if self.state is not _START:
            return ""
        self.state, held, self.held = _ANSWER, self.held, ""
        return held

    def end(self) -> list[tuple[bool, str]]:
        """The reply ended: what was held is what it was (thinking that never closed stays thinking)."""
        held, self.held = self.held, ""
        if not held:
            return []
        return [(self.state is _THINKING or (self.state is _START and self.open_implied), held)]


class PrefillStrip:
    """llama-server repeats a prefilled assistant message at the start of its reply: a continuation's stream
    begins with the reply so far, then the new text. Strips it exactly once, and only where the stream begins
    with all of it; anything else passes as it came. Text that may still be the start of it is held until the
    stream tells (``feed``), and given back as it is if the stream ends first (``end``)."""

    __slots__ = ("prefix", "held")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.held: str | None = "" if prefix else None  # None: decided

    def feed(self, text: str) -> str:
        if self.held is None:
            return text
        seen = self.held + text
        if len(seen) < len(self.prefix) and self.prefix.startswith(seen):
            self.held = seen
            return ""
        self.held = None
        return seen[len(self.prefix):] if seen.startswith(self.prefix) else seen

    def end(self) -> str:
        held, self.held = self.held or "", None
        return held


@dataclass(slots=True)
class Generation:
    """One job's upstream stream: the seq counter and text of its answer and of its thinking, and how it
    is ending."""

    job: m.Job
    seq: int = 0
    length: int = 0
    parts: list[str] = field(default_factory=list)
    reasoning_seq: int = 0
    reasoning_length: int = 0
    reasoning_parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None  # the server's, where its usage tells them apart
    attempts: int = 0
    client_index: int = 0
    streamed: bool = True  # False: the reply came whole, from a non-streaming request
    think_tags: ThinkTags = field(default_factory=ThinkTags)
    strip: PrefillStrip | None = None  # a continuation that the server may begin by repeating
    base_length: int = 0  # a continuation's: its answer's length before this stream (parts hold only what follows)
    base_reasoning_length: int = 0
    stopped: bool = False  # cancelled: a failure of its connection from now on is the stop's doing
    tool_calls: list = field(default_factory=list)  # the tools it called so far, whole (a catch-up sends them)

    @classmethod
    def of(cls, job: m.Job, think_tags: str) -> Generation:
        """A job's stream state; a continuation's texts go on from the job's seqs and lengths."""
        return cls(job, seq=job.seq_from, length=job.length_from, reasoning_seq=job.reasoning_seq_from,
                   reasoning_length=job.reasoning_length_from, think_tags=ThinkTags(job.think_tags or think_tags),
                   strip=PrefillStrip(job.strip_prefix) if job.strip_prefix else None,
                   base_length=job.length_from, base_reasoning_length=job.reasoning_length_from)

    def text_from(self, offset: int, thinking: bool) -> str | None:
        """This stream's text (answer or thinking) from ``offset`` of the whole reply; None if it began later."""
        base, parts = (self.base_reasoning_length, self.reasoning_parts) if thinking else (self.base_length,
                                                                                          self.parts)
        return None if offset < base else "".join(parts)[offset - base:]

    @property
    def emitted(self) -> int:
        """Deltas sent so far, of either text: none means no first token yet."""
        return self.seq + self.reasoning_seq

    def take(self, event) -> list[tuple[bool, int, str]]:
        """Apply one decoded chunk (``sse.ChunkEvent``); returns the deltas to send: (thinking, seq, text)."""
        if event.finish_reason:
            self.finish_reason = event.finish_reason
        if event.completion_tokens is not None:
            self.prompt_tokens, self.completion_tokens = event.prompt_tokens, event.completion_tokens
            self.reasoning_tokens = event.reasoning_tokens
        out = []
        if event.reasoning:
            held = self.think_tags.server_parses()
            if held:
                self._add(False, held, out)
            self._add(True, event.reasoning, out)
        text = self.strip.feed(event.text) if self.strip is not None and event.text else event.text
        if text:
            for thinking, piece in self.think_tags.feed(text):
                self._add(thinking, piece, out)
        return out

    def take_tool_calls(self, calls: list) -> list[m.GenToolCall]:
        """A chunk's ``tool_calls``: kept whole (a restarted coordinator's catch-up sends them), and returned as the
        events to send, a call's arguments in pieces that each fit a frame."""
        out = []
        for index, call_id, name, arguments in tool_call_deltas(calls):
            call = tool_call_at(self.tool_calls, index, call_id, name)
            if call is None:
                continue  # an index that skips one: nothing a reply can hold
            call["function"]["arguments"] += arguments
            for piece in pieces(arguments) if arguments else [""]:
                out.append(m.GenToolCall(self.job.generation_id, index, call_id, name, piece))
                call_id = name = ""
        return out

    def take_held(self) -> list[tuple[bool, int, str]]:
        """At the end of the stream: the text ``ThinkTags`` held back, as deltas."""
        out = []
        if self.strip is not None and self.strip.held:  # the stream ended inside what may have been the prefill
            for thinking, text in self.think_tags.feed(self.strip.end()):
                self._add(thinking, text, out)
        for thinking, text in self.think_tags.end():
            self._add(thinking, text, out)
        return out

    def _add(self, thinking: bool, text: str, out: list) -> None:
        if "\x00" in text:
            text = text.replace("\x00", REPLACEMENT)
        # a huge upstream event goes on as deltas that each fit a frame (the usual delta is its one piece)
        for piece in (text,) if len(text) <= PIECE_CHARS else pieces(text):
            if thinking:
                self.reasoning_seq += 1
                self.reasoning_parts.append(piece)
                self.reasoning_length += len(piece)
                out.append((True, self.reasoning_seq, piece))
            else:
                self.seq += 1
                self.parts.append(piece)
                self.length += len(piece)
                out.append((False, self.seq, piece))

    def check_ended(self, saw_done: bool) -> None:
        """At the end of the byte stream: without a finish reason the reply is truncated."""
        if self.finish_reason is None:
            raise JobFailed("truncated: the stream ended without a finish reason"
                            + ("" if saw_done else " (connection closed)"))

    def lost_upstream(self, what_failed: str, timed_out: bool, where: str, read_timeout_s: float,
                      first_token_s: float) -> Exception:
        """The connection failed (``what_failed``, in words) or fell silent (``timed_out``). Before the first
        token a failed connection is retried, but silence is waiting (a busy server queues requests), up to
        ``first_token_s``; trying again would only queue the request anew at the back. After the first
        token either is an error that keeps the text. ``where`` names the upstream and its setting."""
        if self.emitted == 0:
            if timed_out:
                return JobFailed(f"no first token within {first_token_s:g} s (CHATTER_FIRST_TOKEN_MS) from "
                                 f"{where}: the server may be busy with other requests")
            return RetryBeforeFirstToken(f"upstream unreachable at {where}: {what_failed}")
        if timed_out:
            return JobFailed(f"upstream sent nothing for {read_timeout_s:g} s after {self.length} characters "
                             "(CHATTER_UPSTREAM_TIMEOUT_MS)")
        return JobFailed(f"upstream disconnected after {self.length} characters: {what_failed}")


def server_kind(models: list) -> str:
    """What the server says it is, from a /v1/models answer: the ``owned_by`` of its models when they agree
    (vLLM says "vllm", llama-server "llamacpp"), else ""."""
    owners = {model.get("owned_by") for model in models if isinstance(model, dict)}
    owner = owners.pop() if len(owners) == 1 else None
    return owner[:64] if isinstance(owner, str) else ""


def connection_failure(exc: BaseException) -> str:
    """What went wrong with a connection, in words, from the exception and its causes: never their repr,
    which for an HTTP client carries the request's headers and so the API key. The openai client reports
    a refused connection as a timeout of its own (``APITimeoutError``); its cause says what it was."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    chain += [e.os_error for e in chain if isinstance(getattr(e, "os_error", None), OSError)]
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return "host name not found"
        if isinstance(e, ConnectionResetError):
            return "connection reset by the server"
    for e in chain:
        name = type(e).__name__
        if name == "ServerDisconnectedError" or "closed" in str(e).lower():
            return "the server closed the connection"
        if "Timeout" in name:
            return "connection timed out"
    return "connection failed"


def not_an_event_stream(content_type: str | None, body_head: bytes, where: str) -> JobFailed:
    """A 200 answer to a streaming request that is not Server-Sent Events: an error body in JSON, or
    (an HTML page, say) an address that is not the API's."""
    error = _error_in_json(body_head)
    if error:
        return JobFailed(f"upstream answered with an error instead of a stream: {error}")
    return JobFailed(f"upstream answered HTTP 200 with {content_type or 'no content type'}, not an event stream: "
                     f"is {where} the API's address (it usually ends in /v1)?")


def _error_in_json(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        err = err.get("message")
    return str(err)[:300] if err else None


def status_failure(status: int, message: str, retry_after_header: str | None) -> Exception:
    """An HTTP error status from the upstream, as the exception that says what happens next."""
    if status in RETRYABLE_STATUS:
        return RetryBeforeFirstToken(f"HTTP {status}: {message}", retry_after_seconds(retry_after_header))
    return JobFailed(f"upstream refused the request: HTTP {status}: {message}")


def retry_delay(attempts: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """How long to wait before attempt ``attempts + 1``: the server's Retry-After when it gave one."""
    if retry_after is not None:
        return retry_after
    base = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempts - 1))
    return base * (1 + (rng or random).random() * BACKOFF_JITTER)


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


# Where servers tell a model's context length in /v1/models: vLLM (max_model_len), llama-server (meta.n_ctx, the
# context it was started with, not meta.n_ctx_train), and the names others use.
CONTEXT_KEYS = ("max_model_len", "context_length", "max_context_length", "context_window", "n_ctx")


def context_lengths(models: list) -> dict[str, int]:
    """model id -> context length in tokens, for the models of a /v1/models answer that say."""
    found = {}
    for model in models:
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            continue
        meta = model.get("meta") if isinstance(model.get("meta"), dict) else {}
        for key in CONTEXT_KEYS:
            value = model.get(key) if key != "n_ctx" else meta.get(key)  # llama-server: meta.n_ctx, as started
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31:
                found[model["id"]] = value
                break
    return found


def server_words(body, fallback: str) -> str:
    """The server's own words for an error status, from its body as each server shapes it: OpenAI and
    llama.cpp ``{"error": {"message": ...}}``, vLLM ``{"message": ...}``, Ollama ``{"error": "..."}``, or a
    short text; else ``fallback`` (the HTTP client's own, which says little: "Error code: 401")."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"].strip():
            return " ".join(err["message"].split())[:500]
        if isinstance(err, str) and err.strip():
            return " ".join(err.split())[:500]
        if isinstance(body.get("message"), str) and body["message"].strip():
            return " ".join(body["message"].split())[:500]
        if isinstance(body.get("detail"), str) and body["detail"].strip():
            return " ".join(body["detail"].split())[:500]
    if isinstance(body, str) and body.strip() and not body.lstrip().startswith("<"):
        return " ".join(body.split())[:500]
    return fallback


MAX_TOOL_CALLS = 256  # calls in one reply: an index beyond is not a call a model makes, but a bad chunk


def tool_call_deltas(calls) -> list[tuple[int, str, str, str]]:
    """A chunk's ``tool_calls`` as (index, call id, function name, more arguments) each, as OpenAI streams them:
    the id and name with a call's first delta, its arguments' text in pieces. What is not of that shape (not an
    object, an index that is not a small count) is skipped."""
    out = []
    for position, call in enumerate(calls or ()):
        if not isinstance(call, dict):
            continue
        index = call.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_TOOL_CALLS:
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        words = [value if isinstance(value, str) else "" for value in
                 (call.get("id"), function.get("name"), function.get("arguments"))]
        if any(words):
            out.append((index, *words))
    return out
