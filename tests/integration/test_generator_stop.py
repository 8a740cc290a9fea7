"""A stop closes the upstream connection at once, and a connection closed by a stop is never retried.

The generator's shell runs in this process against the real mock LLM; a socket bound where the coordinator
publishes its control channel sends the cancel, as the persister's shell tests stand in for the coordinator.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
import zmq

from protocol import messages as m
import transport
from services.generator.__main__ import GeneratorShell
from services.generator.upstream import shut_down
from services.generator.rules import Generation
from tests.integration.stack import Stack


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("mock"))
    stack.start("mock_llm")
    yield stack
    stack.stop()


@pytest.fixture
def generator(mock, tmp_path, monkeypatch):
    monkeypatch.setenv("CHATTER_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("OPENAI_BASE_URL", mock.env["OPENAI_BASE_URL"])
    monkeypatch.setenv("CHATTER_RETRY_DEADLINE_MS", "5000")
    umask = os.umask(0)
    os.umask(umask)
    shell = GeneratorShell()
    yield shell
    for sock in (shell.jobs, shell.events, shell.control):
        sock.close(0)
    shell.ctx.term()
    shell.sync_ctx.term()
    os.umask(umask)  # the shell made this process's files private; the rest of the suite keeps its own


def run_in_loop(shell: GeneratorShell, body) -> object:
    """``body()`` in an event loop, and the shell's upstream clients closed in it after."""
    async def run():
        try:
            return await body()
        finally:
            await shell.upstream.close()
    return asyncio.run(run())


def job(text: str) -> m.Job:
    return m.Job(f"g-{time.monotonic_ns()}", [{"role": "user", "content": text}], "mock-1", {}, "hash")


def requests_for(mock, text: str) -> list[dict]:
    return [e for e in mock.journal() if e["body"]["messages"][-1]["content"] == text]


async def started(shell: GeneratorShell, gen: Generation, tokens: int = 0) -> asyncio.Task:
    """The generation's stream, begun: its connection known to the shell and ``tokens`` deltas taken."""
    task = asyncio.create_task(shell.upstream.run(gen, shell.on_chunk, shell.on_retry))
    deadline = time.monotonic() + 10
    while gen.job.generation_id not in shell.upstream.connections or gen.emitted < tokens:
        assert time.monotonic() < deadline and not task.done(), "the stream never began"
        await asyncio.sleep(0.01)
    return task


@pytest.mark.parametrize("tokens", [0, 3], ids=["before-the-first-token", "mid-stream"])
def test_a_connection_closed_by_a_stop_ends_the_generation_as_cancelled_and_is_never_retried(mock, generator,
                                                                                          tokens):
    """What the stopper thread does, alone (the task is not cancelled): the stream ends as a stop, where the
    same closed connection would be retried before the first token and an error after it."""
    text = f"stop me {tokens} [[mock tokens=200 tps=20 ttft_ms={100 if tokens else 60000}]]"

    async def run():
        gen = generator.machine.take_job(job(text), time.monotonic())
        task = await started(generator, gen, tokens)
        gen.stopped = True
        shut_down(generator.upstream.connections[gen.job.generation_id])
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        return gen
    gen = run_in_loop(generator, run)
    assert gen.attempts == 1 and generator.machine.retries == 0
    time.sleep(0.3)  # a retry, were there one, would reach the mock by now
    entries = requests_for(mock, text)
    assert len(entries) == 1 and entries[0]["client_closed"] and not entries[0]["completed"]
    assert entries[0]["chunks_sent"] < 200


def test_the_stopper_thread_closes_the_upstream_connection_while_the_loop_is_busy(mock, generator):
    """A cancel on the control channel closes the connection from the stopper thread while the event loop
    is blocked (here, sleeping in a callback): the mock sees its client gone before the loop turns again."""
    text = "stop me while busy [[mock tokens=200 tps=20]]"
    ctx = zmq.Context()
    control = transport.open_socket(ctx, transport.CONTROL, bind=True)  # where the coordinator publishes
    stopper = None
    try:
        async def run():
            nonlocal stopper
            stopper = threading.Thread(target=generator.stop_at_once, daemon=True)
            stopper.start()
            gen = generator.machine.take_job(job(text), time.monotonic())
            task = await started(generator, gen, 2)
            await asyncio.sleep(0.3)  # the thread's subscription is through
            control.send(transport.published(gen.job.generation_id, m.CancelGeneration(gen.job.generation_id).encode()))
            deadline = time.monotonic() + 5
            while not requests_for(mock, text)[0]["client_closed"]:  # the loop does not turn meanwhile
                assert time.monotonic() < deadline, "the upstream connection stayed open"
                time.sleep(0.02)
            assert gen.stopped
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        run_in_loop(generator, run)
    finally:
        control.close(0)
        ctx.term()
    entry = requests_for(mock, text)[0]
    assert entry["client_closed"] and not entry["completed"] and entry["chunks_sent"] < 200
    assert len(requests_for(mock, text)) == 1
