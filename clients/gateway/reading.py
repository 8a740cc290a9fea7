"""Reading a request, as every endpoint does: its JSON body, an integer of its query, and a cursor page of a list
(OpenAI's ``order``, ``after``, ``limit``)."""
from __future__ import annotations

import json

from aiohttp import web

from clients.gateway.errors import ApiError

LIST_MOST = 100  # items a page, at most (OpenAI's bound)


async def json_body(request: web.Request) -> dict:
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer", param=name) from None
    if not -1 <= value < 2**53:
        raise ApiError(400, f"{name} is out of range", param=name)
    return value


def page(request: web.Request, items: list[dict], order: str = "desc") -> dict:
    """A cursor page of ``items`` (oldest first as given), as OpenAI's lists are: ``order`` (``order`` when not
    asked), ``after``, ``limit``."""
    order = request.query.get("order", order)
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be asc or desc", param="order")
    limit = query_int(request, "limit", 20)
    if not 1 <= limit <= LIST_MOST:
        raise ApiError(400, f"limit must be from 1 to {LIST_MOST}", param="limit")
    ordered = items if order == "asc" else items[::-1]
    after = request.query.get("after")
    if after is not None:
        at = next((i for i, it in enumerate(ordered) if it["id"] == after), None)
        if at is None:
            raise ApiError(400, f"after: no item {after[:80]!r} here", param="after")
        ordered = ordered[at + 1:]
    chosen = ordered[:limit]
    return {"object": "list", "data": chosen, "first_id": chosen[0]["id"] if chosen else None,
            "last_id": chosen[-1]["id"] if chosen else None, "has_more": len(ordered) > limit}
