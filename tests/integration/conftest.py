from __future__ import annotations

import pytest

from tests.integration.stack import Stack


@pytest.fixture(scope="module")
def database(request, postgres_server):
    """Where a test's stacks keep their data: a new database for each stack on the suite's PostgreSQL server
    when the module is parametrized with ``BOTH_DATABASES`` and this is its postgresql run, else each stack's
    own SQLite file (a URL of None)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return lambda: None
    server = postgres_server()
    return lambda: server.new_database("stack")


def _stack(tmp_path_factory, request, database_url=None, generators: int = 1, **env):
    if database_url:
        env["CHATTER_DATABASE_URL"] = database_url
    stack = Stack(tmp_path_factory.mktemp("stack"), generators, **env)
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
def stack(tmp_path_factory, request, database):
    yield from _stack(tmp_path_factory, request, database(), CHATTER_RETRY_DEADLINE_MS="2000")


@pytest.fixture
def fresh_stack(tmp_path_factory, request, database):
    """A stack of its own, for tests that kill or reconfigure processes."""
    def start(generators: int = 1, **env):
        gen = _stack(tmp_path_factory, request, database(), generators, **env)
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
