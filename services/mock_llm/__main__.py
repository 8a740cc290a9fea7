"""The mock LLM server: OpenAI-compatible ``POST /v1/chat/completions`` (SSE and plain JSON) on
127.0.0.1 (or CHATTER_MOCK_HOST), with injectable faults and a request journal at ``GET /journal`` (``DELETE`` clears it).

Handler cancellation is on, so a client that closes the stream cancels the handler at once:
the journal records exactly when the upstream request was really stopped.
"""
from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import functools
import itertools
import json
import math
import random
import time
from dataclasses import replace

from aiohttp import web

from services import config, shell
from protocol.conversation import THINK_CLOSE, THINK_OPEN
from services.mock_llm.script import (MARKDOWN_TOKENS, Scenario, continued_prefix, continued_tokens, env_scenario, inline_thinking,
                                      prompt_token_count, reasoning_tokens, reply_tokens, request_keys, scenario_for,
                                      tokens_of_key, tool_call_arguments)

OWNED_BY = {"vllm": "vllm", "llamacpp": "llamacpp", "deepseek": "deepseek", "openai": "openai"}

JOURNAL_LIMIT = 10_000
CONTENT_TAIL = b'}, "finish_reason": null}]}\n\n'
TICK_S = 0.001


# Connections the kernel holds for the mock before it accepts them (capped at net.core.somaxconn). aiohttp's
# default, 128, overflowed when a thousand clients connected at once (the bench's peer: connect timeouts, and
# the kernel's TcpExtListenOverflows counter went up).
LISTEN_BACKLOG = 4096


class Ticks:
    """Sleeps that end on a shared grid of TICK_S: the streams due in the same millisecond wake from one timer,
    each from a future of its own (a cancelled handler leaves the others be). At 1000 streams the mock's
    ``asyncio.sleep`` per token (a timer handle, the timer heap's Python comparisons, its callback) was a fifth
    of the mock's CPU (py-spy); measured in docs/PERFORMANCE.md, "The mock's cost"."""

    def __init__(self) -> None:
        self.due: dict[int, list[asyncio.Future]] = {}

    def until(self, when: float) -> asyncio.Future:
        """A future done at the first tick at or after ``when`` (the loop's clock, ``time.monotonic``)."""
        slot = math.ceil(when / TICK_S)
        loop = asyncio.get_running_loop()
        waiting = self.due.get(slot)
        if waiting is None:
            waiting = self.due[slot] = []
            loop.call_at(slot * TICK_S, self._tick, slot)
        future = loop.create_future()
        waiting.append(future)
        return future

    def _tick(self, slot: int) -> None:
        for future in self.due.pop(slot):
            if not future.done():  # cancelled: its handler is gone
                future.set_result(None)


@functools.lru_cache(maxsize=4096)
def _json_token(token: str) -> bytes:
    """A token as a JSON string: the vocabulary's few dozen, encoded once."""
    return json.dumps(token, ensure_ascii=False).encode()


class MockLLM:
    def __init__(self, base: Scenario, *, serial: bool = False, context: int = 0, server: str = "chatter") -> None:
        """``serial``: one request generates at a time; the others are answered 200 at once and held, silent,
        until their turn (llama.cpp's server by default, Ollama with one slot). ``context``: the model's context
        length, told in /v1/models as vLLM does (``max_model_len``): a prompt over it is refused with 400, and
        a reply that reaches it ends with finish_reason ``length``. ``server``: what it imitates
        (CHATTER_MOCK_SERVER): its /v1/models owned_by, and how it reads a trailing assistant message
        (``script.continued_prefix``)."""
        self.server = server
        self.turns: collections.Counter[str] = collections.Counter()
        self.base = base
        self.serial = asyncio.Lock() if serial else None
        self.context = context
        self.journal: collections.deque[dict] = collections.deque(maxlen=JOURNAL_LIMIT)
        self.attempts: collections.Counter[str] = collections.Counter()
        self.ids = itertools.count(1)
        self.ticks = Ticks()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # a 1M-token prompt is 4-16 MB
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/journal", self.read_journal)
        app.router.add_delete("/journal", self.clear_journal)
        app.router.add_get("/health", lambda _request: web.json_response({"ok": True}))
        return app

    async def models(self, _request: web.Request) -> web.Response:
        model = {"id": "mock-1", "object": "model", "owned_by": OWNED_BY.get(self.server, "chatter")}
        if self.context:
            model["max_model_len"] = self.context
        return web.json_response({"object": "list", "data": [model]})

    async def read_journal(self, _request: web.Request) -> web.Response:
        return web.json_response({"requests": list(self.journal)}, dumps=_JOURNAL_JSON)

    async def clear_journal(self, _request: web.Request) -> web.Response:
        self.journal.clear()
        self.attempts.clear()
        self.turns.clear()
        return web.json_response({"ok": True})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise ValueError("body must be an object with a messages array")
            scenario = scenario_for(body, self.base)
        except (ValueError, TypeError, KeyError) as exc:
            return _error(400, f"bad request: {exc}", "invalid_request_error")
        key, turn = request_keys(body)
        if len(self.attempts) >= JOURNAL_LIMIT and key not in self.attempts:
            self.attempts.clear()  # bounded memory under long load runs; fault scripts need only recent keys
        if len(self.turns) >= JOURNAL_LIMIT:
            self.turns.clear()
        self.attempts[key] += 1
        entry = {"id": next(self.ids), "received_at": time.time(), "body": body, "attempt": self.attempts[key],
                 "stream": bool(body.get("stream")), "status": 200, "chunks_sent": 0, "completed": False,
                 "client_closed": False, "dropped": False, "closed_at": None,
                 # after each answer token it wrote: the answer's length, and time.time() (arrays: 12 bytes a token
                 # in a journal of up to JOURNAL_LIMIT replies)
                 "sent_lengths": array.array("q"), "sent_at": array.array("d")}
        self.journal.append(entry)
        if scenario.fail_status and (scenario.fail_times < 0 or self.attempts[key] <= scenario.fail_times):
            entry["status"] = scenario.fail_status
            headers = {"Retry-After": f"{scenario.retry_after:g}"} if scenario.retry_after >= 0 else {}
            return _error(scenario.fail_status, f"injected failure {scenario.fail_status}", "server_error", headers)
        model = str(body.get("model", ""))
        partial = continued_prefix(body, self.server)
        if partial is None:  # the request's key is its reply's seed where the body's model is the string
            tokens = (list(MARKDOWN_TOKENS) if scenario.markdown
                      else tokens_of_key(key, scenario.tokens) if isinstance(body.get("model"), str)
                      else reply_tokens(body["messages"], model, scenario.tokens))
            thinking = reasoning_tokens(body["messages"], model, scenario.reasoning_tokens)
            if scenario.say:  # a word of the test's own first (outside the deterministic reply verify checks)
                tokens = [scenario.say + " ", *tokens]
        else:  # the reply goes on, mid-answer: no thinking first
            tokens, thinking = continued_tokens(body["messages"], model, scenario.tokens, partial,
                                                scenario.markdown), []
            entry["continued_from"] = len(partial)
        self.turns[turn] += 1
        if 0 <= scenario.fault_times < self.turns[turn]:  # this turn's mid-stream faults are spent
            scenario = replace(scenario, drop_after=-1, no_finish=False, malformed_after=-1, stall_after=-1)
        finish = "stop"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(tokens):
            tokens, finish = tokens[:limit], "length"
        repeat = scenario.repeat_prefill == 1 or (scenario.repeat_prefill < 0 and self.server == "llamacpp")
        if partial and repeat and tokens:  # as llama-server does: the reply repeats the prefill first
            tokens = [partial + tokens[0], *tokens[1:]]
        if self.context:
            prompt = prompt_token_count(body["messages"])
            if prompt >= self.context:
                entry["status"] = 400
                return _error(400, f"This model's maximum context length is {self.context} tokens. However, your "
                              f"messages resulted in {prompt} tokens. Please reduce the length of the messages.",
                              "invalid_request_error")
            thinking = thinking[:self.context - prompt]
            if prompt + len(thinking) + len(tokens) > self.context:
                tokens, finish = tokens[:self.context - prompt - len(thinking)], "length"
        entry["reasoning_sent"] = 0
        try:
            if entry["stream"]:
                return await self._stream(request, body, scenario, tokens, entry, finish, thinking)
            return await self._whole(body, scenario, tokens, entry, finish, thinking)
        except asyncio.CancelledError:
            entry["client_closed"] = True
            raise
        finally:
            entry["closed_at"] = time.time()

    async def _whole(self, body: dict, scenario: Scenario, tokens: list[str], entry: dict, finish: str,
                     thinking: list[str]) -> web.Response:
        async with self._turn(entry):
            await asyncio.sleep(scenario.ttft_ms / 1000 + (len(thinking) + len(tokens)) / max(scenario.tps, 1e-6))
        message = {"role": "assistant", "content": "".join(tokens)}
        if thinking:
            if scenario.reasoning_field == "think_tags":
                message["content"] = inline_thinking(tokens, thinking, scenario.think_after)
            else:
                message[scenario.reasoning_field] = "".join(thinking)
        entry["completed"] = True
        return web.json_response({
            "id": f"chatcmpl-mock-{entry['id']}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(body, len(tokens), len(thinking)),
        })

    def _turn(self, entry: dict):
        """This request's turn to generate: at once, or in serial mode when the one before it is done."""
        if self.serial is None:
            return contextlib.nullcontext()
        entry["queued"] = self.serial.locked()
        return self.serial

    async def _stream(self, request: web.Request, body: dict, scenario: Scenario, tokens: list[str],
                      entry: dict, finish: str, thinking: list[str]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)  # 200 and the headers at once, even when the request then waits its turn
        async with self._turn(entry):
            return await self._generate(request, body, scenario, tokens, entry, finish, resp, thinking)

    async def _generate(self, request: web.Request, body: dict, scenario: Scenario, tokens: list[str],
                        entry: dict, finish: str, resp: web.StreamResponse,
                        thinking: list[str]) -> web.StreamResponse:
        base = {"id": f"chatcmpl-mock-{entry['id']}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model")}
        token_count = len(tokens)
        if scenario.chunk_tokens > 1:  # several tokens an event (a 5 MB event, for the generator to take apart)
            n = scenario.chunk_tokens
            tokens = ["".join(tokens[i:i + n]) for i in range(0, len(tokens), n)]
        content_head = (b"data: " + json.dumps(base | {"choices": [{"index": 0, "delta": {"content": ""}}]},
                                                ensure_ascii=False).encode()).rsplit(b'""', 1)[0]
        start = time.monotonic() + scenario.ttft_ms / 1000
        interval = 1 / max(scenario.tps, 1e-6)
        jitter = _jitter(entry["id"], scenario.jitter_ms)
        tags = scenario.reasoning_field == "think_tags"
        head = tokens[:scenario.think_after] if tags and thinking else []  # answer before an inline <think>
        first = [(False, token) for token in head] + [(True, token) for token in thinking]
        for i, (is_thinking, token) in enumerate(first):  # the thinking first, paced like the answer
            due = start + i * interval + next(jitter)
            if due > time.monotonic():
                await self.ticks.until(due)
            if not is_thinking:
                delta = {"content": token}
            elif tags:
                delta = {"content": (THINK_OPEN if i == len(head) else "") + token}
            else:
                delta = {scenario.reasoning_field: token}
            if i == 0:
                delta["role"] = "assistant"
            await _send(resp, base | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            entry["reasoning_sent" if is_thinking else "chunks_sent"] += 1
        if thinking and tags:
            await _send(resp, base | {"choices": [{"index": 0, "delta": {"content": THINK_CLOSE},
                                                   "finish_reason": None}]})
        start += len(first) * interval
        sent_lengths, sent_at, length = entry["sent_lengths"], entry["sent_at"], 0
        for i, token in enumerate(tokens):
            length += len(token)
            if i < len(head):
                continue  # sent before the thinking
            if i == scenario.drop_after:
                entry["dropped"] = True
                request.transport.close()  # an abrupt disconnect: the chunked body never ends
                return resp
            if i == scenario.malformed_after:
                await resp.write(b'data: {"choices": [{"delta": {"content": "unterminated\n\n')
            if i == scenario.stall_after:
                await asyncio.sleep(scenario.stall_ms / 1000)
            due = start + i * interval + next(jitter)
            if due > time.monotonic():
                await self.ticks.until(due)
            if i == 0:
                delta = {"role": "assistant", "content": token}
                await _send(resp, base | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            else:  # the same bytes as json.dumps of the whole chunk, at a fifth of its cost (py-spy)
                await resp.write(content_head + _json_token(token) + CONTENT_TAIL)
            sent_lengths.append(length)  # for a load test's upstream-to-client latency
            sent_at.append(time.time())
            entry["chunks_sent"] += 1
        if scenario.tool_call:  # the call, then its arguments in pieces of a few characters, as OpenAI streams them
            finish = "tool_calls"
            arguments = tool_call_arguments(body.get("messages") or [], body.get("model"))
            first = {"index": 0, "id": f"call_{entry['id']}", "type": "function",
                     "function": {"name": scenario.tool_call, "arguments": ""}}
            await _send(resp, base | {"choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]})
            for at in range(0, len(arguments), 7):
                piece = {"index": 0, "function": {"arguments": arguments[at:at + 7]}}
                await _send(resp, base | {"choices": [{"index": 0, "delta": {"tool_calls": [piece]},
                                                       "finish_reason": None}]})
        if not scenario.no_finish:
            await _send(resp, base | {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await _send(resp, base | {"choices": [], "usage": _usage(body, token_count, len(thinking))})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        entry["completed"] = True
        return resp


_JOURNAL_JSON = functools.partial(json.dumps, default=list)  # a journal entry's arrays as lists


async def _send(resp: web.StreamResponse, chunk: dict) -> None:
    await resp.write(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n")


def _usage(body: dict, answer_tokens: int, reasoning: int = 0) -> dict:
    """As OpenAI counts it: completion tokens include the reasoning, told apart in their details."""
    prompt_tokens = prompt_token_count(body["messages"])
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": answer_tokens + reasoning,
             "total_tokens": prompt_tokens + answer_tokens + reasoning}
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _jitter(seed: int, jitter_ms: float):
    rng = random.Random(seed)
    while True:
        yield rng.uniform(0, jitter_ms / 1000) if jitter_ms > 0 else 0.0


def _error(status: int, message: str, kind: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status,
                             headers=headers)


async def serve() -> None:
    log = shell.start("mock_llm")
    settings = config.MockSettings.from_env()
    host, port = settings.host, settings.port
    mock = MockLLM(env_scenario(settings), serial=settings.serial, context=settings.context, server=settings.server)
    runner = web.AppRunner(mock.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"chatter mock_llm: cannot listen on {host}:{port} (CHATTER_MOCK_HOST, CHATTER_MOCK_PORT): "
                         f"{exc.strerror}") from None
    log.info("mock_llm_ready", url=f"http://{host}:{port}/v1")
    shell.freeze_startup_heap()  # it shares the machine's cores with the backend in every load test
    await shell.stop_signalled()
    await runner.cleanup()
    log.info("mock_llm_stopped")


def main() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    main()
