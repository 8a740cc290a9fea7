"""A streaming chat request through the openai client, without its parameter transformation.

``client.chat.completions.with_streaming_response.create`` first walks the whole request through the typed
``CompletionCreateParams`` (``async_maybe_transform``): for our messages, which are plain JSON already, it
changes nothing, and it was 46% of the request's set-up under cProfile. ``streaming_request`` sends the same
body through the same client, the same way ``create`` does (``client.request`` with the options ``post``
builds, built once here, and the same cast, stream class and raw-stream header of ``with_streaming_response``):
the client still builds the request, authenticates it, raises its errors and owns the connection, at less than
half of ``create``'s CPU (``bench/request_setup.py``; docs/PERFORMANCE.md, "Request set-up"). The request is
tested to be what ``create`` sends: method, address, headers and JSON body (tests/unit/test_request.py).

It reaches into five of the client's private names; when a version lacks one of them, ``create`` is used.
"""
from __future__ import annotations

import inspect

import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

try:
    from openai._base_client import make_request_options, openapi_dumps
    from openai._compat import model_copy
    from openai._constants import RAW_RESPONSE_HEADER
    from openai._models import FinalRequestOptions
    from openai._response import AsyncResponseContextManager
except ImportError:  # pragma: no cover - a client version without them: the typed path
    make_request_options = None

# the options ``create`` passes; ``security`` names the bearer auth in the clients that have it
_OPTIONS = {}
_TEMPLATE = None
if make_request_options is not None:
    _OPTIONS = {"extra_headers": {RAW_RESPONSE_HEADER: "stream"}}
    if "security" in inspect.signature(make_request_options).parameters:
        _OPTIONS["security"] = {"bearer_auth": True}
    # What ``client.post`` builds for every request, built once (its pydantic construction deep-copies each field's
    # default; docs/PERFORMANCE.md, "Request set-up"). A request copies it and sets its body; ``client.request``
    # copies the options again before it uses them, as it does after ``post``.
    _TEMPLATE = FinalRequestOptions.construct(method="post", url="/chat/completions", json_data=None,
                                              **make_request_options(**_OPTIONS))

FAST = make_request_options is not None
# the client's auth headers for a request's security, which the template's kind needs
TEMPLATED = FAST and "security" in inspect.signature(openai.AsyncOpenAI._auth_headers).parameters


class AsyncOpenAI(openai.AsyncOpenAI):
    """The openai client, building each chat request from the one before it: every request the generator makes
    has the same method, address and headers, and only its body differs, so the client's ``_build_request``
    (its headers merged into httpx's, the address joined and parsed twice, the client's defaults merged again)
    runs once per kind of request, and a request after it is the same request with its own body. Anything
    else (another path, query parameters, files, a changed key: the key's headers are part of the kind) goes
    through the client's own. The request is tested equal to the client's own, header for header
    (tests/unit/test_request.py). A third of the client's cost (docs/PERFORMANCE.md, "Request set-up")."""

    _templates: dict | None = None  # per client; the class's name is the client's, as its user agent says

    def _build_request(self, options, *, retries_taken: int = 0) -> httpx2.Request:
        body = options.json_data
        if (not TEMPLATED or type(body) is not dict or options.extra_json is not None or options.files is not None
                or options.content is not None or options.params or self._client.cookies):
            return super()._build_request(options, retries_taken=retries_taken)
        kind = (options.method, options.url, retries_taken, repr(options.timeout),
                tuple((options.headers or {}).items()), tuple(self._auth_headers(options.security).items()))
        if self._templates is None:
            self._templates = {}
        template = self._templates.get(kind)
        if template is None:
            made = super()._build_request(options, retries_taken=retries_taken)
            # without what httpx adds for a body (put back, in the same places, for the next one's)
            headers = [(k, v) for k, v in made.headers.raw if k.lower() not in (b"host", b"content-length")]
            self._templates[kind] = (made.method, made.url, headers, made.extensions)
            return made
        method, url, headers, extensions = template
        return httpx2.Request(method, url, headers=headers, content=openapi_dumps(body), extensions=dict(extensions))


def request_body(model: str, messages: list, params: dict | None, stream: bool, include_usage: bool) -> dict:
    """The JSON body of a chat request: what ``create(model, messages, stream, stream_options,
    extra_body=params)`` sends."""
    body = {"model": model, "messages": messages, "stream": stream}
    if stream and include_usage:
        body["stream_options"] = {"include_usage": True}
    if params:
        body.update(params)
    return body


def streaming_request(client: openai.AsyncOpenAI, body: dict):
    """An async context manager of the raw streaming response, as ``with_streaming_response.create`` gives."""
    if not FAST:
        args = {k: v for k, v in body.items() if k in ("model", "messages", "stream", "stream_options")}
        extra = {k: v for k, v in body.items() if k not in args}
        return client.chat.completions.with_streaming_response.create(**args, extra_body=extra or None)
    options = model_copy(_TEMPLATE)
    options.json_data = body
    return AsyncResponseContextManager(client.request(
        ChatCompletion, options, stream=True, stream_cls=openai.AsyncStream[ChatCompletionChunk]))
