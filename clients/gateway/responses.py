"""OpenAI's Responses API over Chatter: create (streamed, background or waited for), retrieve, resume from any
``starting_after``, and cancel. Each response is one reply (its assistant message); its events and their numbers
are ``events.py``'s, from what the coordinator has of the reply, so any gateway resumes any stream."""
from __future__ import annotations

import asyncio
import uuid

from aiohttp import web

from clients.api import ChatterError, join_preview
from protocol import messages as m
from protocol.conversation import SessionRecord
from clients.gateway import events
from clients.gateway.errors import ApiError, not_found
from clients.gateway.follow import follow, prepared, sse
from clients.gateway.inputs import CreateAsk, Turn, input_items_of, parse_create, seed_records
from clients.gateway.reading import json_body, page, query_int
from clients.gateway.link import APPLIED_TIMEOUT_S, Link, Watch



class Responses:
    def __init__(self, link: Link, log, flush_s: float = 0.0) -> None:
        self.link, self.log = link, log
        self.flush_s = flush_s  # CHATTER_HTTP_FLUSH_MS: a streamed reply's writes at least this far apart
        self.background: set[asyncio.Task] = set()

    # ------------------------------------------------------------ create

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        ask = parse_create(body)
        ask.user = request["user"]
        session_id, after = await self.session_for(ask)
        key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
        started = await self.ask(ask.send(self.link.next_id(), session_id, key[:128], after))
        watch, state = self.link.watch(session_id), None
        try:
            snap = await self.reply(started.message_id)
            state = self.state_of(snap, ask)
            if ask.stream:
                return await self._stream(request, state, watch, -1, cancel_on_drop=not ask.background)
            if ask.background:
                if not ask.store:  # forgotten once it ends, with nobody waiting for it here
                    self.in_background(self._forget_at_end(state, ask))
                return web.json_response(events.response_object(state))
            state = await self.follow(state, watch, None)
            return web.json_response(events.response_object(state))
        finally:
            self.link.unwatch(session_id, watch)
            if not ask.store and not ask.background and state is not None and state.ended:
                self.in_background(self._forget(state, ask))

    def in_background(self, work) -> None:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _forget_at_end(self, state: events.ReplyState, ask: CreateAsk) -> None:
        watch = self.link.watch(state.session_id)
        try:
            await self.follow(state, watch, None)
        finally:
            self.link.unwatch(state.session_id, watch)
        await self._forget(state, ask)

    async def _forget(self, state: events.ReplyState, ask: CreateAsk) -> None:
        """``store: false``: the reply is deleted once it ends (its text gone, as any deletion's), and the session
        too when it was made for this request alone."""
        try:
            if ask.conversation is None and ask.previous_response_id is None:
                await self.ask(m.DeleteSessions(self.link.next_id(), [state.session_id]), APPLIED_TIMEOUT_S)
            else:
                await self.ask(m.DeleteBranch(self.link.next_id(), state.session_id, state.message_id),
                                    APPLIED_TIMEOUT_S)
        except ApiError as exc:
            self.log.warning("unstored_reply_not_deleted", response_id=state.response_id, error=exc.message)

    async def session_for(self, ask: CreateAsk) -> tuple[str, str | None]:
        """The session a new response goes in, and the message it follows when that is not the active branch's
        last (a ``previous_response_id`` that is not the newest reply: a branch from there)."""
        after = None
        if ask.previous_response_id is not None:
            snap = await self.owned_reply(ask.previous_response_id, "previous_response_id", ask.user)
            session_id, after = snap.session_id, snap.message_id
        elif ask.conversation is not None:
            session_id = (await self.owned_session(ask.conversation, ask.user, "conversation")).session_id
        else:
            session_id = (await self.ask(m.NewSession(self.link.next_id(), ask.instructions or None, None, None,
                                                      save=not ask.earlier, owner=ask.user))).session_id
            if ask.earlier:
                await self._seed(session_id, ask)
            if ask.params:
                await self.ask(m.ConfigureSession(self.link.next_id(), session_id, None, None, None, ask.params))
            return session_id, None
        if ask.instructions is not None or ask.params:
            await self.ask(m.ConfigureSession(self.link.next_id(), session_id, ask.instructions, None, None,
                                                   ask.params or None))
        return session_id, after

    async def _seed(self, session_id: str, ask: CreateAsk) -> None:
        """Earlier turns given in the input, before its last message: the new session begins with them."""
        await self.seed(session_id, ask.instructions, ask.earlier)

    async def seed(self, session_id: str, system: str | None, turns: list[Turn]) -> None:
        """A new session's first messages, one branch in order, imported whole (answered once applied)."""
        records = seed_records(session_id, turns)
        header = SessionRecord(session_id=session_id, system=system or None,
                               active_leaf=records[-1].message_id if records else None)
        await self.ask(m.ImportSession(self.link.next_id(), header, records), APPLIED_TIMEOUT_S)

    # ------------------------------------------------------------ retrieve, resume, cancel

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        snap = await self.owned_reply(request.match_info["response_id"], "response_id", request["user"])
        state = self.state_of(snap, None)
        if request.query.get("stream", "").lower() not in ("true", "1"):
            return web.json_response(events.response_object(state))
        after = query_int(request, "starting_after", -1)
        last = events.last_number(state)
        if state.ended and after > last:
            raise ApiError(400, f"starting_after {after} is past the response's last event ({last})",
                           param="starting_after")
        watch = self.link.watch(snap.session_id)
        try:
            snap = await self.reply(snap.message_id)  # again, now that its events are watched: nothing between
            return await self._stream(request, self.state_of(snap, None), watch, after, cancel_on_drop=False)
        finally:
            self.link.unwatch(snap.session_id, watch)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """The reply and what follows it on any branch, gone for real; 404 from then on."""
        snap = await self.owned_reply(request.match_info["response_id"], "response_id", request["user"])
        await self.ask(m.DeleteBranch(self.link.next_id(), snap.session_id, snap.message_id), APPLIED_TIMEOUT_S)
        return web.json_response({"id": events.response_id(snap.message_id), "object": "response.deleted",
                                  "deleted": True})

    async def input_items(self, request: web.Request) -> web.StreamResponse:
        """What the reply was generated from: its exact prompt, as ``chatter preview`` gives it, as input items."""
        snap = await self.owned_reply(request.match_info["response_id"], "response_id", request["user"])
        messages = await self._prompt(snap.message_id)
        items = [item for index, msg in enumerate(messages) for item in input_items_of(snap.message_id, index, msg)]
        return web.json_response(page(request, items))

    async def _prompt(self, message_id: str) -> list[dict]:
        """A reply's exact prompt messages, page by page (a message cut at a page's end goes on in the next)."""
        return (await self.preview(message_id)).messages

    async def preview(self, message_id: str):
        """A reply's exact prompt, whole (``chatter preview``'s): its pages asked for in turn."""
        whole = await self.ask(m.Preview(self.link.next_id(), message_id))
        while whole.next is not None:
            whole = join_preview(whole, await self.ask(m.Preview(self.link.next_id(), message_id, *whole.next)))
        return whole

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        snap = await self.owned_reply(request.match_info["response_id"], "response_id", request["user"])
        state = self.state_of(snap, None)
        if not state.ended:
            watch = self.link.watch(snap.session_id)
            try:
                try:
                    await self.ask(m.Cancel(self.link.next_id(), snap.session_id, snap.generation_id))
                except ChatterError:
                    pass  # it ended first
                state = await self.follow(self.state_of(await self.reply(snap.message_id), None), watch, None)
            finally:
                self.link.unwatch(snap.session_id, watch)
        return web.json_response(events.response_object(state))

    # ------------------------------------------------------------ following a reply

    async def _stream(self, request: web.Request, state: events.ReplyState, watch: Watch, after: int,
                      cancel_on_drop: bool) -> web.StreamResponse:
        """The reply's events after ``after`` as server-sent events, to its end. A client that goes away stops a
        plain stream (as OpenAI-compatible front-ends say Stop) and leaves a background one running."""
        response, out = await prepared(request, {})
        sent = [after]

        def pending(current: events.ReplyState) -> bytes:
            """The events after the last one sent, as one write; from then on they count as sent."""
            batch = events.events_after(current, sent[0])
            if not batch:
                return b""
            sent[0] = batch[-1]["sequence_number"]
            return b"".join(sse(event) for event in batch)

        try:
            await self.follow(state, watch, out=out, pending=pending)
        except (ConnectionResetError, asyncio.CancelledError):
            if cancel_on_drop and not state.ended:
                self.log.info("stream_dropped_cancelled", response_id=state.response_id)
                self.in_background(self.cancel_quietly(state))
            raise
        await response.write_eof()
        return response

    async def cancel_quietly(self, state: events.ReplyState) -> None:
        try:
            await self.ask(m.Cancel(self.link.next_id(), state.session_id, None))
        except (ApiError, ChatterError):
            pass

    def follow(self, state: events.ReplyState, watch: Watch, on_change=None, out=None, pending=None):
        """The reply to its durable end (``follow.follow``)."""
        return follow(self.reply, state, watch, on_change, out, pending, self.flush_s)

    # ------------------------------------------------------------ the coordinator

    async def ask(self, msg: m.Message, timeout_s: float | None = None):
        """One request to the coordinator; its refusal in OpenAI's shape (``ApiError``)."""
        try:
            return await (self.link.request(msg) if timeout_s is None else self.link.request(msg, timeout_s))
        except ChatterError as exc:
            raise ApiError.from_refusal(exc) from None

    async def reply(self, message_id: str):
        """A reply's snapshot, whole: its pages asked for in turn."""
        page = await self.ask(m.ReplyOf(self.link.next_id(), message_id))
        text, reasoning = page.text, page.reasoning
        while page.more:
            page = await self.ask(m.ReplyOf(self.link.next_id(), message_id, len(text), len(reasoning)))
            text, reasoning = text[:page.offset] + page.text, reasoning[:page.reasoning_offset] + page.reasoning
        page.text, page.reasoning, page.more = text, reasoning, False
        return page

    async def owned_reply(self, given: str, param: str, user: str):
        """The snapshot of a response of this user's; any other (unknown, or another user's) is 404 alike, so that
        whether it exists is not told."""
        message_id = events.message_of(given)
        if message_id is None:
            raise not_found(f"no response {given[:80]!r}", param)
        return await self._owned(self.reply(message_id), user, f"no response {given[:80]!r}", param)

    async def owned_session(self, session_id: str, user: str, param: str | None = None):
        """The first page of a session of this user's (its history); any other is 404 alike."""
        words = f"no conversation {session_id[:80]!r}"
        if not 1 <= len(session_id) <= 64:
            raise not_found(words, param)
        return await self._owned(self.ask(m.History(self.link.next_id(), session_id)), user, words, param)

    async def _owned(self, asked, user: str, words: str, param: str | None):
        """What ``asked`` answers, when it is this user's: a refusal and another user's are both 404, in words."""
        try:
            found = await asked
        except ApiError as exc:
            if exc.status in (400, 404):
                raise not_found(words, param) from None
            raise
        if found.owner != user:
            raise not_found(words, param)
        return found

    def state_of(self, snap, ask: CreateAsk | None) -> events.ReplyState:
        state = events.ReplyState(message_id=snap.message_id, session_id=snap.session_id,
                                  model=snap.model or (ask.model if ask else None) or "", created_at=snap.created_at,
                                  reasoning=snap.reasoning, text=snap.text, stats=snap.stats or {},
                                  error=snap.error, finish_reason=(snap.stats or {}).get("finish_reason"))
        state.status = snap.status if snap.final or snap.status in ("queued", "streaming") else "streaming"
        if ask is not None:
            state.background, state.store = ask.background, ask.store
            state.previous_response_id, state.instructions = ask.previous_response_id, ask.instructions
            state.temperature, state.max_output_tokens = ask.params.get("temperature"), ask.params.get("max_tokens")
            state.tools, state.tool_choice = ask.tools_given, ask.tool_choice_given
        state.tool_calls = [dict(call, function=dict(call["function"])) for call in snap.tool_calls]
        return state


# ---------------------------------------------------------------- reading a request


