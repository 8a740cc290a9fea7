from __future__ import annotations

import pytest

from tests.integration.stack import Stack


def _stack(tmp_path_factory, request, **env):
    stack = Stack(tmp_path_factory.mktemp("stack"), **env)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    yield stack
    codes = stack.stop()
    if request.session.testsfailed:  # leave the evidence in the test output
        for name in ("coordinator", "generator", "persister", "mock_llm"):
            print(f"----- {name} log (tail)\n{stack.log(name)[-3000:]}")
    return codes


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request):
    yield from _stack(tmp_path_factory, request, CHATTER_RETRY_DEADLINE_MS="2000")


@pytest.fixture
def fresh_stack(tmp_path_factory, request):
    """A stack of its own, for tests that kill or reconfigure processes."""
    def start(**env):
        gen = _stack(tmp_path_factory, request, **env)
        started.append(gen)
        return next(gen)

    started: list = []
    yield start
    for gen in started:
        next(gen, None)


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL server for the whole run, started on first use (``postgres_server()``); a test
    that needs one and cannot have it skips, saying why."""
    from tools.pgserver import PostgresServer, PostgresUnavailable
    started: list = []

    def get():
        if not started:
            try:
                started.append(PostgresServer().start())
            except PostgresUnavailable as exc:
                started.append(exc)
        if isinstance(started[0], Exception):
            pytest.skip(f"no PostgreSQL server can be started here: {started[0]}")
        return started[0]

    yield get
    if started and not isinstance(started[0], Exception):
        started[0].stop()
