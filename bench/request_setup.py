"""The openai client's cost of a streaming request: ``with_streaming_response.create`` (its typed parameter
transformation first) against ``services.generator.request.streaming_request`` (the same request without it),
each N requests of a 1-token reply to the mock, alternating, in one run. CPU seconds of this process per
request, set-up and the short stream included. Writes bench/request_setup.json.

    python bench/request_setup.py [N] [ROUNDS]
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx2  # noqa: E402
import openai  # noqa: E402

from services.generator.__main__ import make_http_client  # noqa: E402
from services.generator.request import request_body, streaming_request  # noqa: E402
from tools.spawn import REPO, free_port  # noqa: E402

# a prompt of a few turns, as a session's second or third reply sends
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there " * 20},
            {"role": "assistant", "content": "hi " * 50}, {"role": "user", "content": "and more"}]


async def measure(base_url: str, n: int, how: str) -> float:
    timeout = httpx2.Timeout(connect=5.0, read=None, write=60, pool=60)
    client = openai.AsyncOpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=timeout,
                                http_client=make_http_client(timeout))

    async def one() -> None:
        if how == "create":
            request = client.chat.completions.with_streaming_response.create(
                model="mock-1", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
                extra_body={"temperature": 0.5})
        else:
            request = streaming_request(client, request_body("mock-1", MESSAGES, {"temperature": 0.5}, True, True))
        async with request as response:
            async for _ in response.iter_bytes():
                pass

    await one()  # connections and imports warm
    start = time.process_time()
    await asyncio.gather(*(one() for _ in range(n)))
    spent = time.process_time() - start
    await client.close()
    return spent / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    port = free_port()
    env = os.environ | {"CHATTER_MOCK_PORT": str(port), "CHATTER_MOCK_TOKENS": "1", "CHATTER_MOCK_TTFT_MS": "0"}
    mock = subprocess.Popen([sys.executable, "-m", "services.mock_llm"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx2.get(f"http://127.0.0.1:{port}/health", timeout=0.5)
                break
            except httpx2.HTTPError:
                time.sleep(0.1)
        figures: dict[str, list[float]] = {"create": [], "fast": []}
        for _ in range(rounds):
            for how in figures:
                figures[how].append(round(asyncio.run(measure(f"http://127.0.0.1:{port}/v1", n, how)), 1))
    finally:
        mock.terminate()
        mock.wait()
    result = {"requests_per_round": n, "cpu_us_per_request": figures, "openai": openai.__version__,
              "fast_over_create": round(min(figures["fast"]) / min(figures["create"]), 3),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (Path(__file__).parent / "request_setup.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
