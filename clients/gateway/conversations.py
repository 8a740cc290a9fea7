"""OpenAI's Conversations API over Chatter's sessions: a conversation is a session, so one made over HTTP shows in
``chatter sessions`` and ``watch``, and the other way round. Its items are the messages of the session's active
branch."""
from __future__ import annotations

import uuid

from aiohttp import web

from clients.api import join_history
from clients.gateway.errors import ApiError, not_found
from clients.gateway.link import APPLIED_TIMEOUT_S, Link
from clients.gateway.reading import json_body, page
from clients.gateway.responses import input_turns
from protocol import messages as m
from protocol.conversation import MessageRecord, SessionRecord


class Conversations:
    def __init__(self, link: Link, ask, owned) -> None:
        # ``ask``: Responses.ask, refusals in OpenAI's shape; ``owned``: Responses.owned_session
        self.link, self.ask, self.owned = link, ask, owned

    async def create(self, request: web.Request) -> web.Response:
        body = await json_body(request) if request.can_read_body else {}
        unknown = sorted(set(body) - {"items", "metadata"})
        if unknown:
            raise ApiError(400, f"unknown parameter: {unknown[0]!r}", param=unknown[0], code="unknown_parameter")
        turns = input_turns(body["items"]) if body.get("items") else []
        system = "\n\n".join(text for role, text in turns if role == "system") or None
        turns = [(role, text) for role, text in turns if role != "system"]
        user = request["user"]
        session_id = (await self.ask(m.NewSession(self.link.next_id(), system, None, None, owner=user))).session_id
        if turns:
            records, parent = [], ""
            for role, text in turns:
                records.append(MessageRecord(message_id=uuid.uuid4().hex, session_id=session_id, role=role,
                                             content=text, status="completed", created_at=0.0, parent_id=parent))
                parent = records[-1].message_id
            header = SessionRecord(session_id=session_id, system=system, active_leaf=parent)
            await self.ask(m.ImportSession(self.link.next_id(), header, records), APPLIED_TIMEOUT_S)
        return web.json_response(conversation(await self._history(session_id, user)))

    async def retrieve(self, request: web.Request) -> web.Response:
        return web.json_response(conversation(await self._history(request.match_info["conversation_id"],
                                                                  request["user"])))

    async def delete(self, request: web.Request) -> web.Response:
        session_id = request.match_info["conversation_id"]
        await self._history(session_id, request["user"])  # 404 when it is not there, or not theirs
        await self.ask(m.DeleteSessions(self.link.next_id(), [session_id]), APPLIED_TIMEOUT_S)
        return web.json_response({"id": session_id, "object": "conversation.deleted", "deleted": True})

    async def items(self, request: web.Request) -> web.Response:
        """A page of the active branch's messages: ``order`` (desc by default, as OpenAI's), ``after`` an item's
        id, ``limit`` 1 to 100 (20)."""
        history = await self._history(request.match_info["conversation_id"], request["user"])
        items = [item(msg) for msg in history.messages]
        return web.json_response(page(request, items))

    async def _history(self, session_id: str, user: str):
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


def item(msg) -> dict:
    """A message as a conversation item: a user's as input text, a reply's as output text."""
    kind = "input_text" if msg.role == "user" else "output_text"
    part = {"type": kind, "text": msg.content} | ({"annotations": [], "logprobs": []} if kind == "output_text" else {})
    status = "completed" if msg.status == "completed" else ("in_progress" if msg.status in ("queued", "streaming")
                                                            else "incomplete")
    return {"id": f"msg_{msg.message_id}", "type": "message", "role": msg.role, "status": status, "content": [part]}
