"""OpenAI's Chat Completions over Chatter, for front-ends that speak only that (Open WebUI, LibreChat): each call is
a reply in a Chatter session, persisted and viewable with ``chatter watch``. A call names its session with the
``X-Chatter-Session`` header (and gets it back on every answer), so calls continue one conversation; without one,
a new session begins with the call's earlier messages."""
from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import aiohttp
from aiohttp import web

from clients.gateway import events
from clients.gateway.errors import ApiError
from clients.gateway.reading import json_body
from clients.gateway.responses import CreateAsk, Responses, text_ok
from protocol import messages as m

SESSION_HEADER = "X-Chatter-Session"
KNOWN = {"model", "messages", "stream", "stream_options", "temperature", "max_tokens", "max_completion_tokens",
         "n", "user", "top_p", "presence_penalty", "frequency_penalty", "seed", "stop", "logit_bias", "metadata",
         "store", "response_format", "parallel_tool_calls"}


class ChatCompletions:
    def __init__(self, responses: Responses) -> None:
        self.responses = responses

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        ask = parse_chat(body, request.headers.get(SESSION_HEADER))
        ask.user = request["user"]
        session_id, _ = await self.responses.session_for(ask)
        key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
        started = await self.responses.ask(m.Send(self.responses.link.next_id(), session_id, ask.text, key[:128],
                                                  ask.model))
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

    async def _stream(self, request: web.Request, state: events.ReplyState, watch, include_usage: bool):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               SESSION_HEADER: state.session_id})
        await response.prepare(request)
        sent = {"reasoning": 0, "text": 0, "role": False}

        async def on_change(s: events.ReplyState) -> None:
            delta: dict = {} if sent["role"] else {"role": "assistant"}
            if len(s.reasoning) > sent["reasoning"]:
                delta["reasoning_content"] = s.reasoning[sent["reasoning"]:]
            if len(s.text) > sent["text"]:
                delta["content"] = s.text[sent["text"]:]
            if "content" in delta or "reasoning_content" in delta or (s.ended and not sent["role"]):
                await write(chunk(s, delta, None))
                sent.update(reasoning=len(s.reasoning), text=len(s.text), role=True)
            if s.ended:
                await write(chunk(s, {}, finish_reason(s)))
                if include_usage:
                    await write(chunk(s, None, None) | {"usage": usage(s)})
                await response.write(b"data: [DONE]\n\n")

        async def write(obj: dict) -> None:
            await response.write(f"data: {json.dumps(obj)}\n\n".encode())

        try:
            await self.responses.follow(state, watch, on_change, heartbeat=lambda: response.write(b": keep-alive\n\n"))
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
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"{where}.role: Chatter takes system, user and assistant messages, not "
                           f"{str(role)[:20]!r}", param=f"{where}.role")
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"{where}.content: Chatter sends text to the model; a part that is not text "
                               "cannot be sent", param=f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string or text parts", param=f"{where}.content")
        turns.append((role, text_ok(content, f"{where}.content")))
    if turns[-1][0] != "user" or not turns[-1][1].strip():
        raise ApiError(400, "the last message must be the user's, with text", param="messages")
    ask = CreateAsk()
    ask.text = turns[-1][1]
    system = [text for role, text in turns[:-1] if role == "system"]
    ask.instructions = "\n\n".join(system) if system else None
    if session_header:
        if not 1 <= len(session_header) <= 64:
            raise ApiError(400, f"{SESSION_HEADER} must be a session id", param=SESSION_HEADER)
        ask.conversation = session_header  # the session holds the earlier turns already
    else:
        ask.earlier = [(role, text) for role, text in turns[:-1] if role != "system"]
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
    return {"id": completion_id(state), "object": "chat.completion", "created": int(state.created_at),
            "model": state.model, "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(state),
                                                "logprobs": None}],
            "usage": usage(state)}
