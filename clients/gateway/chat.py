"""OpenAI's Chat Completions over Chatter, for front-ends that speak only that (Open WebUI, LibreChat): each call is
a reply in a Chatter session, persisted and viewable with ``chatter watch``. A call names its session with the
``X-Chatter-Session`` header (and gets it back on every answer), so calls continue one conversation; without one,
a new session begins with the call's earlier messages."""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid

import aiohttp
import msgspec
from aiohttp import web

from clients.gateway import events
from clients.gateway.errors import ApiError
from clients.gateway.reading import json_body
from clients.gateway.follow import prepared
from clients.gateway.inputs import CreateAsk, Turn, text_ok
from clients.gateway.responses import Responses
from protocol import messages as m
from protocol.conversation import turn_chain

SESSION_HEADER = "X-Chatter-Session"
KNOWN = {"model", "messages", "stream", "stream_options", "temperature", "max_tokens", "max_completion_tokens",
         "n", "user", "top_p", "presence_penalty", "frequency_penalty", "seed", "stop", "logit_bias", "metadata",
         "store", "response_format", "parallel_tool_calls", "tools", "tool_choice"}


class ChatCompletions:
    def __init__(self, responses: Responses) -> None:
        self.responses = responses

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        ask = parse_chat(body, request.headers.get(SESSION_HEADER))
        ask.user = request["user"]
        after = await self.find_session(ask) if ask.conversation is None else None
        session_id, _ = await self.responses.session_for(ask)
        key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
        started = await self.responses.ask(ask.send(self.responses.link.next_id(), session_id, key[:128], after))
        link = self.responses.link
        watch = link.watch(session_id)
        try:
            state = self.responses.state_of(await self.responses.reply(started.message_id), ask)
            if ask.stream:
                return await self._stream(request, state, watch, bool((body.get("stream_options") or {})
                                                                       .get("include_usage")))
            state = await self.responses.follow(state, watch, None)
        finally:
            link.unwatch(session_id, watch)
        return web.json_response(completion(state), headers={SESSION_HEADER: session_id})

    async def find_session(self, ask: CreateAsk) -> str | None:
        """A call that names no session continues the one whose conversation its messages are: the session that
        holds its earlier messages, ending with the reply it sends back, is found by their chain (DESIGN.md, "The
        HTTP face"); the call then follows that reply (on a branch, when it is not the newest: a regenerate or an
        edited message). Found, the conversation and the reply it follows; else a new session, seeded."""
        turns = ask.earlier
        if len(turns) < 2 or turns[-1].role != "assistant":
            return None
        chain = ""
        for turn in turns[:-1]:
            chain = turn_chain(chain, turn.role, turn.text)
        reply_hash = hashlib.sha256(turns[-1].text.encode("utf-8")).hexdigest()
        found = await self.responses.ask(m.FindTurn(self.responses.link.next_id(), chain, reply_hash, ask.user))
        if found.session_id is None:
            return None
        ask.conversation, ask.earlier = found.session_id, []
        return found.message_id

    async def _stream(self, request: web.Request, state: events.ReplyState, watch, include_usage: bool):
        response, out = await prepared(request, {SESSION_HEADER: state.session_id})
        sent = {"reasoning": 0, "text": 0, "role": False, "calls": []}

        def pending(s: events.ReplyState) -> bytes:
            """The chunks of what is new since the last call, as one write; at the end, the last ones."""
            objs = []
            delta: dict = {} if sent["role"] else {"role": "assistant"}
            if len(s.reasoning) > sent["reasoning"]:
                delta["reasoning_content"] = s.reasoning[sent["reasoning"]:]
            if len(s.text) > sent["text"]:
                delta["content"] = s.text[sent["text"]:]
            calls = call_deltas(s.tool_calls, sent["calls"])
            if calls:
                delta["tool_calls"] = calls
            if len(delta) > (0 if sent["role"] else 1) or (s.ended and not sent["role"]):
                objs.append(chunk(s, delta, None))
                sent.update(reasoning=len(s.reasoning), text=len(s.text), role=True)
            if s.ended:
                objs.append(chunk(s, {}, finish_reason(s)))
                if include_usage:
                    objs.append(chunk(s, None, None) | {"usage": usage(s)})
            data = b"".join(b"data: " + msgspec.json.encode(obj) + b"\n\n" for obj in objs)
            return data + b"data: [DONE]\n\n" if s.ended else data

        try:
            await self.responses.follow(state, watch, out=out, pending=pending)
        except (ConnectionResetError, asyncio.CancelledError):  # the client went away: that is how it says Stop
            if not state.ended:
                self.responses.in_background(self.responses.cancel_quietly(state))
            raise
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        """The upstream's models, as it lists them; the configured model when it cannot be asked."""
        base = (os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
        if base:
            headers = {"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"} if os.environ.get(
                "OPENAI_API_KEY") else {}
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                    async with session.get(f"{base}/models", headers=headers) as upstream:
                        if upstream.status == 200:
                            listed = await upstream.json()
                            if isinstance(listed, dict) and isinstance(listed.get("data"), list):
                                return web.json_response({"object": "list", "data": listed["data"]})
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
        model = os.environ.get("CHATTER_MODEL") or "mock-1"
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                                               "owned_by": "chatter"}]})


def parse_chat(body: dict, session_header: str | None) -> CreateAsk:
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise ApiError(400, f"unknown parameter: {unknown[0]!r}", param=unknown[0], code="unknown_parameter")
    if body.get("n") not in (None, 1):
        raise ApiError(400, "n must be 1: Chatter writes one reply a call", param="n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    turns = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object", param=where)
        role = {"developer": "system"}.get(message.get("role"), message.get("role"))
        if role not in ("system", "user", "assistant", "tool"):
            raise ApiError(400, f"{where}.role: Chatter takes system, user, assistant and tool messages, not "
                           f"{str(role)[:20]!r}", param=f"{where}.role")
        content = message.get("content")
        if content is None and role == "assistant" and message.get("tool_calls"):
            content = ""
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}.content: Chatter sends text to the model; a part that is not text "
                               "cannot be sent", param=f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string or text parts", param=f"{where}.content")
        text = text_ok(content, f"{where}.content")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not 1 <= len(call_id) <= 128:
                raise ApiError(400, f"{where}.tool_call_id must be the call's id", param=f"{where}.tool_call_id")
            turns.append(Turn("tool", text, call_id=call_id))
        else:
            turns.append(Turn(role, text, _calls(message.get("tool_calls"), where) if role == "assistant" else ()))
    ask = CreateAsk()
    ask.take_last(turns)
    if session_header:
        if not 1 <= len(session_header) <= 64:
            raise ApiError(400, f"{SESSION_HEADER} must be a session id", param=SESSION_HEADER)
        ask.conversation = session_header  # the session holds the earlier turns already
        ask.earlier = []
    read_chat_tools(body, ask)
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or len(model) > 128):
        raise ApiError(400, "model must be a string of at most 128 characters", param="model")
    ask.model, ask.stream = model, body.get("stream") is True
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ApiError(400, "temperature must be a number from 0 to 2", param="temperature")
        ask.params["temperature"] = temperature
    for name in ("max_tokens", "max_completion_tokens"):
        tokens = body.get(name)
        if tokens is not None:
            if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens < 2**31:
                raise ApiError(400, f"{name} must be a positive integer", param=name)
            ask.params["max_tokens"] = tokens
    return ask


def _calls(given, where: str) -> tuple:
    """An assistant message's tool calls, as the request echoes them back."""
    if given is None:
        return ()
    if not isinstance(given, list) or not all(
            isinstance(call, dict) and isinstance(call.get("id"), str) and isinstance(call.get("function"), dict)
            and isinstance(call["function"].get("name"), str) and isinstance(call["function"].get("arguments"), str)
            for call in given):
        raise ApiError(400, f"{where}.tool_calls: each call has an id and a function's name and arguments",
                       param=f"{where}.tool_calls")
    return tuple({"id": call["id"][:128], "type": "function", "function": {
        "name": call["function"]["name"][:64], "arguments": call["function"]["arguments"]}} for call in given)


def read_chat_tools(body: dict, ask: CreateAsk) -> None:
    """Function tools and tool_choice, already in Chat Completions' shape: passed on as they are (the
    coordinator checks them)."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or len(tools) > m.TOOLS_AT_MOST:
            raise ApiError(400, f"tools must be a list of at most {m.TOOLS_AT_MOST} tools", param="tools")
        ask.tools = tools or None
    ask.tool_choice = body.get("tool_choice")


def call_deltas(calls: list[dict], sent: list[int]) -> list[dict]:
    """What is new of the tool calls, as Chat Completions streams it: a call's id, name and first arguments the
    first time, then more of its arguments. ``sent`` (the arguments' lengths already sent) is brought up to date."""
    out = []
    for index, call in enumerate(calls):
        arguments = call["function"]["arguments"]
        if index == len(sent):
            sent.append(len(arguments))
            out.append({"index": index, "id": call.get("id") or "", "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": arguments}})
        elif len(arguments) > sent[index]:
            out.append({"index": index, "function": {"arguments": arguments[sent[index]:]}})
            sent[index] = len(arguments)
    return out


def finish_reason(state: events.ReplyState) -> str:
    if state.status == "completed":
        return state.finish_reason or "stop"
    return "length" if state.finish_reason == "length" else "stop"


def completion_id(state: events.ReplyState) -> str:
    return f"chatcmpl-{state.message_id}"


def chunk(state: events.ReplyState, delta: dict | None, finish: str | None) -> dict:
    return {"id": completion_id(state), "object": "chat.completion.chunk", "created": int(state.created_at or time.time()),
            "model": state.model, "choices": [] if delta is None else [
                {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def usage(state: events.ReplyState) -> dict:
    full = events.usage(state.stats)
    return {"prompt_tokens": full["input_tokens"], "completion_tokens": full["output_tokens"],
            "total_tokens": full["total_tokens"],
            "completion_tokens_details": {"reasoning_tokens": full["output_tokens_details"]["reasoning_tokens"]},
            "chatter": full["chatter"]}


def completion(state: events.ReplyState) -> dict:
    message = {"role": "assistant", "content": state.text}
    if state.reasoning:
        message["reasoning_content"] = state.reasoning
    if state.tool_calls:
        message["tool_calls"] = state.tool_calls
    return {"id": completion_id(state), "object": "chat.completion", "created": int(state.created_at),
            "model": state.model, "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(state),
                                                "logprobs": None}],
            "usage": usage(state)}
