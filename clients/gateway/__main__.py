"""The gateway process: OpenAI's Responses API over HTTP (aiohttp), in front of the coordinator, which it reaches
like any client. It keeps nothing that matters, so any number run side by side, and a resume may land on any."""
from __future__ import annotations

import asyncio
import os

from aiohttp import web

import transport
from services import logs, shell
from clients.gateway.errors import ApiError
from clients.gateway.link import Link
from clients.gateway.chat import ChatCompletions
from clients.gateway.conversations import Conversations
from clients.gateway.responses import Responses

MAX_BODY_BYTES = 8 * 2**20  # CHATTER_HTTP_MAX_BODY: a larger body is 413
MAX_BODY = web.AppKey("max_body", int)


def address() -> tuple[str, int]:
    """CHATTER_HTTP, ``HOST:PORT`` (default 127.0.0.1:8080)."""
    raw = os.environ.get("CHATTER_HTTP") or "127.0.0.1:8080"
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"chatter gateway: CHATTER_HTTP must be HOST:PORT, got {raw!r}")
    if not transport.is_loopback(f"tcp://{host}:{port}"):
        raise SystemExit(f"chatter gateway: refusing to listen on {raw}: the gateway has no users yet, so anyone "
                         "who can reach it could read every session; listen on 127.0.0.1")
    return host.strip("[]"), int(port)


def max_body() -> int:
    raw = os.environ.get("CHATTER_HTTP_MAX_BODY") or str(MAX_BODY_BYTES)
    if not raw.isdigit() or not 1024 <= int(raw) <= 2**31:
        raise SystemExit(f"chatter gateway: CHATTER_HTTP_MAX_BODY must be bytes from 1024 to 2^31, got {raw!r}")
    return int(raw)


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Every error in OpenAI's shape, never a traceback: ours, aiohttp's (a body too large, an unknown route)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[MAX_BODY]
        return ApiError(413, f"the body is over {limit:,} bytes (CHATTER_HTTP_MAX_BODY)").response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return ApiError(exc.status, exc.reason or "error").response()


def make_app(link: Link, log) -> web.Application:
    limit = max_body()
    app = web.Application(client_max_size=limit, middlewares=[openai_errors])
    app[MAX_BODY] = limit
    responses = Responses(link, log)
    conversations = Conversations(link, responses.ask)
    app.router.add_post("/v1/responses", responses.create)
    app.router.add_get("/v1/responses/{response_id}", responses.retrieve)
    app.router.add_delete("/v1/responses/{response_id}", responses.delete)
    app.router.add_post("/v1/responses/{response_id}/cancel", responses.cancel)
    app.router.add_get("/v1/responses/{response_id}/input_items", responses.input_items)
    app.router.add_post("/v1/conversations", conversations.create)
    app.router.add_get("/v1/conversations/{conversation_id}", conversations.retrieve)
    app.router.add_delete("/v1/conversations/{conversation_id}", conversations.delete)
    app.router.add_get("/v1/conversations/{conversation_id}/items", conversations.items)
    chat = ChatCompletions(responses)
    app.router.add_post("/v1/chat/completions", chat.create)
    app.router.add_get("/v1/models", chat.models)
    return app


async def serve(log) -> None:
    host, port = address()
    link = Link()
    link.start()
    runner = web.AppRunner(make_app(link, log), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        raise SystemExit(f"chatter gateway: cannot listen on {host}:{port} (CHATTER_HTTP): {exc.strerror}") from None
    log.info("gateway_ready", url=f"http://{host}:{port}/v1")
    await shell.stop_signalled()
    await runner.cleanup()
    await link.close()
    log.info("gateway_stopped")


def main() -> None:
    log = logs.configure("gateway")
    asyncio.run(serve(log))


if __name__ == "__main__":
    main()
