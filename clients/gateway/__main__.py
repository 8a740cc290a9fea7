"""The gateway process: OpenAI's Responses API over HTTP (aiohttp), in front of the coordinator, which it reaches
like any client. It keeps nothing that matters, so any number run side by side, and a resume may land on any."""
from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import resource
import ssl
import time

from aiohttp import web

import transport
from clients.api import ChatterError
from protocol import messages as m
from services import logs, shell
from clients.gateway.errors import ApiError
from clients.gateway.link import CoordinatorAway, Link
from clients.gateway.chat import ChatCompletions
from clients.gateway.conversations import Conversations
from clients.gateway.page import add_page, is_page, page_headers
from clients.gateway.responses import Responses
from clients.gateway.sessions import Sessions

MAX_BODY_BYTES = 8 * 2**20  # CHATTER_HTTP_MAX_BODY: a larger body is 413
MAX_BODY = web.AppKey("max_body", int)
TOKEN_TTL_S = 5.0
STREAMS_PER_USER = 16  # CHATTER_HTTP_STREAMS_PER_USER: requests following replies at once, per user and gateway


def address() -> tuple[str, int]:
    """CHATTER_HTTP, ``HOST:PORT`` (default 127.0.0.1:8080)."""
    raw = os.environ.get("CHATTER_HTTP") or "127.0.0.1:8080"
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"chatter gateway: CHATTER_HTTP must be HOST:PORT, got {raw!r}")
    return host.strip("[]"), int(port)


def tls() -> ssl.SSLContext | None:
    """HTTPS from CHATTER_HTTP_TLS_CERT and CHATTER_HTTP_TLS_KEY (PEM files), when both are set."""
    cert, key = os.environ.get("CHATTER_HTTP_TLS_CERT"), os.environ.get("CHATTER_HTTP_TLS_KEY")
    if not cert and not key:
        return None
    if not (cert and key):
        raise SystemExit("chatter gateway: set both CHATTER_HTTP_TLS_CERT and CHATTER_HTTP_TLS_KEY, or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"chatter gateway: cannot load the TLS certificate and key: {exc}") from None
    return context


class SignIn:
    """Who a request is: its bearer token's sha256, asked of the coordinator, remembered for ``TOKEN_TTL_S`` (so a
    revoked token stops signing in within that)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.known: dict[str, tuple[str, float]] = {}  # token hash -> (user, until)

    async def user(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "no token: send Authorization: Bearer TOKEN (chatter users add NAME makes one)",
                           code="invalid_api_key")
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        now = time.monotonic()
        known = self.known.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        try:
            name = (await self.link.request(m.WhoIs(self.link.next_id(), digest))).name
        except CoordinatorAway as exc:
            raise ApiError.from_refusal(exc) from None
        except ChatterError:
            raise ApiError(401, "the token is unknown or revoked", code="invalid_api_key") from None
        if len(self.known) > 10_000:
            self.known.clear()
        self.known[digest] = (name, now + TOKEN_TTL_S)
        return name


def flush_ms() -> int:
    """CHATTER_HTTP_FLUSH_MS: a streamed reply's writes to its client at least this far apart (0: each as it comes;
    docs/PERFORMANCE.md, "The gateway", has what it costs and saves)."""
    raw = os.environ.get("CHATTER_HTTP_FLUSH_MS") or "0"
    if not raw.isdigit() or int(raw) > 1000:
        raise SystemExit(f"chatter gateway: CHATTER_HTTP_FLUSH_MS must be milliseconds from 0 to 1000, got {raw!r}")
    return int(raw)


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


def streams_per_user() -> int:
    raw = os.environ.get("CHATTER_HTTP_STREAMS_PER_USER") or str(STREAMS_PER_USER)
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise SystemExit(f"chatter gateway: CHATTER_HTTP_STREAMS_PER_USER must be from 1 to 100000, got {raw!r}")
    return int(raw)


def limited(handler, open_: collections.Counter, most: int):
    """A request that follows a reply (a stream, or a create that waits for its end) holds one of its user's
    ``most`` places in this gateway while it lasts; past them, 429 with Retry-After."""
    async def run(request: web.Request) -> web.StreamResponse:
        user = request["user"]
        if open_[user] >= most:
            raise ApiError(429, f"{open_[user]} of your requests are following replies here; the most is {most} "
                           "(CHATTER_HTTP_STREAMS_PER_USER)", code="rate_limit_exceeded", headers={"Retry-After": "1"})
        open_[user] += 1
        try:
            return await handler(request)
        finally:
            open_[user] -= 1
            if not open_[user]:
                del open_[user]
    return run


def signed_in(sign_in: SignIn):
    @web.middleware
    async def middleware(request: web.Request, handler):
        if is_page(request.path):  # the page itself is public; what it asks of the API is signed in
            return await handler(request)
        request["user"] = await sign_in.user(request)
        return await handler(request)
    return middleware


def make_app(link: Link, log) -> web.Application:
    limit = max_body()
    app = web.Application(client_max_size=limit,
                          middlewares=[page_headers, openai_errors, signed_in(SignIn(link))])
    add_page(app)
    app[MAX_BODY] = limit
    responses = Responses(link, log, flush_ms() / 1000)
    conversations = Conversations(link, responses.ask, responses.owned_session, responses.seed)
    open_, most = collections.Counter(), streams_per_user()
    app.router.add_post("/v1/responses", limited(responses.create, open_, most))
    app.router.add_get("/v1/responses/{response_id}", limited(responses.retrieve, open_, most))
    app.router.add_delete("/v1/responses/{response_id}", responses.delete)
    app.router.add_post("/v1/responses/{response_id}/cancel", responses.cancel)
    app.router.add_get("/v1/responses/{response_id}/input_items", responses.input_items)
    app.router.add_post("/v1/conversations", conversations.create)
    app.router.add_get("/v1/conversations/{conversation_id}", conversations.retrieve)
    app.router.add_delete("/v1/conversations/{conversation_id}", conversations.delete)
    app.router.add_get("/v1/conversations/{conversation_id}/items", conversations.list_items)
    chat = ChatCompletions(responses)
    app.router.add_post("/v1/chat/completions", limited(chat.create, open_, most))
    app.router.add_get("/v1/models", chat.models)
    Sessions(responses, conversations).add_routes(app)
    return app


async def serve(log) -> None:
    host, port = address()
    context = tls()
    link = Link()
    link.start()
    if not transport.is_loopback(f"tcp://{host}:{port}"):
        await users_or_refuse(link, host, port)
        if context is None:
            log.warning("plain_http_off_loopback", address=f"{host}:{port}",
                        hint="tokens cross the network in the clear: set CHATTER_HTTP_TLS_CERT and _KEY, or put a "
                             "TLS reverse proxy in front (docs/HTTP.md)")
    runner = web.AppRunner(make_app(link, log), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=context)
    try:
        await site.start()
    except OSError as exc:
        raise SystemExit(f"chatter gateway: cannot listen on {host}:{port} (CHATTER_HTTP): {exc.strerror}") from None
    log.info("gateway_ready", url=f"{'https' if context else 'http'}://{host}:{port}/v1")
    await shell.stop_signalled()
    await runner.cleanup()
    await link.close()
    log.info("gateway_stopped")


async def users_or_refuse(link: Link, host: str, port: int) -> None:
    """Listening where others can reach it needs users to sign them in: refused without any (as a tcp bind without
    CURVE is), or when the coordinator cannot say."""
    try:
        users = (await link.request(m.Users(link.next_id()))).users
    except ChatterError as exc:
        await link.close()
        raise SystemExit(f"chatter gateway: cannot tell whether there are users, so not listening on {host}:{port}: "
                         f"{exc}") from None
    if not any(user.revoked_at is None for user in users):
        await link.close()
        raise SystemExit(f"chatter gateway: refusing to listen on {host}:{port}: no user could sign in, and anyone "
                         "who can reach it would be refused anyway; add one (chatter users add NAME), or listen on "
                         "127.0.0.1")


def open_files_raised() -> int:
    """The most connections this process may hold: its soft limit of open files raised to the hard one (a
    desktop's soft 1024 would refuse the 1025th idle client with EMFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        except (ValueError, OSError):
            return soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main() -> None:
    log = logs.configure("gateway")
    log.info("gateway_open_files", limit=open_files_raised())
    asyncio.run(serve(log))


if __name__ == "__main__":
    main()
