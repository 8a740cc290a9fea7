"""OpenAI's Responses API over Chatter: create (streamed, background or waited for), retrieve, resume from any
``starting_after``, and cancel. Each response is one reply (its assistant message); its events and their numbers
are ``events.py``'s, from what the coordinator has of the reply, so any gateway resumes any stream."""
from __future__ import annotations

import asyncio
import json
import uuid
from typing import NamedTuple

from aiohttp import web

from clients.api import ChatterError
from clients.view import GAP, ReplyView
from protocol import messages as m
from protocol.conversation import MessageRecord, SessionRecord
from clients.gateway import events
from clients.gateway.errors import ApiError, not_found
from clients.gateway.reading import json_body, page, query_int
from clients.gateway.link import APPLIED_TIMEOUT_S, Link, Watch

HEARTBEAT_S = 15.0  # an SSE comment this often keeps an idle connection open through proxies
SILENCE_S = 1.0  # a reply that says nothing this long is asked for again (a lost final, a restarted coordinator)
TEXT_CHARS = 1_000_000  # an input's text, at most (the coordinator's own limit is lower: CHATTER_MAX_TEXT_CHARS)


class Responses:
    def __init__(self, link: Link, log) -> None:
        self.link, self.log = link, log
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
        page_ = await self.ask(m.Preview(self.link.next_id(), message_id))
        messages = list(page_.messages)
        while page_.next is not None:
            preview_offset, index, offset = page_.next
            page_ = await self.ask(m.Preview(self.link.next_id(), message_id, preview_offset, index, offset))
            rest = list(page_.messages)
            if rest and len(messages) == page_.index + 1:
                cut = messages.pop()
                rest[0] = {**rest[0], "content": str(cut["content"])[:page_.offset] + rest[0]["content"]}
            messages += rest
        return messages

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
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        sent = [after]

        async def send(batch: list[dict]) -> None:
            for event in batch:
                await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
                sent[0] = event["sequence_number"]

        try:
            await send(events.events_after(state, after))
            await self.follow(state, watch, lambda s: send(events.events_after(s, sent[0])),
                               heartbeat=lambda: response.write(b": keep-alive\n\n"))
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

    async def follow(self, state: events.ReplyState, watch: Watch, on_change, heartbeat=None) -> events.ReplyState:
        """The reply to its durable end, by offsets (``clients.view.ReplyView``, the CLI's rule): each change
        passed to ``on_change``; a gap, a silence or falling behind catches up from a snapshot."""
        snap = await self.reply(state.message_id)
        view = ReplyView(snap.generation_id)
        view.apply_snapshot(snap)
        loop = asyncio.get_running_loop()
        quiet_since = beat_at = loop.time()
        while True:
            self._update(state, view, snap)
            if on_change is not None:
                await on_change(state)
            if state.ended:
                return state
            try:
                event = await asyncio.wait_for(watch.queue.get(), SILENCE_S)
            except asyncio.TimeoutError:
                event = None
            now = loop.time()
            if heartbeat is not None and now - beat_at >= HEARTBEAT_S:
                beat_at = now
                await heartbeat()
            if event is not None and not watch.behind and view.apply(event) != GAP:
                quiet_since = now
                continue
            if event is None and now - quiet_since < SILENCE_S and not watch.behind:
                continue
            watch.drain()
            quiet_since = now
            snap = await self.reply(state.message_id)
            if snap.generation_id != view.generation_id:  # continued: the same message, a new generation
                view = ReplyView(snap.generation_id)
            view.apply_snapshot(snap)

    def _update(self, state: events.ReplyState, view: ReplyView, snap) -> None:
        state.reasoning, state.text = view.reasoning, view.text
        state.tool_calls = view.tool_calls
        if view.final is not None:
            state.status = view.final["status"]
            state.stats = view.final.get("stats") or {}
            state.error = view.final.get("error")
            state.finish_reason = state.stats.get("finish_reason")
        elif state.text or state.reasoning:
            state.status = "streaming"

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


def input_items_of(message_id: str, index: int, msg: dict) -> list[dict]:
    """A prompt message as the Responses API's input items."""
    return items_of(f"in_{message_id}_{index}", msg["role"], str(msg["content"]), msg.get("tool_calls") or (),
                    msg.get("tool_call_id"), "completed")


def items_of(item_id: str, role: str, content: str, calls, call_id: str | None, status: str) -> list[dict]:
    """A message as the Responses API's items: a message (a user's text as input, a reply's as output), a reply's
    calls as ``function_call`` items after it, a tool's result as a ``function_call_output``."""
    if role == "tool":
        return [{"id": item_id, "type": "function_call_output", "call_id": call_id or "", "output": content,
                 "status": status}]
    items = []
    if content or not calls:
        part = ({"type": "output_text", "text": content, "annotations": [], "logprobs": []} if role == "assistant"
                else {"type": "input_text", "text": content})
        items.append({"id": item_id, "type": "message", "role": role, "status": status, "content": [part]})
    items += [{"id": f"{item_id}_{number}", "type": "function_call", "call_id": call.get("id", ""),
               "name": call["function"]["name"], "arguments": call["function"]["arguments"], "status": status}
              for number, call in enumerate(calls)]
    return items


def seed_records(session_id: str, turns: list[Turn]) -> list[MessageRecord]:
    """Turns as a session's messages, each after the one before; a ``function_call`` item after the reply that
    made it is one of that reply's calls."""
    records: list[MessageRecord] = []
    for turn in turns:
        if turn.calls and records and records[-1].role == "assistant" and not turn.text:
            records[-1].tool_calls += turn.calls
            continue
        records.append(MessageRecord(message_id=uuid.uuid4().hex, session_id=session_id, role=turn.role,
                                     content=turn.text, status="completed", created_at=0.0,
                                     parent_id=records[-1].message_id if records else "",
                                     tool_calls=list(turn.calls), tool_call_id=turn.call_id))
    return records


class Turn(NamedTuple):
    """A message of a request's input: a user's, a reply's (with the calls it made), or a tool's result."""

    role: str  # user, assistant, system or tool
    text: str
    calls: tuple = ()  # an assistant's tool calls, Chat Completions' shape
    call_id: str | None = None  # a tool's result: the call it answers


class CreateAsk:
    """A ``POST /v1/responses`` body, checked: its last user message, the turns before it, and the options."""

    def __init__(self) -> None:
        self.text = ""
        self.earlier: list[Turn] = []
        self.tool_results: list[m.ToolOutput] = []  # the results this reply follows (the input's last items)
        self.tools: list[dict] | None = None  # as sent upstream: Chat Completions' shape
        self.tool_choice = None
        self.tools_given: list[dict] = []  # as the request gave them, for the response object
        self.tool_choice_given: str | dict = "auto"
        self.instructions: str | None = None
        self.model: str | None = None
        self.stream = self.background = False
        self.store = True
        self.previous_response_id: str | None = None
        self.conversation: str | None = None
        self.params: dict = {}
        self.user = ""  # who asks (signed in by the gateway)

    def send(self, req_id: int, session_id: str, key: str, after: str | None) -> m.Send:
        return m.Send(req_id, session_id, self.text, key, self.model, after, tools=self.tools,
                      tool_choice=self.tool_choice, tool_results=self.tool_results or None)

    def take_last(self, turns: list[Turn]) -> None:
        """What this reply answers, from the end of the input: a user message, the tools' results before it, or
        both; the rest are earlier turns (a system message among them is the instructions)."""
        turns = list(turns)
        if turns and turns[-1].role == "user":
            self.text = turns.pop().text
        while turns and turns[-1].role == "tool":
            turn = turns.pop()
            self.tool_results.insert(0, m.ToolOutput(turn.call_id, turn.text))
        if not self.text.strip() and not self.tool_results:
            raise ApiError(400, "the input must end with a user message, or with tools' results "
                           "(function_call_output)", param="input")
        system = [turn.text for turn in turns if turn.role == "system"]
        if system and self.instructions is None:
            self.instructions = "\n\n".join(system)
        self.earlier = [turn for turn in turns if turn.role != "system"]

    def follows_stored(self) -> None:
        """With ``previous_response_id`` or ``conversation`` the session holds the earlier turns: only the calls
        the input echoes back may come before what this reply answers (they are in the session already)."""
        if any(turn.role != "assistant" or turn.text for turn in self.earlier):
            raise ApiError(400, "earlier turns go in a new conversation; with conversation or previous_response_id, "
                           "give only the new user message and tools' results", param="input")
        self.earlier = []


KNOWN = {"input", "instructions", "model", "stream", "background", "store", "previous_response_id", "conversation",
         "temperature", "max_output_tokens", "metadata", "user", "parallel_tool_calls", "tool_choice", "tools",
         "top_p", "truncation", "text", "reasoning", "stream_options", "include", "service_tier",
         "safety_identifier", "prompt_cache_key"}


def parse_create(body: dict) -> CreateAsk:
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise ApiError(400, f"unknown parameter: {unknown[0]!r}", param=unknown[0], code="unknown_parameter")
    ask = CreateAsk()
    ask.instructions = _string(body, "instructions", 1_000_000)
    ask.take_last(input_turns(body.get("input")))
    ask.model = _string(body, "model", 128)
    for name in ("stream", "background", "store"):
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            raise ApiError(400, f"{name} must be true or false", param=name)
    ask.stream, ask.background = bool(body.get("stream")), bool(body.get("background"))
    ask.store = body.get("store") is not False
    ask.previous_response_id = _string(body, "previous_response_id", 80)
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    if conversation is not None and (not isinstance(conversation, str) or not 1 <= len(conversation) <= 64):
        raise ApiError(400, "conversation must be a conversation id (or {\"id\": ...})", param="conversation")
    ask.conversation = conversation
    if ask.conversation and ask.previous_response_id:
        raise ApiError(400, "give conversation or previous_response_id, not both", param="conversation")
    if ask.conversation or ask.previous_response_id:
        ask.follows_stored()
    read_tools(body, ask)
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ApiError(400, "temperature must be a number from 0 to 2", param="temperature")
        ask.params["temperature"] = temperature
    tokens = body.get("max_output_tokens")
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens < 2**31:
            raise ApiError(400, "max_output_tokens must be a positive integer", param="max_output_tokens")
        ask.params["max_tokens"] = tokens
    return ask


def input_turns(value) -> list[Turn]:
    """The input as turns: a string is one user message; a list holds message items (their content a string or a
    list of text parts), the function calls a reply made (``function_call``, as a reply's output has them) and
    the tools' results (``function_call_output``). A reply's reasoning items are passed over: an earlier
    reply's thinking is not sent back (``protocol.conversation.prompt_content``)."""
    if isinstance(value, str):
        if not value.strip():
            raise ApiError(400, "the input is empty", param="input")
        return [Turn("user", text_ok(value, "input"))]
    if not isinstance(value, list) or not value:
        raise ApiError(400, "input must be a string or a list of messages", param="input")
    turns = []
    for index, item in enumerate(value):
        where = f"input[{index}]"
        kind = item.get("type", "message") if isinstance(item, dict) else type(item).__name__
        if kind == "function_call":
            turns.append(Turn("assistant", "", (_function_call(item, where),)))
        elif kind == "function_call_output":
            turns.append(Turn("tool", _tool_output(item, where), call_id=_call_id(item, where)))
        elif kind == "reasoning":
            continue
        elif kind != "message":
            raise ApiError(400, f"{where}: Chatter takes message, function_call and function_call_output items, "
                           f"not {kind!r}", param=where)
        else:
            role = {"developer": "system"}.get(item.get("role"), item.get("role"))
            if role not in ("user", "assistant", "system"):
                raise ApiError(400, f"{where}.role must be user, assistant, system or developer",
                               param=f"{where}.role")
            turns.append(Turn(role, text_ok(_content_text(item.get("content"), where), f"{where}.content")))
    return turns


def _call_id(item: dict, where: str) -> str:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not 1 <= len(call_id) <= 128:
        raise ApiError(400, f"{where}.call_id must be the call's id (1 to 128 characters)", param=f"{where}.call_id")
    return call_id


def _function_call(item: dict, where: str) -> dict:
    name, arguments = item.get("name"), item.get("arguments")
    if not isinstance(name, str) or not isinstance(arguments, str):
        raise ApiError(400, f"{where}: a function_call has a name and its arguments as a string", param=where)
    return {"id": _call_id(item, where), "type": "function",
            "function": {"name": name[:64], "arguments": text_ok(arguments, f"{where}.arguments")}}


def _tool_output(item: dict, where: str) -> str:
    output = item.get("output")
    if isinstance(output, list):
        output = _content_text(output, where)
    if not isinstance(output, str):
        raise ApiError(400, f"{where}.output must be a string or text parts", param=f"{where}.output")
    return text_ok(output, f"{where}.output")


def read_tools(body: dict, ask: CreateAsk) -> None:
    """The request's function tools and tool_choice, in the Responses API's shape (a tool's name, description and
    parameters beside its type), as Chat Completions takes them upstream; anything but a function is refused."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is not None:
        if not isinstance(tools, list) or len(tools) > m.TOOLS_AT_MOST:
            raise ApiError(400, f"tools must be a list of at most {m.TOOLS_AT_MOST} tools", param="tools")
        ask.tools = [_chat_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools)] or None
        ask.tools_given = tools
    if choice is not None:
        ask.tool_choice_given = choice
        if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
            choice = {"type": "function", "function": {"name": choice.get("name")}}
        ask.tool_choice = choice


def _chat_tool(tool, where: str) -> dict:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
        raise ApiError(400, f"{where}: Chatter passes function tools to the model; a {kind!r} tool cannot be "
                       "passed", param=where)
    if isinstance(tool.get("function"), dict):  # Chat Completions' shape already
        return {"type": "function", "function": tool["function"]}
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if key in tool}
    return {"type": "function", "function": function}


def _content_text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(part.get("text"), str):
            raise ApiError(400, f"{where}.content[{index}]: Chatter sends text to the model; a {kind or 'part'!r} "
                           "cannot be sent", param=f"{where}.content[{index}]")
        texts.append(part["text"])
    return "".join(texts)


def text_ok(text: str, param: str) -> str:
    if len(text) > TEXT_CHARS:
        raise ApiError(400, f"{param} is {len(text):,} characters; the most is {TEXT_CHARS:,}", param=param)
    if "\x00" in text:
        raise ApiError(400, f"{param} contains a NUL character, which cannot be stored", param=param)
    return text


def _string(body: dict, name: str, most: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > most:
        raise ApiError(400, f"{name} must be a string of at most {most:,} characters", param=name)
    return text_ok(value, name)
