"""OpenAI's Conversations API over Chatter's sessions: a conversation is a session, so one made over HTTP shows in
``chatter sessions`` and ``watch``, and the other way round. Its items are the messages of the session's active
branch."""
from __future__ import annotations

from aiohttp import web

from clients.api import join_history
from clients.gateway.errors import ApiError, not_found
from clients.gateway.link import APPLIED_TIMEOUT_S, Link
from clients.gateway.reading import json_body, page
from clients.gateway.inputs import input_turns, items_of
from protocol import messages as m


class Conversations:
    def __init__(self, link: Link, ask, owned, seed) -> None:
        # ``ask``: Responses.ask, refusals in OpenAI's shape; ``owned``: Responses.owned_session; ``seed``:
        # Responses.seed, a new session's first messages
        self.link, self.ask, self.owned, self.seed = link, ask, owned, seed

    async def create(self, request: web.Request) -> web.Response:
        body = await json_body(request) if request.can_read_body else {}
        unknown = sorted(set(body) - {"items", "metadata"})
        if unknown:
            raise ApiError(400, f"unknown parameter: {unknown[0]!r}", param=unknown[0], code="unknown_parameter")
        turns = input_turns(body["items"]) if body.get("items") else []
        system = "\n\n".join(turn.text for turn in turns if turn.role == "system") or None
        turns = [turn for turn in turns if turn.role != "system"]
        user = request["user"]
        session_id = (await self.ask(m.NewSession(self.link.next_id(), system, None, None, owner=user))).session_id
        if turns:
            await self.seed(session_id, system, turns)
        return web.json_response(conversation(await self.history(session_id, user)))

    async def retrieve(self, request: web.Request) -> web.Response:
        return web.json_response(conversation(await self.history(request.match_info["conversation_id"],
                                                                  request["user"])))

    async def delete(self, request: web.Request) -> web.Response:
        session_id = request.match_info["conversation_id"]
        await self.remove(session_id, request["user"])
        return web.json_response({"id": session_id, "object": "conversation.deleted", "deleted": True})

    async def remove(self, session_id: str, user: str) -> None:
        """A session of this user's and every message of it, gone for real (answered once applied); 404 when it is
        not there, or not theirs."""
        await self.owned(session_id, user)
        await self.ask(m.DeleteSessions(self.link.next_id(), [session_id]), APPLIED_TIMEOUT_S)

    async def list_items(self, request: web.Request) -> web.Response:
        """A page of the active branch's messages: ``order`` (desc by default, as OpenAI's), ``after`` an item's
        id, ``limit`` 1 to 100 (20)."""
        history = await self.history(request.match_info["conversation_id"], request["user"])
        return web.json_response(page(request, [one for msg in history.messages for one in items(msg)]))

    async def history(self, session_id: str, user: str):
        """The whole active branch of a session of this user's; any other is 404."""
        whole = await self.owned(session_id, user)
        try:
            while whole.next is not None:
                at = whole.next
                whole = join_history(whole, await self.ask(m.History(self.link.next_id(), session_id, at.message_id,
                                                                     at.offset, at.reasoning_offset)))
        except ApiError as exc:
            if exc.status in (400, 404):
                raise not_found(f"no conversation {session_id[:80]!r}") from None
            raise
        return whole


def conversation(history) -> dict:
    return {"id": history.session_id, "object": "conversation", "created_at": int(history.created_at),
            "metadata": {"title": history.title} if history.title else {}}


def items(msg) -> list[dict]:
    """A message as conversation items (``inputs.items_of``)."""
    status = "completed" if msg.status == "completed" else ("in_progress" if msg.status in ("queued", "streaming")
                                                            else "incomplete")
    return items_of(f"msg_{msg.message_id}", msg.role, msg.content, msg.tool_calls, msg.tool_call_id, status)
