"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the HTTP status that says
what kind: the SDK raises its typed exception for each (``openai.NotFoundError``, ``BadRequestError``, ...)."""
from __future__ import annotations

import json

from aiohttp import web

from clients.gateway.link import CoordinatorAway

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
         413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error", 500: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    @classmethod
    def from_refusal(cls, exc: Exception) -> ApiError:
        """The coordinator's refusal of a request, in its words: an unknown id is 404, a coordinator that did not
        answer 503, anything else 400."""
        words = str(exc)
        if isinstance(exc, CoordinatorAway):
            return cls(503, f"Chatter's coordinator is not answering ({words}); try again", code="unavailable",
                       headers={"Retry-After": "1"})
        if words.startswith(("unknown session", "no reply", "no message")) or "was deleted" in words:
            return cls(404, words, code="not_found")
        return cls(400, words)

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}
        return web.Response(status=self.status, text=json.dumps(body), content_type="application/json",
                            headers=self.headers)


def not_found(message: str, param: str | None = None) -> ApiError:
    return ApiError(404, message, param=param, code="not_found")
