"""The mock LLM as the server of load tests: a burst of clients connecting at once is held by the kernel until
the mock accepts them. The mock alone, a real process and real sockets."""
from __future__ import annotations

import os
import select
import signal
import socket
import time

from tools.spawn import LocalStack


def test_a_burst_of_connects_is_held_by_the_listen_queue_until_the_mock_accepts(tmp_path):
    """A mock too busy to accept (here: stopped) still has the kernel complete and hold a burst of connects, up
    to its listen backlog. aiohttp's default of 128 dropped the rest of a thousand clients connecting at once
    (the bench's peer: connect timeouts); now all 600 here are held, and answered once it runs again."""
    stack = LocalStack(tmp_path)
    socks: list[socket.socket] = []
    try:
        stack.start("mock_llm")
        pid = stack.pids()["mock_llm"]
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(600):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", stack.port))
                socks.append(sock)
            poller = select.poll()
            for sock in socks:
                poller.register(sock, select.POLLOUT)
            connected: set[int] = set()
            deadline = time.monotonic() + 10
            while len(connected) < len(socks) and time.monotonic() < deadline:
                for fd, _ in poller.poll(200):
                    poller.unregister(fd)
                    connected.add(fd)
            errors = [sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) for sock in socks]
            assert len(connected) == len(socks) and not any(errors), (len(connected), set(errors))
        finally:
            os.kill(pid, signal.SIGCONT)
        for sock in socks[::50]:  # once it runs again, each is a connection it serves
            sock.setblocking(True)
            sock.settimeout(10)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for sock in socks:
            sock.close()
        stack.stop()
