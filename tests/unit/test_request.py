"""The generator's streaming request (services/generator/request.py) is what the openai client's own
``with_streaming_response.create`` sends: the same method, address, headers that matter and JSON body, read
off a mock transport (no network)."""
from __future__ import annotations

import asyncio
import json

import httpx2
import openai
import pytest

from services.generator import request as fast

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "café 🙂 \n\"quoted\""},
            {"role": "assistant", "content": "so far", "prefix": True}]
PARAMS = {"temperature": 0.5, "max_tokens": 7, "continue_final_message": True, "add_generation_prompt": False}
SSE = b'data: {"choices": [{"delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'


def sent_requests(send) -> list[httpx2.Request]:
    seen: list[httpx2.Request] = []

    def handler(req: httpx2.Request) -> httpx2.Response:
        seen.append(req)
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=SSE)

    async def run():
        client = openai.AsyncOpenAI(base_url="http://upstream.test/v1", api_key="sk-test-key", max_retries=0,
                                    http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))
        async with send(client) as response:
            assert response.headers["content-type"] == "text/event-stream"
            body = b"".join([chunk async for chunk in response.iter_bytes()])
        await client.close()
        assert body == SSE
    asyncio.run(run())
    return seen


@pytest.mark.parametrize("include_usage", [True, False])
def test_the_fast_request_sends_what_create_sends(include_usage):
    typed = sent_requests(lambda client: client.chat.completions.with_streaming_response.create(
        model="m", messages=MESSAGES, stream=True, extra_body=PARAMS,
        **({"stream_options": {"include_usage": True}} if include_usage else {})))
    ours = sent_requests(lambda client: fast.streaming_request(
        client, fast.request_body("m", MESSAGES, PARAMS, True, include_usage)))
    assert fast.FAST  # this client version has what the fast path needs
    (a,), (b,) = typed, ours
    assert (a.method, str(a.url)) == (b.method, str(b.url)) == ("POST", "http://upstream.test/v1/chat/completions")
    assert json.loads(a.content) == json.loads(b.content)
    for header in ("authorization", "content-type", "accept", "x-stainless-raw-response"):
        assert a.headers.get(header) == b.headers.get(header), header
    assert b.headers["authorization"] == "Bearer sk-test-key"


def test_an_error_status_raises_the_clients_own_error():
    def handler(req):
        return httpx2.Response(401, json={"error": {"message": "Invalid API Key"}})

    async def run():
        client = openai.AsyncOpenAI(base_url="http://upstream.test/v1", api_key="k", max_retries=0,
                                    http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))
        try:
            with pytest.raises(openai.AuthenticationError):
                async with fast.streaming_request(client, fast.request_body("m", MESSAGES, None, True, True)):
                    pass
        finally:
            await client.close()
    asyncio.run(run())


def test_requests_from_the_shared_options_each_carry_their_own_body_and_key():
    """The options are built once (``request._TEMPLATE``): each request copies them, so no body or key leaks
    from one request into another, and the template is left as it was."""
    seen = []
    for key, text in (("sk-first", "one"), ("sk-second", "two")):
        messages = [{"role": "user", "content": text}]

        def send(client, messages=messages, key=key):
            client.api_key = key
            return fast.streaming_request(client, fast.request_body("m", messages, None, True, False))
        seen += sent_requests(send)
    assert [json.loads(r.content)["messages"][0]["content"] for r in seen] == ["one", "two"]
    assert [r.headers["authorization"] for r in seen] == ["Bearer sk-first", "Bearer sk-second"]
    assert fast._TEMPLATE.json_data is None


def test_the_templated_client_builds_each_request_as_the_client_itself_does():
    """``request.AsyncOpenAI`` builds the first request of a kind through the client and the rest from it: every
    one is what the client's own ``_build_request`` makes, byte for byte, whatever the body, and a changed key
    is a new kind."""
    assert fast.TEMPLATED  # this client version has what the template needs
    timeout = httpx2.Timeout(connect=5.0, read=None, write=60, pool=60)
    made = {}

    async def build():  # in a running loop, as the generator builds them (a header names the async library)
        for cls in (openai.AsyncOpenAI, fast.AsyncOpenAI):
            client = cls(base_url="http://upstream.test/v1", api_key="sk-one", max_retries=0, timeout=timeout,
                         http_client=httpx2.AsyncClient())
            out = made[cls] = []
            for i, (key, params) in enumerate([("sk-one", None), ("sk-one", PARAMS), ("sk-one", {"seed": 2**40}),
                                               ("sk-two", None), ("sk-two", {"temperature": 0.1}), ("sk-one", None)]):
                client.api_key = key
                messages = MESSAGES + [{"role": "user", "content": f"turn {i} " + "é" * i}]
                options = fast.model_copy(fast._TEMPLATE)
                options.json_data = fast.request_body("m", messages, params, True, i % 2 == 0)
                for retries in (0, 1):
                    out.append(client._build_request(options, retries_taken=retries))
            await client.close()
    asyncio.run(build())
    theirs, ours = made[openai.AsyncOpenAI], made[fast.AsyncOpenAI]
    assert len(ours) == 12 and len(fast.AsyncOpenAI._templates or {}) == 0  # kept per client, not per class
    for a, b in zip(theirs, ours):
        assert (a.method, str(a.url), a.headers.raw, a.content, a.extensions) == \
               (b.method, str(b.url), b.headers.raw, b.content, b.extensions)
    assert len({r.headers["authorization"] for r in ours}) == 2 and len({r.content for r in ours}) == 6


def test_the_templated_client_leaves_any_other_request_to_the_client():
    async def build():
        client = fast.AsyncOpenAI(base_url="http://upstream.test/v1", api_key="k", max_retries=0,
                                  http_client=httpx2.AsyncClient())
        options = fast.model_copy(fast._TEMPLATE)
        options.json_data, options.params = {"model": "m", "messages": []}, {"api-version": "1"}
        request = client._build_request(options)
        await client.close()
        return request, client._templates
    request, templates = asyncio.run(build())
    assert request.url.params["api-version"] == "1" and not templates
