"""The gateway's line to the coordinator, on asyncio: one rpc socket whose answers are matched to the requests that
wait for them, and one stream socket whose events go to the replies being followed. It keeps nothing that matters:
a reply is followed from a snapshot the coordinator gives, like the CLI's (``clients.view.ReplyView``)."""
from __future__ import annotations

import asyncio
import itertools

import zmq
import zmq.asyncio

import transport
from clients.api import ChatterError, encode_request
from protocol import codec, messages as m

RPC_TIMEOUT_S = 5.0
APPLIED_TIMEOUT_S = 30.0  # a request answered once the persister applied it
WATCH_QUEUE = 10_000  # events a follower may fall behind by; past that it catches up from a snapshot


class CoordinatorAway(ChatterError):
    """The coordinator did not answer in time: the client gets 503, and may try again."""


class Watch:
    """One follower's events of a session: a bounded queue; a follower that falls behind by ``WATCH_QUEUE`` events
    is marked ``behind`` and catches up from a snapshot, so a slow HTTP client never slows the others."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(WATCH_QUEUE)
        self.behind = False

    def put(self, event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.behind = True

    def drain(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.behind = False


class Link:
    def __init__(self, run_dir: str | None = None) -> None:
        self.ctx = zmq.asyncio.Context()
        self.run_dir = run_dir
        self.rpc = transport.open_socket(self.ctx, transport.RPC, bind=False, run_dir_path=run_dir)
        self.stream = transport.open_socket(self.ctx, transport.STREAM, bind=False, run_dir_path=run_dir)
        self.req_ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future] = {}
        self.watchers: dict[str, set[Watch]] = {}  # session id -> its followers
        self.bad_frames = 0
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._answers()), asyncio.create_task(self._events())]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.rpc.close(0)
        self.stream.close(0)
        self.ctx.term()

    # ------------------------------------------------------------ rpc

    def next_id(self) -> int:
        return next(self.req_ids)

    async def request(self, msg: m.Message, timeout_s: float = RPC_TIMEOUT_S):
        """The answer to one request, or a ChatterError: refused (its words), or away (``CoordinatorAway``)."""
        future = asyncio.get_running_loop().create_future()
        self.waiting[msg.req_id] = future
        try:
            await self.rpc.send(encode_request(msg))
            reply = await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            raise CoordinatorAway(f"the coordinator did not answer within {timeout_s:g} s") from None
        finally:
            self.waiting.pop(msg.req_id, None)
        if not reply.ok:
            raise ChatterError(reply.error or "request refused")
        return reply.result

    async def _answers(self) -> None:
        while True:
            frame = await self.rpc.recv()
            try:
                reply = codec.decode(frame, (m.Reply,))
            except codec.FrameError:
                self.bad_frames += 1
                continue
            future = self.waiting.get(reply.req_id)
            if future is not None and not future.done():
                future.set_result(reply)

    # ------------------------------------------------------------ stream

    def watch(self, session_id: str) -> Watch:
        """The session's events from now on; ``unwatch`` it when done."""
        watch = Watch()
        if session_id not in self.watchers:
            self.watchers[session_id] = set()
            self.stream.setsockopt(zmq.SUBSCRIBE, transport.topic_prefix(session_id))
        self.watchers[session_id].add(watch)
        return watch

    def unwatch(self, session_id: str, watch: Watch) -> None:
        watches = self.watchers.get(session_id)
        if watches is None:
            return
        watches.discard(watch)
        if not watches:
            del self.watchers[session_id]
            self.stream.setsockopt(zmq.UNSUBSCRIBE, transport.topic_prefix(session_id))

    async def _events(self) -> None:
        while True:
            frame = await self.stream.recv()
            try:
                event = codec.decode(transport.payload_of(frame), m.STREAM_EVENTS)
            except codec.FrameError:
                self.bad_frames += 1
                continue
            for watch in list(self.watchers.get(event.session_id, ())):
                watch.put(event)
