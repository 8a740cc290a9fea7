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
