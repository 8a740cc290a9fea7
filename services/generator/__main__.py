"""The generator process: pulls jobs when it has capacity, streams each from the upstream
through the openai client's raw streaming response, and pushes seq-numbered deltas.

A cancel on the control channel cancels the job's task, which closes the upstream response
at once. Failures before the first token are retried within a deadline; after it, never. Those
rules (numbering, how a stream must end, what is retried) are pure, in ``rules.py``; this is the I/O.

Streams go on through a coordinator outage of up to CHATTER_COORDINATOR_SILENT_MS, their events held
(bounded). A coordinator that restarted has a new instance id in its heartbeat: the generator then
announces the generations it holds, live or recently ended (``GenAnnounce``), and answers the new
coordinator's ``ResumeGeneration`` with each text beyond the durable offsets (``GenCatchUp``), then the
generation's end if it ended meanwhile.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import sys
import threading
import time
import uuid

import aiohttp
import httpx2
import openai
import zmq
import zmq.asyncio

from protocol import codec, messages as m
import transport
from protocol.codec import PIECE_CHARS, pieces
from services import config, shell
from services.generator.fed import Sink, fed, reader_of, transport_of
from services.generator.rules import (Generation, JobFailed, RetryBeforeFirstToken, connection_failure,
                                      context_lengths, not_an_event_stream, retry_delay, server_kind,
                                      server_words, status_failure)
from services.generator.request import AsyncOpenAI, request_body, streaming_request
from services.generator.sse import DONE, ChunkEvent, SSEDecoder, UpstreamProtocolError, reasoning_of
from services.logs import redact
from services.tokens import count_tokens
from services.waiting import FirstTokenWait

# What a request to the upstream can raise: a status, a connection failure (the openai client's own, or its
# HTTP backends' when they escape it), or our read deadline.
UPSTREAM_ERRORS = (openai.APIStatusError, openai.APIConnectionError, httpx2.TransportError, aiohttp.ClientError,
                   TimeoutError)

# Streams are spread over clients of this many streams each: one connection pool for hundreds of
# streams scans them all on every request (httpcore: O(n²) per burst).
STREAMS_PER_CLIENT = 32
JOBS_PER_TURN = 16  # jobs started in one turn of the event loop, at most
READ_DEADLINE_STEP_S = 1.0  # how often a live stream moves its read deadline on
ENDED_KEPT_S = 60.0  # an ended generation's text and end are kept this long, for a coordinator that restarts
ENDED_KEPT_MAX = 10_000
# How long the loop's thread may hold the interpreter's lock while the stopper thread waits for it (Python's
# default: 5 ms). Only a waiting thread makes the loop let go, and the stopper waits only when a cancel or a
# heartbeat came. Measured (bench/switch_interval.py: two threads in turn woken by zmq messages while a third
# runs Python): p50 / p99 5.3 / 10.5–12.7 ms at 5 ms, 1.3 / 2.6–3.8 at 1 ms.
SWITCH_INTERVAL_S = 0.001
UNSENT_MAX_FRAMES = 100_000  # events held while the coordinator is away; past it the oldest go (a catch-up
# after its restart resends the text they carried)


def make_http_client(timeout: httpx2.Timeout, kind: str = "aiohttp") -> httpx2.AsyncClient:
    """The openai client's own HTTP backends. aiohttp (its C parser) reads a live stream for ~65 µs CPU
    per chunk where the default httpx2 stack takes ~141 µs (measured here, 300 streams at 20 tok/s)."""
    if kind == "httpx":
        return openai.DefaultAsyncHttpxClient(timeout=timeout)
    return openai.DefaultAioHttpClient(timeout=timeout)


class GeneratorShell:
    def __init__(self) -> None:
        self.log = shell.start("generator")
        self.generator_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.settings = settings = config.GeneratorSettings.from_env()
        self.concurrency = settings.concurrency
        self.streaming = settings.streaming
        self.include_usage = settings.include_usage
        self.retry_deadline_s = settings.retry_deadline_ms / 1000
        self.coordinator_silent_s = settings.coordinator_silent_ms / 1000
        self.read_timeout_s = settings.upstream_timeout_ms / 1000
        self.first_token_s = settings.first_token_ms / 1000  # before it, silence is the server's queue
        self.fed = settings.stream_reader == "fed"
        self.contexts: dict[str, int] = {}  # model -> context length, as the server tells it
        self.server = ""  # what the server says it is (owned_by): the coordinator's continue style follows it
        self.upstream = f"{settings.base_url} (OPENAI_BASE_URL)"
        # No per-read timeout in the HTTP client: aiohttp re-arms a timer on every read (11% of this
        # process under load, py-spy). ``stream_once`` keeps its own deadline, moved at most once a second.
        timeout = httpx2.Timeout(connect=5.0, read=None, write=self.read_timeout_s, pool=self.read_timeout_s)
        self.clients = [AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            max_retries=0,  # retries are ours: before the first token only, honouring Retry-After
            timeout=timeout,
            http_client=make_http_client(timeout, settings.http_client),
        ) for _ in range(-(-self.concurrency // STREAMS_PER_CLIENT))]
        self.client_streams = [0] * len(self.clients)
        self.ctx = zmq.asyncio.Context()
        self.jobs = transport.open_socket(self.ctx, transport.JOBS, bind=False)
        # A plain socket: a non-blocking send costs a few µs, where an awaited zmq.asyncio send cost ~18%
        # of this process under load (py-spy). Events are batched per event-loop turn, in order.
        self.sync_ctx = zmq.Context()
        self.events = transport.open_socket(self.sync_ctx, transport.GEN_EVENTS, bind=False)
        self.refusals = shell.RefusalWatch(self.log, self.events, transport.GEN_EVENTS)
        self.pending_deltas: list[list] = []
        self.pending_chars = 0  # their texts' characters
        self.unsent: collections.deque[bytes] = collections.deque()  # held while the coordinator's queue is full
        self.unsent_dropped = 0
        self.live: dict[str, Generation] = {}  # generation id -> its stream's state, while it runs
        # the streams started here with no delta sent yet: while there is one, the event loop is not paced
        self.first_token_awaited = FirstTokenWait(lambda gen_id: (gen := self.live.get(gen_id)) is not None
                                                  and not gen.emitted)
        # recently ended: generation id -> (its state, the event that ended it, when), for a restarted coordinator
        self.ended: collections.OrderedDict[str, tuple[Generation, m.Message, float]] = collections.OrderedDict()
        self.coordinator_instance: str | None = None
        self.flush_scheduled = False
        # read inside its descriptor's callback (``on_control``): a cancel acts in the loop turn it arrives in
        self.control = transport.open_socket(self.sync_ctx, transport.CONTROL, bind=False,
                                             subscribe=m.CONTROL_TOPIC_ALL)
        self.tasks: dict[str, asyncio.Task] = {}
        self.connections: dict[str, asyncio.Transport] = {}  # generation id -> its live response's connection
        self.cancelled_early: dict[str, float] = {}  # cancels that beat their job here
        self.retries = 0
        self.bad_frames = 0
        self.coordinator_heard_at = time.monotonic()
        self.capacity = asyncio.Semaphore(self.concurrency)
        self.stop = asyncio.Event()
        count_tokens("warm up", settings.default_model)  # load the encoding now, not on the first token

    def emit(self, msg: m.Message) -> None:
        """Send an event after every delta emitted before it: order per generation is the protocol. An event
        over the frame limit (a bug: texts are cut to fit) fails alone, logged with its type and size."""
        self.flush_deltas()
        try:
            self._send(msg.encode())
        except codec.FrameTooLarge as exc:
            self.log.error("frame_too_large", message=type(msg).__name__, bytes=exc.size, limit=codec.MAX_FRAME_BYTES)

    def emit_delta(self, generation_id: str, seq: int, text: str, tokens: int, received_at: float,
                   thinking: bool) -> None:
        # a DeltaItem: an answer's leaves its trailing ``thinking`` out
        self.pending_deltas.append([generation_id, seq, text, tokens, received_at, True] if thinking
                                   else [generation_id, seq, text, tokens, received_at])
        self.pending_chars += len(text)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_deltas)  # after this turn's other chunks

    def flush_deltas(self) -> None:
        self.flush_scheduled = False
        if self.pending_deltas:
            batch, self.pending_deltas = self.pending_deltas, []
            if self.pending_chars <= PIECE_CHARS:
                self._send(m.GenDeltaBatch(batch).encode())
            else:  # a frame each up to a piece's worth of text (a piece is at most 1 MiB)
                group, chars = [], 0
                for item in batch:
                    if group and chars + len(item[2]) > PIECE_CHARS:
                        self._send(m.GenDeltaBatch(group).encode())
                        group, chars = [], 0
                    group.append(item)
                    chars += len(item[2])
                self._send(m.GenDeltaBatch(group).encode())
            self.pending_chars = 0

    def _send(self, frame: bytes) -> None:
        self.unsent.append(frame)
        if len(self.unsent) > UNSENT_MAX_FRAMES:
            self.unsent.popleft()
            self.unsent_dropped += 1
        while self.unsent:
            try:
                self.events.send(self.unsent[0], zmq.NOBLOCK)
            except zmq.Again:
                return  # the heartbeat loop retries; nothing is reordered or dropped
            self.unsent.popleft()

    # ------------------------------------------------------------ loops

    async def pull_jobs(self) -> None:
        taken = 0
        while True:
            await self.capacity.acquire()  # no free slot: leave jobs with the coordinator
            try:
                frames = await self.jobs.recv_multipart()
            except BaseException:
                self.capacity.release()
                raise
            self.coordinator_heard_at = time.monotonic()
            try:
                job = m.job_of(frames)  # one frame, or a long prompt's several
            except codec.FrameError as err:
                self.capacity.release()
                self.bad_frames += 1
                shell.log_bad_frame(self.log, "jobs", err, self.bad_frames)
                continue
            if self.cancelled_early.pop(job.generation_id, None) is not None or job.generation_id in self.tasks:
                self.capacity.release()
                continue
            task = asyncio.create_task(self.run_job(job))
            self.tasks[job.generation_id] = task
            taken += 1
            if taken % JOBS_PER_TURN == 0:
                # a queue of jobs is otherwise taken in one step, and their request set-ups (~1 ms each) all
                # run before the loop polls its sockets again, a cancel waiting behind them
                # (docs/PERFORMANCE.md, "Cancels during a burst")
                await asyncio.sleep(0)

    def on_control(self) -> None:
        """Every frame the control channel holds, handled at once. Its descriptor is edge-triggered: it is
        drained to the end each time it signals. A cancel through a zmq.asyncio receive took three loop turns
        (the descriptor, the future, the task) before it reached its task: at 1000 streams, tens of ms
        (docs/PERFORMANCE.md, "Cancel latency")."""
        while True:
            try:
                frame = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.on_control_frame(frame)
            except Exception:  # a bug costs this frame, never the channel
                self.log.exception("control_frame_failed")

    def on_control_frame(self, frame: bytes) -> None:
        try:
            msg = codec.decode(transport.payload_of(frame), (m.CancelGeneration, m.CoordinatorHeartbeat,
                                                             m.ResumeGeneration))
        except codec.FrameError as err:
            self.bad_frames += 1
            shell.log_bad_frame(self.log, "control", err, self.bad_frames)
            return
        self.coordinator_heard_at = time.monotonic()
        if isinstance(msg, m.CoordinatorHeartbeat):
            if msg.instance and msg.instance != self.coordinator_instance:
                if self.coordinator_instance is not None:
                    self.announce()  # a new coordinator: it must hear what we hold, or it sweeps it
                self.coordinator_instance = msg.instance
        elif isinstance(msg, m.ResumeGeneration):
            self.resume(msg)
        elif isinstance(msg, m.CancelGeneration):
            if not self.stop_generation(msg.generation_id):
                self.cancelled_early[msg.generation_id] = time.monotonic()

    def stop_at_once(self) -> None:
        """The stopper thread: a subscription of its own to the control channel, so that a cancel shuts its
        upstream connection down while the event loop is still busy with its turn. Under a burst one turn
        runs for tens of ms; this thread waits for the interpreter's lock at most its switch interval (5 ms).
        It only marks the generation stopped and shuts the socket down (a system call, safe from any thread);
        the loop reads the same cancel and does the rest (``stop_generation``). Measured: docs/PERFORMANCE.md,
        "Cancel latency"."""
        control = transport.open_socket(self.sync_ctx, transport.CONTROL, bind=False, subscribe=m.CONTROL_TOPIC_ALL)
        try:
            while True:
                frame = control.recv()
                try:
                    msg = codec.decode(transport.payload_of(frame), (m.CancelGeneration,))
                except codec.FrameError:
                    continue  # a heartbeat, a resume or a bad frame: the loop's to read
                gen, connection = self.live.get(msg.generation_id), self.connections.get(msg.generation_id)
                if gen is not None and connection is not None:
                    gen.stopped = True  # first: the connection's end is the stop's, never retried
                    shut_down(connection)
        except zmq.ContextTerminated:
            pass
        finally:
            control.close(0)

    def stop_generation(self, generation_id: str) -> bool:
        """Stop a generation now; False if it is not running here. Its upstream connection is shut down in
        this callback, so the server sees it close at once: not after the task's next step and the
        transport's close, each a turn of a loop that runs long under a burst (docs/PERFORMANCE.md, "Cancel
        latency"). The generation is marked first, so that its closed connection is never taken for a
        failure of the upstream and retried; then its task is cancelled, which ends the response."""
        task = self.tasks.get(generation_id)
        if task is None:
            return False
        gen = self.live.get(generation_id)
        if gen is not None:
            gen.stopped = True
        connection = self.connections.pop(generation_id, None)
        if connection is not None:
            shut_down(connection)
            connection.abort()  # closed, never back in the pool
        task.cancel()
        return True

    def announce(self) -> None:
        held = [(gen, False) for gen in self.live.values()] + [(gen, True) for gen, _, _ in self.ended.values()]
        self.emit(m.GenAnnounce(self.generator_id, [
            m.LiveGeneration(gen.job.generation_id, gen.seq, gen.length, gen.reasoning_seq, gen.reasoning_length,
                             ended) for gen, ended in held]))
        self.log.info("generations_announced", live=len(self.live), ended=len(self.ended))

    def resume(self, msg: m.ResumeGeneration) -> None:
        """A restarted coordinator adopted this generation: the text beyond its durable offsets, then its end if
        it ended. Another generator's generation is not ours to answer."""
        ended = self.ended.get(msg.generation_id)
        gen = self.live.get(msg.generation_id) or (ended[0] if ended else None)
        if gen is None:
            return
        text, reasoning = gen.text_from(msg.offset, False), gen.text_from(msg.reasoning_offset, True)
        if text is None or reasoning is None:  # durable text ends before this continuation began
            self.emit(m.GenError(msg.generation_id, gen.seq, "after the coordinator's restart, the durable text "
                                 "ends before this stream began", gen.attempts))
            return
        self.flush_deltas()
        for catch_up in catch_up_parts(msg, gen.seq, text, gen.reasoning_seq, reasoning, gen.tool_calls):
            self._send(catch_up.encode())
        if ended is not None:
            self.emit(ended[1])

    async def learn_contexts(self) -> None:
        """The models' context lengths, where the server tells them (vLLM's /v1/models: max_model_len), now and
        every minute; the coordinator budgets prompts by them when a session sets no budget of its own."""
        while True:
            try:
                async with asyncio.timeout(10):
                    page = await self.clients[0].models.list()
                models = [model.model_dump() for model in page.data]
                found, server = context_lengths(models), server_kind(models)
                if found != self.contexts or server != self.server:
                    self.log.info("model_contexts", contexts=found, server=server)
                self.contexts, self.server = found, server
            except (*UPSTREAM_ERRORS, openai.APIError, ValueError, TypeError) as exc:
                self.log.debug("model_contexts_unknown", error=shell.plain_error(exc))  # not every server says
            await asyncio.sleep(60)

    async def heartbeat(self) -> None:
        while True:
            free = self.concurrency - len(self.tasks)
            self.emit(m.GeneratorHeartbeat(self.generator_id, free, len(self.tasks), self.retries, os.getpid(),
                                           self.contexts or None, self.server))
            now = time.monotonic()
            if self.tasks and now - self.coordinator_heard_at > self.coordinator_silent_s:
                self.log.warning("coordinator_silent", cancelling=len(self.tasks))
                for generation_id in list(self.tasks):
                    self.stop_generation(generation_id)  # never leave an upstream request orphaned
            for gen_id, at in list(self.cancelled_early.items()):
                if now - at > 60:
                    del self.cancelled_early[gen_id]
            while self.ended and (len(self.ended) > ENDED_KEPT_MAX or now - next(iter(self.ended.values()))[2] > ENDED_KEPT_S):
                self.ended.popitem(last=False)
            if self.unsent_dropped:
                self.log.warning("events_dropped", count=self.unsent_dropped, held=len(self.unsent))
                self.unsent_dropped = 0
            self.refusals.check()
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------ one job

    async def run_job(self, job: m.Job) -> None:
        gen = Generation.of(job, self.settings.think_tags)
        gen.client_index = min(range(len(self.clients)), key=self.client_streams.__getitem__)
        self.client_streams[gen.client_index] += 1
        log = self.log.bind(generation_id=job.generation_id)
        self.live[job.generation_id] = gen
        self.first_token_awaited.add(job.generation_id)
        try:
            self.emit(m.GenStarted(job.generation_id, self.generator_id))
            await self.attempt_until_deadline(gen)
            self.send_held(gen)
            self.end(gen, self.done(gen))
            log.info("generation_done", seq=gen.seq, length=gen.length, reasoning_length=gen.reasoning_length,
                     attempts=gen.attempts)
        except asyncio.CancelledError:
            self.emit(m.GenCancelled(job.generation_id, gen.seq))
            log.info("generation_cancelled", seq=gen.seq)
        except JobFailed as exc:
            self.send_held(gen)
            self.end(gen, m.GenError(job.generation_id, gen.seq, redact(str(exc)), gen.attempts))
            log.warning("generation_failed", reason=str(exc), seq=gen.seq)
        except Exception as exc:  # a bug must end this generation, never the process
            # the reason is stored and shown: a type and plain words, never a repr (it may hold the key)
            self.emit(m.GenError(job.generation_id, gen.seq,
                                 f"generator fault: {type(exc).__name__}: {shell.plain_error(exc)}", gen.attempts))
            log.exception("generation_crashed")
        finally:
            self.client_streams[gen.client_index] -= 1
            self.live.pop(job.generation_id, None)
            self.first_token_awaited.ended(job.generation_id)
            self.tasks.pop(job.generation_id, None)
            self.capacity.release()

    def end(self, gen: Generation, msg: m.Message) -> None:
        """Send how a stream ended, and keep it a while with the text: a coordinator that restarts before it
        made the end durable asks for both again."""
        self.emit(msg)
        self.ended[gen.job.generation_id] = (gen, msg, time.monotonic())

    def send_held(self, gen: Generation) -> None:
        """The stream ended: the text held back in case it began a </think> goes out as it is."""
        now = time.time()
        for thinking, seq, text in gen.take_held():
            self.emit_delta(gen.job.generation_id, seq, text, count_tokens(text, gen.job.model), now, thinking)

    @staticmethod
    def done(gen: Generation) -> m.GenDone:
        """The end of a completed stream: its counts, the server's where it reported usage. Completion tokens
        include the thinking, as OpenAI counts them; the thinking's share is the server's only where its usage
        tells it apart (completion_tokens_details.reasoning_tokens)."""
        model = gen.job.model
        thinking = count_tokens("".join(gen.reasoning_parts), model) if gen.reasoning_parts else 0
        if gen.completion_tokens is not None:
            tokens, source = gen.completion_tokens, "server"
        else:
            tokens, source = count_tokens("".join(gen.parts), model) + thinking, "estimated"
        reasoning, reasoning_source = ((gen.reasoning_tokens, "server") if gen.reasoning_tokens is not None
                                       else (thinking, "estimated"))
        return m.GenDone(gen.job.generation_id, gen.seq, gen.length, gen.finish_reason or "", tokens, source,
                         gen.prompt_tokens, gen.streamed, gen.reasoning_seq, gen.reasoning_length, reasoning,
                         reasoning_source)

    async def attempt_until_deadline(self, gen: Generation) -> None:
        deadline = time.monotonic() + self.retry_deadline_s
        while True:
            gen.attempts += 1
            try:
                streaming = gen.streamed = self.streaming if gen.job.stream is None else gen.job.stream
                await (self.stream_once(gen) if streaming else self.whole_once(gen))
                return
            except RetryBeforeFirstToken as exc:
                delay = retry_delay(gen.attempts, exc.retry_after)
                if time.monotonic() + delay > deadline:
                    raise JobFailed(f"upstream failed after {gen.attempts} attempts: {exc}") from None
                self.retries += 1
                await asyncio.sleep(delay)


    async def stream_once(self, gen: Generation) -> None:
        generation_id = gen.job.generation_id
        try:
            async with asyncio.timeout(self.first_token_s) as read_deadline, \
                    streaming_request(self.clients[gen.client_index], request_body(
                        gen.job.model, gen.job.messages, gen.job.params, True, self.include_usage)) as response:
                transport = transport_of(response)
                if transport is not None:
                    self.connections[generation_id] = transport  # for a stop to close at once
                content_type = response.headers.get("content-type")
                if not (content_type or "").startswith("text/event-stream"):
                    head = b""
                    async for data in response.iter_bytes():  # enough to tell an error body from a page
                        head += data
                        if len(head) >= 4096:
                            break
                    raise not_an_event_stream(content_type, head[:4096], self.upstream)
                reader = reader_of(response) if self.fed else None
                if reader is not None:
                    saw_done = await self.read_fed(gen, reader, read_deadline)
                else:
                    saw_done = await self.read_iterated(gen, response, read_deadline)
        except UPSTREAM_ERRORS as exc:
            raise self._failure(gen, exc) from None
        except UpstreamProtocolError as exc:
            raise JobFailed(str(exc)) from None
        finally:
            self.connections.pop(generation_id, None)
        if gen.stopped:  # the stream ended because a stop closed it
            raise asyncio.CancelledError
        gen.check_ended(saw_done)

    async def read_fed(self, gen: Generation, reader, read_deadline: asyncio.Timeout) -> bool:
        """The event stream decoded inside the socket's callback (``fed.py``); True if it ended with DONE.
        Until the first token the deadline is CHATTER_FIRST_TOKEN_MS from the request; from then on the stream
        may fall silent for CHATTER_UPSTREAM_TIMEOUT_MS, checked once a second."""
        loop = asyncio.get_running_loop()
        with fed(reader, Sink(lambda event: self.on_chunk(gen, event), loop)) as sink:
            while not sink.done.done():
                await asyncio.wait((sink.done,), timeout=READ_DEADLINE_STEP_S)
                if gen.emitted:
                    read_deadline.reschedule(None)  # the first token came: silence is the limit now
                    if loop.time() - sink.last_data_at > self.read_timeout_s:
                        raise TimeoutError
            sink.done.result()  # the stream's own error, or the connection's
            return sink.saw_done

    async def read_iterated(self, gen: Generation, response, read_deadline: asyncio.Timeout) -> bool:
        """The event stream through the client's byte iterator (an HTTP backend that ``fed.py`` does not read)."""
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
                self.on_chunk(gen, event)
        event = decoder.close()
        if event is not None and event is not DONE:
            self.on_chunk(gen, event)
        return event is DONE

    async def whole_once(self, gen: Generation) -> None:
        """Non-streaming mode: one request, one delta, through the same pipeline."""
        try:
            async with asyncio.timeout(self.first_token_s):  # a whole reply sends nothing until it is done
                completion = await self.clients[gen.client_index].chat.completions.create(
                    model=gen.job.model, messages=gen.job.messages, stream=False, extra_body=gen.job.params or None)
        except UPSTREAM_ERRORS as exc:
            raise self._failure(gen, exc) from None
        if not completion.choices:
            raise JobFailed("upstream returned no choices")
        choice = completion.choices[0]
        usage = completion.usage
        details = usage.completion_tokens_details if usage else None
        calls = [{"index": i, "id": call.id, "function": {"name": call.function.name,
                                                          "arguments": call.function.arguments}}
                 for i, call in enumerate(choice.message.tool_calls or ()) if getattr(call, "function", None)]
        self.on_chunk(gen, ChunkEvent(
            choice.message.content or "", choice.finish_reason,
            usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None,
            reasoning_of(choice.message.model_extra or {}),  # fields the openai types do not name
            details.reasoning_tokens if details else None, calls or None))

    def _failure(self, gen: Generation, exc: Exception) -> BaseException:
        """An upstream failure as the exception that says what happens next, in words. A stopped generation's
        is its stop: a connection it closed itself is neither retried nor an error."""
        if gen.stopped:
            return asyncio.CancelledError()
        if isinstance(exc, openai.APIStatusError):
            return status_failure(exc.status_code, _error_message(exc), exc.response.headers.get("retry-after"))
        if isinstance(exc, aiohttp.ClientResponseError):  # aiohttp's parser could not read the answer
            return JobFailed(f"upstream at {self.upstream} sent a response that is not HTTP")
        timed_out = isinstance(exc, TimeoutError)  # our own read deadline; anything else is the connection
        return gen.lost_upstream("no data" if timed_out else connection_failure(exc), timed_out, self.upstream,
                                 self.read_timeout_s, self.first_token_s)

    def on_chunk(self, gen: Generation, event) -> None:
        for thinking, seq, text in gen.take(event):
            self.emit_delta(gen.job.generation_id, seq, text, count_tokens(text, gen.job.model), time.time(),
                            thinking)
        if event.tool_calls:  # rare: a model that calls a tool; in order after the text before it
            for call in gen.take_tool_calls(event.tool_calls):
                self.emit(call)

    # ------------------------------------------------------------ life

    def run(self) -> None:
        period = self.settings.wake_ms / 1000  # CHATTER_WAKE_MS: see shell.Pacer
        # a cancel or a new job ends the pacer's sleep; a stream waiting for its first token keeps it from sleeping
        selector = shell.PacedSelector(period, urgent=shell.Urgent(self.control, self.jobs),
                                       hurry=self.first_token_awaited)
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
            runner.run(self.main())

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        workers = [asyncio.create_task(c) for c in (self.pull_jobs(), self.heartbeat(), self.learn_contexts())]
        loop.add_reader(self.control.FD, self.on_control)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        threading.Thread(target=self.stop_at_once, name="generator-stopper", daemon=True).start()
        self.on_control()  # what came before the reader was added does not signal again
        shell.settle_heap()
        self.log.info("generator_ready", generator_id=self.generator_id, upstream=self.settings.base_url,
                      concurrency=self.concurrency, streaming=self.streaming)
        await self.stop.wait()
        for task in list(self.tasks.values()):
            task.cancel()  # close every upstream response before leaving
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=2)
        loop.remove_reader(self.control.FD)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for client in self.clients:
            await client.close()
        self.flush_deltas()
        self.refusals.close()
        for sock in (self.jobs, self.events, self.control):
            sock.close(0)
        self.ctx.term()
        self.sync_ctx.term()
        self.log.info("generator_stopped")


def shut_down(connection: asyncio.Transport) -> None:
    """The FIN goes now, not when the transport closes its socket in a later turn of the loop. A socket the
    loop closed meanwhile refuses (its descriptor is gone, never another's)."""
    with contextlib.suppress(OSError, AttributeError):
        connection.get_extra_info("socket").shutdown(socket.SHUT_RDWR)


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if body is None:  # a streaming request's error body may not have been parsed
        try:
            body = exc.response.json()
        except Exception:
            body = getattr(exc.response, "text", None)
    return server_words(body, exc.message)


def catch_up_parts(asked: m.ResumeGeneration, seq: int, text: str, reasoning_seq: int, reasoning: str,
                   tool_calls: list | None = None) -> list[m.GenCatchUp]:
    """The answer to ``asked``: the texts beyond its offsets in catch-ups that each fit a frame, the thinking
    first, each going on from the one before; all but the last say there is ``more``."""
    parts = []
    offset, reasoning_offset = asked.offset, asked.reasoning_offset
    for piece in pieces(reasoning) if reasoning else []:
        parts.append(m.GenCatchUp(asked.generation_id, seq, offset, "", reasoning_seq, reasoning_offset, piece, True))
        reasoning_offset += len(piece)
    for piece in pieces(text):
        parts.append(m.GenCatchUp(asked.generation_id, seq, offset, piece, reasoning_seq, reasoning_offset, "", True))
        offset += len(piece)
    parts[-1].more, parts[-1].tool_calls = False, tool_calls or None
    return parts


def main() -> None:
    shell.main("generator", GeneratorShell)


if __name__ == "__main__":
    main()
