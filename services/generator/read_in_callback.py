"""A live event stream read inside the socket's callback: no reader future, no task switch, no iterator layers.

The openai client builds, authenticates and sends the request and raises its errors, through its aiohttp
backend, as before. Once the response's headers say it is an event stream, the bytes aiohttp's HTTP parser
takes out of each TCP read are decoded right where it hands them on (``StreamReader.feed_data``), and each
chunk event goes to the generation at once. The stream's task sleeps until the stream ends, waking once a
second to check the read deadline.

Why by hand: the read path above aiohttp's parser (futures, task switches, three iterators) was most of the
generator's loop at 1000 streams; reading in the callback takes ~13% off its CPU per token (docs/PERFORMANCE.md,
"The generator's read path").

How: the response's ``StreamReader`` takes a subclass of its own class with no new slots (the same layout, so
``__class__`` may change), whose ``feed_data``, ``feed_eof`` and ``set_exception`` also tell a ``DecodedStream``, found by
the reader's id. Where the response is not the shape this expects (another HTTP backend, another aiohttp),
``reader_of`` gives None and the stream is read the usual way.
"""
from __future__ import annotations

import asyncio
import contextlib

from aiohttp.streams import StreamReader

from services.generator.sse import DONE, SSEDecoder

_STREAMS: dict[int, DecodedStream] = {}  # the reader's id -> its stream (slots cannot grow: a side table)


class DecodedStream:
    """One stream's decoder and what ends it: ``done`` has the stream's end (its DONE or EOF) or its error."""

    def __init__(self, on_event, loop: asyncio.AbstractEventLoop) -> None:
        self.on_event, self.loop = on_event, loop
        self.decoder = SSEDecoder()
        self.done: asyncio.Future = loop.create_future()
        self.saw_done = False
        self.last_data_at = loop.time()

    def feed(self, data: bytes) -> None:
        if self.done.done():  # past its DONE, or failed: the rest is not read
            return
        self.last_data_at = self.loop.time()
        try:
            for event in self.decoder.feed_bytes(data):
                if event is DONE:
                    self.saw_done = True
                    self.done.set_result(None)
                    return
                self.on_event(event)
        except Exception as exc:  # the stream's own error (malformed chunk, a bug): never the parser's
            self.done.set_exception(exc)

    def eof(self) -> None:
        if self.done.done():
            return
        try:
            event = self.decoder.close()
            if event is DONE:
                self.saw_done = True
            elif event is not None:
                self.on_event(event)
        except Exception as exc:
            self.done.set_exception(exc)
            return
        self.done.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class _CallbackReader(StreamReader):
    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        stream = _STREAMS.get(id(self))
        if stream is None:
            return super().feed_data(data, size)
        if data:
            stream.feed(data)
        return False

    def begin_http_chunk_receiving(self) -> None:
        if id(self) not in _STREAMS:
            super().begin_http_chunk_receiving()

    def end_http_chunk_receiving(self) -> None:  # nothing is buffered: no chunk boundaries to keep
        if id(self) not in _STREAMS:
            super().end_http_chunk_receiving()

    def feed_eof(self) -> None:
        super().feed_eof()  # aiohttp's own end: the connection goes back to its pool
        stream = _STREAMS.get(id(self))
        if stream is not None:
            stream.eof()

    def set_exception(self, exc: BaseException, *args) -> None:
        super().set_exception(exc, *args)
        stream = _STREAMS.get(id(self))
        if stream is not None:
            stream.fail(exc)


def _aiohttp_response_of(response):
    stream = getattr(getattr(response, "http_response", None), "stream", None)
    return getattr(getattr(stream, "_stream", None), "_aiohttp_response", None)


def reader_of(response) -> StreamReader | None:
    """The aiohttp reader under the openai client's raw response, or None when it is not there."""
    reader = getattr(_aiohttp_response_of(response), "content", None)
    return reader if type(reader) is StreamReader else None


def transport_of(response) -> asyncio.Transport | None:
    """The transport of the upstream connection under the openai client's raw response, or None when it is
    not there."""
    return getattr(getattr(_aiohttp_response_of(response), "connection", None), "transport", None)


@contextlib.contextmanager
def decode_in_callback(reader: StreamReader, stream: DecodedStream):
    """While inside, what ``reader`` is handed goes to ``stream``, the bytes it holds already first."""
    failed = reader.exception()
    held = reader.read_nowait() if failed is None else b""
    ended = reader.is_eof()
    reader.__class__ = _CallbackReader
    _STREAMS[id(reader)] = stream
    try:
        if held:
            stream.feed(held)
        if failed is not None:
            stream.fail(failed)
        elif ended:
            stream.eof()
        yield stream
    finally:
        _STREAMS.pop(id(reader), None)
        reader.__class__ = StreamReader
        if stream.done.done() and not stream.done.cancelled():
            stream.done.exception()  # taken: an error that the task did not wait for is not "never retrieved"
