"""The web page the gateway serves at ``/``: static files of this package (``static/``: HTML, CSS, plain JavaScript
modules, and the vendored markdown-it and highlight.js with their licences), no build step and nothing from
another host. The page talks to the gateway's public API only, with the user's token. Every file goes out with a
Content-Security-Policy that allows scripts, styles and connections to this origin alone (no inline script), and
is not framed."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

PAGE_DIR = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


def is_page(path: str) -> bool:
    """A path of the page (public), not of the API (signed in)."""
    return path == "/" or path.startswith("/page/")


async def index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(PAGE_DIR / "index.html", headers=HEADERS)


@web.middleware
async def page_headers(request: web.Request, handler):
    response = await handler(request)
    if is_page(request.path):
        response.headers.update(HEADERS)
    return response


def add_page(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_static("/page/", PAGE_DIR, show_index=False, follow_symlinks=False)
