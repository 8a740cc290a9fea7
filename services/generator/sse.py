"""A pure decoder for OpenAI-style chat-completion SSE: bytes (or lines) in, events out.

The generator decodes the stream itself, from the response's bytes as they arrive, and reads the JSON with
msgspec: the openai client's typed chunks and line iterator, and ``json.loads``, were each a large share of its CPU
(docs/PERFORMANCE.md, "Backend CPU per token" and "The chunk's JSON").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec


class UpstreamProtocolError(Exception):
    """The upstream sent something that is not a valid chat-completion stream."""


@dataclass(slots=True)
class ChunkEvent:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning: str = ""  # the model's thinking, in a field of its own
    reasoning_tokens: int | None = None  # usage's completion_tokens_details.reasoning_tokens
    tool_calls: list | None = None  # the delta's tool_calls, as the server sent them


# The delta fields servers stream thinking in, the same meaning under two names: DeepSeek's API, llama-server
# (--reasoning-format deepseek) and older vLLM say reasoning_content; newer vLLM, SGLang and OpenRouter reasoning.
REASONING_FIELDS = ("reasoning_content", "reasoning")


DONE = object()  # the ``data: [DONE]`` sentinel
_decode_json = msgspec.json.Decoder().decode  # untyped: dicts, lists and scalars, as json.loads gives


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None  # REASONING_FIELDS, in their order
    reasoning: str | None = None
    tool_calls: list | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    """The common chunk, as far as ``decode_chunk`` reads it; any other type where it looks fails the decode."""
    choices: list[_Choice] | None = None
    usage: dict | None = None
    error: Any = msgspec.UNSET


_decode_common = msgspec.json.Decoder(_Chunk).decode


class SSEDecoder:
    """Feed bytes as they arrive (``feed_bytes``) or lines without their newline (``feed``); get
    ``ChunkEvent``s, ``DONE``, or an exception.

    Handles multi-line ``data:`` fields, comments, ``event: error`` and in-band ``{"error": ...}``.
    """

    __slots__ = ("_data", "_event", "_pending", "_held")

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self._pending = b""  # bytes after the last newline
        self._held: list[bytes] = []  # reads since then without a line end: a long line, joined once it ends

    def feed_bytes(self, data: bytes):
        """Feed bytes as they arrive; gives an iterable of the events they complete (``ChunkEvent`` or ``DONE``)
        in order, so the events before a bad line are taken before its error is raised. Lines end with LF,
        CRLF or CR, as SSE allows; a line is decoded as UTF-8 only once it is whole, so a character
        split across reads is never cut."""
        if not (self._pending or self._data or self._event):
            event = self._whole(data)
            if event is not None:
                return (event,)
        if self._pending and b"\n" not in data and b"\r" not in data and not self._pending.endswith(b"\r"):
            # the middle of a long line (a huge event): held, and joined once, when the line ends; joining each
            # read to what came before was quadratic, 0.67 s of the loop for a 7 MB event read 16 KB at a time
            self._held.append(data)
            return ()
        return self._lines(data)

    def _whole(self, data: bytes):
        """The one event of ``data`` when it is a whole ``data:`` event on one line, of the common chunk shape, read
        in one typed decode, or None: then the lines' path reads it (and any error is theirs to raise).

        Why: a read of a live stream is nearly always one chunk event, and this path reads it in half the time
        (docs/PERFORMANCE.md, "The chunk's JSON"). ``tests/unit/test_sse.py`` holds it to the lines' path: the
        same event whenever it gives one."""
        if not data.startswith(b"data: ") or not data.endswith(b"\n\n") or data.count(b"\n") != 2 or b"\r" in data:
            return None
        body = data[6:-2]
        if body == b"[DONE]":
            return DONE
        if not body.isascii():  # the lines' path decodes the whole line: invalid UTF-8 anywhere is its error
            try:
                body.decode()
            except UnicodeDecodeError:
                return None
        try:
            chunk = _decode_common(body)
        except (ValueError, RecursionError):  # not the common shape (or not JSON): the lines' path reads it
            return None
        if chunk.error is not msgspec.UNSET:
            return None
        event = ChunkEvent()
        if chunk.choices:
            choice = chunk.choices[0]
            delta = choice.delta
            if delta is not None:
                if delta.content is not None:
                    event.text = delta.content
                event.reasoning = delta.reasoning_content or delta.reasoning or ""
                event.tool_calls = delta.tool_calls
            event.finish_reason = choice.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
            event.prompt_tokens = usage.get("prompt_tokens")
            event.completion_tokens = usage.get("completion_tokens")
            event.reasoning_tokens = reasoning_tokens_of(usage)
        return event

    def _lines(self, data: bytes):
        if self._held:
            data, self._held = b"".join(self._held) + data, []
        buffer = self._pending + data if self._pending else data
        held = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):  # the LF of a CRLF may still be on its way
                held, buffer = b"\r", buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._pending = lines.pop() + held
        for raw in lines:
            event = self.feed(self._decode(raw))
            if event is not None:
                yield event

    @staticmethod
    def _decode(raw: bytes) -> str:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise UpstreamProtocolError(f"upstream sent invalid UTF-8: {raw[:120]!r}") from None

    def feed(self, line: str):
        if line == "":
            return self._dispatch()
        if line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
            return None
        if line.startswith("event:"):
            self._event = line[6:].strip()
        return None  # comments (":"), id:, retry: and unknown fields are ignored, as SSE says

    def close(self):
        """End of the byte stream: an event without its blank line still counts."""
        if self._held:
            self._pending, self._held = self._pending + b"".join(self._held), []
        if self._pending:  # the last line, even without its newline
            pending, self._pending = self._pending, b""
            event = self.feed(self._decode(pending.rstrip(b"\r")))  # a held CR ends a blank line: it dispatches
            if event is not None:
                return event
        return self._dispatch()

    def _dispatch(self):
        if not self._data:
            self._event = ""
            return None
        data = "\n".join(self._data)
        event = self._event
        self._data.clear()
        self._event = ""
        if data == "[DONE]":
            return DONE
        try:
            obj = _decode_json(data)
        except (ValueError, RecursionError):  # msgspec's DecodeError is a ValueError; nesting past the stack
            raise UpstreamProtocolError(f"malformed chunk from upstream: {data[:120]!r}") from None
        if event == "error" or (isinstance(obj, dict) and "error" in obj):
            err = obj.get("error", obj) if isinstance(obj, dict) else obj
            message = err.get("message", err) if isinstance(err, dict) else err
            raise UpstreamProtocolError(f"upstream error event: {message}")
        return decode_chunk(obj)


def decode_chunk(obj) -> ChunkEvent:
    if not isinstance(obj, dict):
        raise UpstreamProtocolError(f"chunk is not an object: {str(obj)[:120]!r}")
    event = ChunkEvent()
    choices = obj.get("choices") or []
    if choices:
        choice = choices[0]
        if not isinstance(choice, dict):
            raise UpstreamProtocolError("choice is not an object")
        delta = choice.get("delta") or {}
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str):
                event.text = content
            if len(delta) > 1 or content is None:  # the common chunk is {"content": ...} alone
                event.reasoning = reasoning_of(delta)
                calls = delta.get("tool_calls")
                event.tool_calls = calls if isinstance(calls, list) else None
        event.finish_reason = choice.get("finish_reason")
    usage = obj.get("usage")
    if isinstance(usage, dict):
        event.prompt_tokens = usage.get("prompt_tokens")
        event.completion_tokens = usage.get("completion_tokens")
        event.reasoning_tokens = reasoning_tokens_of(usage)
    return event


def reasoning_of(message: dict) -> str:
    """The thinking in a delta (or a whole reply's message), under either of its names."""
    for name in REASONING_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def reasoning_tokens_of(usage: dict) -> int | None:
    details = usage.get("completion_tokens_details")
    value = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
