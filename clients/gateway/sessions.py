"""Chatter's own endpoints, for what OpenAI's API has no shape for (the page uses them; docs/HTTP.md lists them):
a user's sessions listed, searched, renamed, set up and deleted; a session's messages with their place in its tree
and the arrows between branches; Regenerate, Continue and Edit, each a new reply followed as any response is; and a
reply's exact prompt. Every one is signed in, and a session or reply of another user is 404 like an unknown one."""
from __future__ import annotations

import uuid

from aiohttp import web

from clients.gateway import events
from clients.gateway.conversations import Conversations
from clients.gateway.errors import ApiError
from clients.gateway.link import APPLIED_TIMEOUT_S
from clients.gateway.reading import json_body, page, query_int
from clients.gateway.responses import Responses
from protocol import messages as m

SESSIONS_MOST = 100  # sessions a page, at most
SEARCH_MOST = 100  # search hits, at most
MATCH_OPEN, MATCH_CLOSE = "\x02", "\x03"  # around a match in a search hit's snippet (``answers.SearchHit``)
SETTINGS = {"title", "system", "model", "max_input_tokens", "temperature", "max_tokens", "continue_style"}
PARAMS = ("temperature", "max_tokens", "continue_style")  # the ones ConfigureSession takes as params


class Sessions:
    def __init__(self, responses: Responses, conversations: Conversations) -> None:
        self.responses, self.conversations = responses, conversations
        self.ask, self.link = responses.ask, responses.link

    def add_routes(self, app: web.Application, prefix: str = "/chatter/v1") -> None:
        routes = app.router
        routes.add_get(f"{prefix}/sessions", self.list)
        routes.add_get(f"{prefix}/search", self.search)
        routes.add_get(f"{prefix}/sessions/{{session_id}}", self.settings)
        routes.add_patch(f"{prefix}/sessions/{{session_id}}", self.change)
        routes.add_delete(f"{prefix}/sessions/{{session_id}}", self.delete)
        routes.add_get(f"{prefix}/sessions/{{session_id}}/messages", self.messages)
        routes.add_post(f"{prefix}/sessions/{{session_id}}/branch", self.branch)
        routes.add_post(f"{prefix}/sessions/{{session_id}}/regenerate", self.regenerate)
        routes.add_post(f"{prefix}/sessions/{{session_id}}/continue", self.continue_)
        routes.add_post(f"{prefix}/sessions/{{session_id}}/edit", self.edit)
        routes.add_get(f"{prefix}/responses/{{response_id}}/preview", self.preview)

    # ------------------------------------------------------------ the list, and search

    async def list(self, request: web.Request) -> web.Response:
        """The user's sessions, most recently active first; ``limit`` (1-100, 20), and the page after one whose
        last session was (``before``, ``before_id``): the ``next`` a page gives."""
        limit = query_int(request, "limit", 20)
        if not 1 <= limit <= SESSIONS_MOST:
            raise ApiError(400, f"limit must be from 1 to {SESSIONS_MOST}", param="limit")
        before, before_id = request.query.get("before"), request.query.get("before_id")
        try:
            before = None if before is None else float(before)
        except ValueError:
            raise ApiError(400, "before must be a number (a page's next.before)", param="before") from None
        if before is not None and not 0 <= before < 2**53:
            raise ApiError(400, "before is out of range", param="before")
        if before_id is not None and not 1 <= len(before_id) <= 64:
            raise ApiError(400, "before_id is not a session id", param="before_id")
        listed = await self.ask(m.Sessions(self.link.next_id(), limit, before, before_id, owner=request["user"]))
        rows = [{"id": row.session_id, "object": "chatter.session", "title": row.title,
                 "message_count": row.message_count, "last_activity": row.last_activity, "status": row.status}
                for row in listed.sessions]
        last = listed.sessions[-1] if listed.sessions else None
        more = listed.more and last is not None
        return web.json_response({"object": "list", "data": rows, "has_more": more,
                                  "next": {"before": last.last_activity, "before_id": last.session_id} if more
                                  else None})

    async def search(self, request: web.Request) -> web.Response:
        """The user's messages holding every word, "phrase" and prefix* of ``q``, best first; in one session with
        ``session``. Each hit's snippet is in parts, ``{"text", "match"}``, so that no client parses marks."""
        query = request.query.get("q", "")
        if not query.strip():
            raise ApiError(400, "q is empty: give a word, a \"phrase\" or a prefix*", param="q")
        limit = query_int(request, "limit", 20)
        if not 1 <= limit <= SEARCH_MOST:
            raise ApiError(400, f"limit must be from 1 to {SEARCH_MOST}", param="limit")
        session_id = request.query.get("session")
        if session_id is not None:
            await self.responses.owned_session(session_id, request["user"], "session")
        found = await self.ask(m.Search(self.link.next_id(), query, session_id, limit, owner=request["user"]))
        return web.json_response({"object": "list", "data": [
            {"session_id": hit.session_id, "title": hit.title, "message_id": hit.message_id, "role": hit.role,
             "created_at": hit.created_at, "snippet": snippet_parts(hit.snippet)} for hit in found.hits]})

    # ------------------------------------------------------------ one session

    async def settings(self, request: web.Request) -> web.Response:
        """The session's title and settings as they are now, and how much of its context its history takes."""
        session_id = await self._owned(request)
        return web.json_response(await self._settings(session_id))

    async def _settings(self, session_id: str) -> dict:
        first = await self.ask(m.History(self.link.next_id(), session_id))
        settings = await self.ask(m.ConfigureSession(self.link.next_id(), session_id))  # nothing asked: a read
        context = (await self.ask(m.Status(self.link.next_id(), session_id))).context
        return {"id": session_id, "object": "chatter.session", "title": first.title, "created_at": first.created_at,
                "system": settings.system, "model": settings.model, "max_input_tokens": settings.max_input_tokens,
                "temperature": settings.params.get("temperature"), "max_tokens": settings.params.get("max_tokens"),
                "continue_style": settings.continue_style,
                "context": {"history_tokens": context.history_tokens, "max_input_tokens": context.max_input_tokens}
                if context is not None else None}

    async def change(self, request: web.Request) -> web.Response:
        """Only what the body names changes: ``title`` ("" gives back the automatic one), ``system`` ("" clears
        it), ``model``, ``max_input_tokens`` (0: the default), ``temperature``, ``max_tokens`` and
        ``continue_style`` (null unsets one)."""
        session_id = await self._owned(request)
        body = await json_body(request)
        unknown = sorted(set(body) - SETTINGS)
        if unknown:
            raise ApiError(400, f"unknown setting {unknown[0]!r}: give {', '.join(sorted(SETTINGS))}",
                           param=unknown[0], code="unknown_parameter")
        for name in ("title", "system", "model"):
            if name in body and not isinstance(body[name], str):
                raise ApiError(400, f"{name} must be a string", param=name)
        budget = body.get("max_input_tokens")
        if budget is not None and (type(budget) is not int or not 0 <= budget < 2**31):
            raise ApiError(400, "max_input_tokens must be an integer from 0 (the default)", param="max_input_tokens")
        params = {name: body[name] for name in PARAMS if name in body}
        if {"system", "model", "max_input_tokens"} & set(body) or params:
            await self.ask(m.ConfigureSession(self.link.next_id(), session_id, body.get("system"), budget,
                                              body.get("model"), params or None))
        if "title" in body:
            await self.ask(m.RenameSession(self.link.next_id(), session_id, body["title"]), APPLIED_TIMEOUT_S)
        return web.json_response(await self._settings(session_id))

    async def delete(self, request: web.Request) -> web.Response:
        """The session and every message of it, gone for real (its text gone from the files, as any deletion's)."""
        session_id = request.match_info["session_id"]
        await self.conversations.remove(session_id, request["user"])
        return web.json_response({"id": session_id, "object": "chatter.session.deleted", "deleted": True})

    async def messages(self, request: web.Request) -> web.Response:
        """The active branch's messages, oldest first by default, as a cursor page (``order``, ``after``,
        ``limit``): each whole, with its thinking, stats and its place among its siblings (the < 2/3 > arrows)."""
        history = await self.conversations.history(request.match_info["session_id"], request["user"])
        return web.json_response(page(request, [message(msg) for msg in history.messages], order="asc"))

    async def branch(self, request: web.Request) -> web.Response:
        """The branch through sibling ``sibling`` (0-based, oldest first) of ``message_id`` becomes the active one."""
        session_id = await self._owned(request)
        body = await json_body(request)
        message_id, sibling = message_named(body, "a message"), body.get("sibling")
        if type(sibling) is not int or not 0 <= sibling < 2**31:
            raise ApiError(400, "sibling must be an integer from 0", param="sibling")
        switched = await self.ask(m.SwitchBranch(self.link.next_id(), session_id, message_id, sibling),
                                  APPLIED_TIMEOUT_S)
        return web.json_response({"id": session_id, "leaf_id": switched.leaf_id})

    # ------------------------------------------------------------ new replies

    async def regenerate(self, request: web.Request) -> web.Response:
        """The last user turn answered again, on a branch beside the last reply: a background response."""
        session_id = await self._owned(request)
        return await self._started(m.Regenerate(self.link.next_id(), session_id, request_key(request)))

    async def continue_(self, request: web.Request) -> web.Response:
        """The last reply, cut (length, stopped, failed, interrupted), goes on where it was cut: the same response,
        which streams again from its start."""
        session_id = await self._owned(request)
        return await self._started(m.Continue(self.link.next_id(), session_id, request_key(request)))

    async def edit(self, request: web.Request) -> web.Response:
        """A user message written again, on a branch of its own beside it, and a reply to it."""
        session_id = await self._owned(request)
        body = await json_body(request)
        message_id, text = message_named(body, "a user message"), body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "text must be the message, written again", param="text")
        return await self._started(m.EditMessage(self.link.next_id(), session_id, message_id, text,
                                                 request_key(request)))

    async def _started(self, msg: m.Message) -> web.Response:
        started = await self.ask(msg)
        state = self.responses.state_of(await self.responses.reply(started.message_id), None)
        state.background = True
        return web.json_response(events.response_object(state))

    async def preview(self, request: web.Request) -> web.Response:
        """A reply's prompt exactly as the model received it (``chatter preview``): its messages, what else the
        request carried, and the hash over them, which the stored reply has too."""
        snap = await self.responses.owned_reply(request.match_info["response_id"], "response_id", request["user"])
        whole = await self.responses.preview(snap.message_id)
        return web.json_response({
            "response_id": events.response_id(snap.message_id), "object": "chatter.preview",
            "prompt_hash": whole.prompt_hash, "model": whole.model, "messages": whole.messages,
            "params": whole.params, "text": whole.preview, "exact": whole.exact, "problem": whole.problem,
            "dropped_count": whole.dropped_count, "thinking_left_out": whole.thinking_left_out})

    async def _owned(self, request: web.Request) -> str:
        session_id = request.match_info["session_id"]
        await self.responses.owned_session(session_id, request["user"])
        return session_id


def message_named(body: dict, what: str) -> str:
    """The body's ``message_id``: an id as the session's messages have them, else 400 naming ``what`` it must be."""
    message_id = body.get("message_id")
    if not isinstance(message_id, str) or not 1 <= len(message_id) <= 64:
        raise ApiError(400, f"message_id must name {what} of the session", param="message_id")
    return message_id


def request_key(request: web.Request) -> str:
    """The request's Idempotency-Key (a retried request starts nothing twice), or a new one."""
    return (request.headers.get("Idempotency-Key") or uuid.uuid4().hex)[:128]


def message(msg) -> dict:
    """One message as Chatter's endpoints give it: its id (and, for a reply, its response's), everything a client
    shows, and where it is in the session's tree."""
    out = {"id": msg.message_id, "object": "chatter.message", "role": msg.role, "content": msg.content,
           "reasoning": msg.reasoning, "status": msg.status, "created_at": msg.created_at, "stats": msg.stats,
           "error": msg.error, "model": msg.model, "prompt_hash": msg.prompt_hash, "tool_calls": msg.tool_calls,
           "tool_call_id": msg.tool_call_id, "parent_id": msg.parent_id, "sibling_index": msg.sibling_index,
           "sibling_count": msg.sibling_count}
    if msg.role == "assistant":
        out["response_id"] = events.response_id(msg.message_id)
    return out


def snippet_parts(snippet: str) -> list[dict]:
    """A snippet whose matches are between MATCH_OPEN and MATCH_CLOSE, as parts: plain text and matches."""
    parts, match = [], False
    for piece in snippet.replace(MATCH_CLOSE, MATCH_OPEN).split(MATCH_OPEN):
        if piece:
            parts.append({"text": piece, "match": match})
        match = not match
    return parts
