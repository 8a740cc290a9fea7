"""Following one reply for an HTTP client: its state to its durable end, by offsets (``clients.view.ReplyView``, the
CLI's rule), a gap, a silence or falling behind caught up from a snapshot; and a streamed answer's bytes, written
straight to the client's connection as the events come.

The hot path. At 500 streams of 20 tokens a second a follower's every token was a task woken, an event queued and
taken, and a write through aiohttp's writer: 31.6 µs of the gateway's CPU per token (docs/PERFORMANCE.md, "The
gateway"). Now the link applies a text delta to the follower's view as it reads it (``Watch.fast``), and once the
socket is drained writes what each follower gained (``Watch.flush``: one chunk a follower a drain, framed here as
aiohttp frames a chunk), while the client keeps up. Anything else (a final, a gap, a client whose connection is
backed up) goes through the follower's task, which writes through aiohttp and waits for the client.
"""
from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from clients.gateway import events
from clients.gateway.link import Watch
from clients.view import APPLIED, GAP, IGNORED, ReplyView
from protocol import messages as m

HEARTBEAT_S = 15.0  # an SSE comment this often keeps an idle connection open through proxies
SILENCE_S = 1.0  # a reply that says nothing this long is asked for again (a lost final, a restarted coordinator)
BACKED_UP_BYTES = 256 * 1024  # a client with this much unsent is slow: it is written to by its task, at its pace


def sse(event: dict) -> bytes:
    """An event as server-sent event bytes (msgspec's JSON: a tenth of ``json.dumps``'s cost, the same value)."""
    return b"event: " + event["type"].encode() + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"


class SseOut:
    """A streamed response's body: written at once while the connection keeps up (``ready``), as one chunk of
    the chunked encoding the response was prepared with; else through aiohttp, which waits for the client."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        # an HTTP/1.0 client's body is not chunked: aiohttp writes it, always
        self.transport = request.transport if response.chunked else None
        self.response = response

    def ready(self) -> bool:
        transport = self.transport
        return (transport is not None and not transport.is_closing()
                and transport.get_write_buffer_size() < BACKED_UP_BYTES)

    def write_now(self, data: bytes) -> None:
        self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    async def write(self, data: bytes) -> None:
        await self.response.write(data)


async def prepared(request: web.Request, headers: dict) -> tuple[web.StreamResponse, SseOut]:
    """A server-sent events response, chunked and sent its head."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"} | headers)
    if request.version >= (1, 1):
        response.enable_chunked_encoding()
    await response.prepare(request)
    return response, SseOut(request, response)


def update(state: events.ReplyState, view: ReplyView) -> None:
    """The state of a reply as its view stands. (The view's lists of fresh text are a renderer's; here offsets
    rule, so they are emptied as they fill.)"""
    view.answer.new.clear()
    view.thinking.new.clear()
    state.reasoning, state.text = view.reasoning, view.text
    state.tool_calls = view.tool_calls
    if view.final is not None:
        state.status = view.final["status"]
        state.stats = view.final.get("stats") or {}
        state.error = view.final.get("error")
        state.finish_reason = state.stats.get("finish_reason")
    elif state.text or state.reasoning:
        state.status = "streaming"


async def follow(reply, state: events.ReplyState, watch: Watch, on_change=None, out: SseOut | None = None,
                 pending=None, flush_s: float = 0.0) -> events.ReplyState:
    """The reply to its durable end. ``reply``: a coroutine function, the reply's snapshot by message id. Each
    change is passed to ``on_change`` (awaited); or, streamed to a client, ``pending(state)`` gives the bytes that
    are new and ``out`` takes them, from this task or straight from the link (text deltas, while ``out`` is
    ready), with a heartbeat comment when the reply is quiet; ``flush_s`` apart at least (CHATTER_HTTP_FLUSH_MS:
    a write per token costs a send, the most of the gateway's CPU per token at 20 tokens a second)."""
    if out is not None:
        async def on_change(current: events.ReplyState) -> None:
            data = pending(current)
            if data:
                await out.write(data)

        def heartbeat():
            return out.write(b": keep-alive\n\n")
    else:
        heartbeat = None
    snap = await reply(state.message_id)
    view = ReplyView(snap.generation_id)
    view.apply_snapshot(snap)
    loop = asyncio.get_running_loop()
    later: list = [None]
    quiet_since = beat_at = loop.time()

    if out is not None:
        def fast(event) -> bool:
            if type(event) is not m.StreamDelta or watch.events or watch.behind:
                return False  # in order, through the task
            return view.apply(event) in (APPLIED, IGNORED)  # written by ``flush``, else by the task

        written_at = [0.0]

        def flush() -> None:
            if flush_s:
                wait = written_at[0] + flush_s - loop.time()
                if wait > 0:
                    if later[0] is None:
                        later[0] = loop.call_later(wait, flush_later)
                    return
            write()

        def flush_later() -> None:
            later[0] = None
            write()

        def write() -> None:
            if out.ready():
                update(state, view)
                data = pending(state)
                if data:
                    out.write_now(data)
                    written_at[0] = loop.time()
            else:
                watch.tick()  # its task writes it, at the client's pace

        watch.fast, watch.flush = fast, flush
    try:
        while True:
            update(state, view)
            if on_change is not None:
                await on_change(state)
            if state.ended:
                return state
            await watch.wait()
            taken = watch.take()
            now = loop.time()
            if heartbeat is not None and now - beat_at >= HEARTBEAT_S:
                beat_at = now
                await heartbeat()
            if taken and not watch.behind and all(view.apply(event) != GAP for event in taken):
                quiet_since = now
                continue
            if not taken and now - max(quiet_since, watch.moved_at) < SILENCE_S and not watch.behind:
                continue
            watch.drain()
            quiet_since = now
            snap = await reply(state.message_id)
            if snap.generation_id != view.generation_id:  # continued: the same message, a new generation
                view = ReplyView(snap.generation_id)
            view.apply_snapshot(snap)
    finally:
        watch.fast = watch.flush = None
        if out is not None and later[0] is not None:
            later[0].cancel()
