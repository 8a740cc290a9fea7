"""The gateway under load and abuse, against real processes: ``chatter loadtest --http`` (SDK users, every stream
verified, some dropped and resumed); a client that stops reading neither slows another stream nor loses its own
text; and thousands of idle connections leave the gateway serving."""
from __future__ import annotations

import asyncio
import json
import resource
import socket
import subprocess
import sys

from services.mock_llm.script import reply_text
from tests.integration.test_gateway import MODEL, gateway, persisted, sdk  # noqa: F401 (gateway: a fixture)
from tools.spawn import REPO


def test_loadtest_over_http_verifies_every_stream_and_resumes_some(tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "clients.cli", "loadtest", "--http", "--spawn", "--streams", "8",
                           "--count", "12", "--tokens", "80", "--tps", "100", "--resume-frac", "0.5", "--json",
                           "--out", str(out)], cwd=REPO, capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    assert report == json.loads(out.read_text())
    assert (report["count"], report["completed"], report["mismatches"], report["errors"]) == (12, 12, 0, 0)
    assert report["resumed"] >= 1 and report["resume_latency_ms"]["n"] == report["resumed"]
    assert report["upstream_to_client_ms"]["n"] == 12 * 80  # every token's way from the mock to an SDK client
    assert report["gateway_cpu_us_per_token"] > 0 and "sdk_client.1" in report["cpu_us_per_token"]
    refused = subprocess.run([sys.executable, "-m", "clients.cli", "loadtest", "--http", "--spawn",
                              "--cancel-frac", "0.5"], cwd=REPO, capture_output=True, timeout=60)
    assert refused.returncode != 0 and b"--cancel-frac" in refused.stderr


def _raw_stream(port: int, token: str, text: str) -> socket.socket:
    """A streamed response asked for on a socket that will not be read for a while (a small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({"model": MODEL, "input": text, "stream": True, "background": True}).encode()
    sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def _read_all(sock: socket.socket) -> str:
    """The answer text of a chunked SSE response read to its end."""
    sock.settimeout(60)
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        more = sock.recv(1 << 16)
        assert more, "the connection closed before the response ended"
        data += more
    body, rest = b"", data.split(b"\r\n\r\n", 1)[1]
    while True:
        size, rest = rest.split(b"\r\n", 1)
        if int(size, 16) == 0:
            break
        body, rest = body + rest[:int(size, 16)], rest[int(size, 16) + 2:]
    text = ""
    for block in body.decode().split("\n\n"):
        data_line = next((line[6:] for line in block.splitlines() if line.startswith("data: ")), None)
        if data_line:
            event = json.loads(data_line)
            if event["type"] == "response.output_text.delta":
                text += event["delta"]
    return text


def test_a_client_that_stops_reading_slows_no_one_and_still_gets_its_whole_reply(gateway):
    slow_text = "a long one for a slow reader [[mock tokens=4000 tps=2000]]"
    slow = _raw_stream(gateway.http_port, gateway.token, slow_text)
    try:
        client = sdk(gateway)
        other = "meanwhile [[mock tokens=300 tps=300]]"
        events = list(client.responses.create(model=MODEL, input=other, stream=True))
        assert events[-1].type == "response.completed"  # done while the slow reader reads nothing
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == reply_text(
            [{"role": "user", "content": other}], MODEL, 300)
        got = _read_all(slow)
    finally:
        slow.close()
    expected = reply_text([{"role": "user", "content": slow_text}], MODEL, 4000)
    assert got == expected and len(got) > 10_000


def test_ten_thousand_idle_connections_leave_the_gateway_serving(gateway):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the gateway raises its own to its hard limit
    assert hard == resource.RLIM_INFINITY or hard >= 10_500, f"this machine allows {hard} open files a process"
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000) if hard != resource.RLIM_INFINITY else 20_000,
                                                hard))

    async def idle_then_ask():
        gate, idle = asyncio.Semaphore(200), []  # opened 200 at a time: one by one took 50 s here

        async def one() -> None:
            async with gate:
                idle.append((await asyncio.open_connection("127.0.0.1", gateway.http_port))[1])

        try:
            await asyncio.gather(*(one() for _ in range(10_000)))
            return await asyncio.to_thread(sdk(gateway).responses.create, model=MODEL,
                                           input="still here? [[mock tokens=5]]")
        finally:
            for writer in idle:
                writer.close()

    try:
        response = asyncio.run(idle_then_ask())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert response.status == "completed" and response.output_text == persisted(gateway, response.id)
    assert gateway.procs["gateway"].poll() is None
    assert "gateway_open_files" in gateway.log("gateway")
