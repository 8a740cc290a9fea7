"""One job's request to the upstream, read as it streams: the openai clients, the retries before the first
token, the read deadlines, and the connection a stop closes. Each decoded chunk goes to ``on_chunk`` at once;
what the chunk means is the machine's (``machine.py``) and the stream's rules' (``rules.py``).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Callable

import aiohttp
import httpx2
import openai

from services import config
from services.generator.read_in_callback import DecodedStream, decode_in_callback, reader_of, transport_of
from services.generator.request import AsyncOpenAI, request_body, streaming_request
from services.generator.rules import (Generation, JobFailed, RetryBeforeFirstToken, connection_failure,
                                      context_lengths, not_an_event_stream, retry_delay, server_kind,
                                      server_words, status_failure)
from services.generator.sse import DONE, ChunkEvent, SSEDecoder, UpstreamProtocolError, reasoning_of

# What a request to the upstream can raise: a status, a connection failure (the openai client's own, or its
# HTTP backends' when they escape it), or our read deadline.
UPSTREAM_ERRORS = (openai.APIStatusError, openai.APIConnectionError, httpx2.TransportError, aiohttp.ClientError,
                   TimeoutError)

# Streams are spread over clients of this many streams each: one connection pool for hundreds of
# streams scans them all on every request (httpcore: O(n²) per burst).
STREAMS_PER_CLIENT = 32
READ_DEADLINE_STEP_S = 1.0  # how often a live stream moves its read deadline on


def make_http_client(timeout: httpx2.Timeout, kind: str = "aiohttp") -> httpx2.AsyncClient:
    """The openai client's own HTTP backends. aiohttp (its C parser) reads a live stream for ~65 µs CPU
    per chunk where the default httpx2 stack takes ~141 µs (docs/PERFORMANCE.md, "The generator's read path")."""
    if kind == "httpx":
        return openai.DefaultAsyncHttpxClient(timeout=timeout)
    return openai.DefaultAioHttpClient(timeout=timeout)


class Upstream:
    def __init__(self, settings: config.GeneratorSettings, concurrency: int) -> None:
        self.streaming, self.include_usage = settings.streaming, settings.include_usage
        self.retry_deadline_s = settings.retry_deadline_ms / 1000
        self.read_timeout_s = settings.upstream_timeout_ms / 1000
        self.first_token_s = settings.first_token_ms / 1000  # before it, silence is the server's queue
        self.in_callback = settings.stream_reader == "fed"
        self.where = f"{settings.base_url} (OPENAI_BASE_URL)"
        # No per-read timeout in the HTTP client: aiohttp re-arms a timer on every read (11% of this
        # process under load, py-spy). ``stream_once`` keeps its own deadline, moved at most once a second.
        timeout = httpx2.Timeout(connect=5.0, read=None, write=self.read_timeout_s, pool=self.read_timeout_s)
        self.clients = [AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            max_retries=0,  # retries are ours: before the first token only, honouring Retry-After
            timeout=timeout,
            http_client=make_http_client(timeout, settings.http_client),
        ) for _ in range(-(-concurrency // STREAMS_PER_CLIENT))]
        self.client_streams = [0] * len(self.clients)
        self.connections: dict[str, asyncio.Transport] = {}  # generation id -> its live response's connection

    async def close(self) -> None:
        for client in self.clients:
            await client.close()

    def stop(self, generation_id: str) -> None:
        """Close a stream's connection now, so the server sees it close at once: not after the task's next step
        and the transport's close, each a turn of a loop that runs long under a burst (docs/PERFORMANCE.md,
        "Cancel latency"). The generation was marked stopped first (``GeneratorMachine.stop``)."""
        connection = self.connections.pop(generation_id, None)
        if connection is not None:
            shut_down(connection)
            connection.abort()  # closed, never back in the pool

    async def models(self) -> tuple[dict[str, int], str]:
        """The models' context lengths where the server tells them (vLLM's /v1/models: max_model_len), and what
        the server says it is."""
        async with asyncio.timeout(10):
            page = await self.clients[0].models.list()
        models = [model.model_dump() for model in page.data]
        return context_lengths(models), server_kind(models)

    async def run(self, gen: Generation, on_chunk: Callable[[Generation, ChunkEvent], None],
                  on_retry: Callable[[], None]) -> None:
        """The job's stream to its end, each chunk to ``on_chunk``; failures before the first token are retried
        until CHATTER_RETRY_DEADLINE_MS. Raises ``JobFailed`` (an error, in words), or CancelledError (stopped)."""
        gen.client_index = min(range(len(self.clients)), key=self.client_streams.__getitem__)
        self.client_streams[gen.client_index] += 1
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.retry_deadline_s
            while True:
                gen.attempts += 1
                try:
                    streaming = gen.streamed = self.streaming if gen.job.stream is None else gen.job.stream
                    await (self.stream_once(gen, on_chunk) if streaming else self.whole_once(gen, on_chunk))
                    return
                except RetryBeforeFirstToken as exc:
                    delay = retry_delay(gen.attempts, exc.retry_after)
                    if loop.time() + delay > deadline:
                        raise JobFailed(f"upstream failed after {gen.attempts} attempts: {exc}") from None
                    on_retry()
                    await asyncio.sleep(delay)
        finally:
            self.client_streams[gen.client_index] -= 1

    async def stream_once(self, gen: Generation, on_chunk) -> None:
        generation_id = gen.job.generation_id
        try:
            async with asyncio.timeout(self.first_token_s) as read_deadline, \
                    streaming_request(self.clients[gen.client_index], request_body(
                        gen.job.model, gen.job.messages, gen.job.params, True, self.include_usage)) as response:
                connection = transport_of(response)
                if connection is not None:
                    self.connections[generation_id] = connection  # for a stop to close at once
                content_type = response.headers.get("content-type")
                if not (content_type or "").startswith("text/event-stream"):
                    head = b""
                    async for data in response.iter_bytes():  # enough to tell an error body from a page
                        head += data
                        if len(head) >= 4096:
                            break
                    raise not_an_event_stream(content_type, head[:4096], self.where)
                reader = reader_of(response) if self.in_callback else None
                if reader is not None:
                    saw_done = await self.read_in_callback(gen, on_chunk, reader, read_deadline)
                else:
                    saw_done = await self.read_iterated(gen, on_chunk, response, read_deadline)
        except UPSTREAM_ERRORS as exc:
            raise self.failure(gen, exc) from None
        except UpstreamProtocolError as exc:
            raise JobFailed(str(exc)) from None
        finally:
            self.connections.pop(generation_id, None)
        if gen.stopped:  # the stream ended because a stop closed it
            raise asyncio.CancelledError
        gen.check_ended(saw_done)

    async def read_in_callback(self, gen: Generation, on_chunk, reader, read_deadline: asyncio.Timeout) -> bool:
        """The event stream decoded inside the socket's callback (``read_in_callback.py``); True if it ended with
        DONE. Until the first token the deadline is CHATTER_FIRST_TOKEN_MS from the request; from then on the
        stream may fall silent for CHATTER_UPSTREAM_TIMEOUT_MS, checked once a second."""
        loop = asyncio.get_running_loop()
        with decode_in_callback(reader, DecodedStream(lambda event: on_chunk(gen, event), loop)) as stream:
            while not stream.done.done():
                await asyncio.wait((stream.done,), timeout=READ_DEADLINE_STEP_S)
                if gen.emitted:
                    read_deadline.reschedule(None)  # the first token came: silence is the limit now
                    if loop.time() - stream.last_data_at > self.read_timeout_s:
                        raise TimeoutError
            stream.done.result()  # the stream's own error, or the connection's
            return stream.saw_done

    async def read_iterated(self, gen: Generation, on_chunk, response, read_deadline: asyncio.Timeout) -> bool:
        """The event stream through the client's byte iterator (an HTTP backend that ``read_in_callback.py`` does
        not read)."""
        decoder = SSEDecoder()
        loop = asyncio.get_running_loop()
        moved_at, following = loop.time(), False
        async for data in response.iter_bytes():
            now = loop.time()
            # until the first token the deadline is CHATTER_FIRST_TOKEN_MS from the request; from then on it
            # follows the data, CHATTER_UPSTREAM_TIMEOUT_MS ahead, moved a second at a time
            if gen.emitted and (not following or now - moved_at > READ_DEADLINE_STEP_S):
                read_deadline.reschedule(now + self.read_timeout_s)
                moved_at, following = now, True
            for event in decoder.feed_bytes(data):
                if event is DONE:
                    return True
                on_chunk(gen, event)
        event = decoder.close()
        if event is not None and event is not DONE:
            on_chunk(gen, event)
        return event is DONE

    async def whole_once(self, gen: Generation, on_chunk) -> None:
        """Non-streaming mode: one request, one chunk, through the same pipeline."""
        try:
            async with asyncio.timeout(self.first_token_s):  # a whole reply sends nothing until it is done
                completion = await self.clients[gen.client_index].chat.completions.create(
                    model=gen.job.model, messages=gen.job.messages, stream=False, extra_body=gen.job.params or None)
        except UPSTREAM_ERRORS as exc:
            raise self.failure(gen, exc) from None
        if not completion.choices:
            raise JobFailed("upstream returned no choices")
        choice = completion.choices[0]
        usage = completion.usage
        details = usage.completion_tokens_details if usage else None
        calls = [{"index": i, "id": call.id, "function": {"name": call.function.name,
                                                          "arguments": call.function.arguments}}
                 for i, call in enumerate(choice.message.tool_calls or ()) if getattr(call, "function", None)]
        on_chunk(gen, ChunkEvent(
            choice.message.content or "", choice.finish_reason,
            usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None,
            reasoning_of(choice.message.model_extra or {}),  # fields the openai types do not name
            details.reasoning_tokens if details else None, calls or None))

    def failure(self, gen: Generation, exc: Exception) -> BaseException:
        """An upstream failure as the exception that says what happens next, in words. A stopped generation's
        is its stop: a connection it closed itself is neither retried nor an error."""
        if gen.stopped:
            return asyncio.CancelledError()
        if isinstance(exc, openai.APIStatusError):
            return status_failure(exc.status_code, error_message(exc), exc.response.headers.get("retry-after"))
        if isinstance(exc, aiohttp.ClientResponseError):  # aiohttp's parser could not read the answer
            return JobFailed(f"upstream at {self.where} sent a response that is not HTTP")
        timed_out = isinstance(exc, TimeoutError)  # our own read deadline; anything else is the connection
        return gen.lost_upstream("no data" if timed_out else connection_failure(exc), timed_out, self.where,
                                 self.read_timeout_s, self.first_token_s)


def shut_down(connection: asyncio.Transport) -> None:
    """The FIN goes now, not when the transport closes its socket in a later turn of the loop. A socket the
    loop closed meanwhile refuses (its descriptor is gone, never another's)."""
    with contextlib.suppress(OSError, AttributeError):
        connection.get_extra_info("socket").shutdown(socket.SHUT_RDWR)


def error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if body is None:  # a streaming request's error body may not have been parsed
        try:
            body = exc.response.json()
        except Exception:
            body = getattr(exc.response, "text", None)
    return server_words(body, exc.message)


MODEL_ERRORS = (*UPSTREAM_ERRORS, openai.APIError, ValueError, TypeError)  # a /v1/models the server does not have
