"""The gateway's line to the coordinator, on asyncio: one rpc socket whose answers are matched to the requests that
wait for them, and one stream socket whose events go to the replies being followed. It keeps nothing that matters:
a reply is followed from a snapshot the coordinator gives, like the CLI's (``clients.view.ReplyView``)."""
from __future__ import annotations

import asyncio
import collections
import itertools

import zmq
import zmq.asyncio

import transport
from clients.api import ChatterError, encode_request
from protocol import codec, messages as m

RPC_TIMEOUT_S = 5.0
APPLIED_TIMEOUT_S = 30.0  # a request answered once the persister applied it
DRAIN_BATCH = 1024  # events read at once before the loop's other work has a turn
TICK_S = 0.5  # how often a waiting follower wakes with nothing new
WATCH_QUEUE = 10_000  # events a follower may fall behind by; past that it catches up from a snapshot


class CoordinatorAway(ChatterError):
    """The coordinator did not answer in time: the client gets 503, and may try again."""


class Watch:
    """One follower's events of a session: a bounded queue; a follower that falls behind by ``WATCH_QUEUE`` events
    is marked ``behind`` and catches up from a snapshot, so a slow HTTP client never slows the others.

    The follower takes what has come all at once (``take``) and waits only when there is nothing (``wait``): one
    wake, one write to its client, for all the events of a busy moment. (An ``asyncio.Queue`` read through
    ``wait_for`` cost a task and a timer per event; with one write per event it was 34.6 µs a token at 500
    streams against 31.6 this way: docs/PERFORMANCE.md, "The gateway".)"""

    def __init__(self) -> None:
        self.events: collections.deque = collections.deque()
        self.behind = False
        self._waiter: asyncio.Future | None = None
        self.moved_at = 0.0  # the loop's time of its last event
        # a follower that streams to a client applies a text delta as it is read (``fast(event)``: True when it
        # took it) and writes what it gained once the socket is drained (``flush()``): ``follow.follow``
        self.fast = None
        self.flush = None

    def put(self, event) -> None:
        if len(self.events) >= WATCH_QUEUE:
            self.behind = True
            return
        self.events.append(event)
        self.tick()

    async def wait(self) -> None:
        """Until an event is queued, or the link's next tick (``TICK_S``): a timer of its own for each wait cost
        a heap entry made and cancelled per event."""
        if self.events:
            return
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def tick(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def take(self) -> list:
        """Every event queued, oldest first."""
        out = list(self.events)
        self.events.clear()
        return out

    def drain(self) -> None:
        self.events.clear()
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
        self.dirty: set[Watch] = set()  # followers that took events of this drain, to write once it is done

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._answers()), asyncio.create_task(self._events()),
                      asyncio.create_task(self._ticks())]

    async def _ticks(self) -> None:
        """Every follower wakes at least once a ``TICK_S``, to see whether its reply has been silent too long."""
        while True:
            await asyncio.sleep(TICK_S)
            for watches in list(self.watchers.values()):
                for watch in watches:
                    watch.tick()

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
        """The stream socket's events to their followers: one await for the first of a busy moment, then the rest
        that are there at once, read without waiting (through a plain socket on the same zmq socket)."""
        plain = zmq.Socket.shadow(self.stream.underlying)
        loop = asyncio.get_running_loop()
        while True:
            frame = await self.stream.recv()
            now = loop.time()
            self._deliver(frame, now)
            for _ in range(DRAIN_BATCH):
                try:
                    self._deliver(plain.recv(zmq.NOBLOCK), now)
                except zmq.Again:
                    break
            dirty, self.dirty = self.dirty, set()
            for watch in dirty:
                if watch.flush is not None:
                    watch.flush()

    def _deliver(self, frame: bytes, now: float) -> None:
        try:
            event = codec.decode(transport.payload_of(frame), m.STREAM_EVENTS)
        except codec.FrameError:
            self.bad_frames += 1
            return
        watches = self.watchers.get(event.session_id)
        if watches:
            for watch in tuple(watches):
                watch.moved_at = now
                if watch.fast is not None and watch.fast(event):
                    self.dirty.add(watch)
                else:
                    watch.put(event)
