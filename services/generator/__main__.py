"""The generator process's shell: pulls jobs when it has capacity, runs each as a task that streams it from the
upstream (``upstream.py``), and carries out what its machine (``machine.py``) decides: the events for the
coordinator, in order, and the streams to stop.

A cancel on the control channel stops the job's stream at once: its upstream connection is shut down in the
callback that reads the cancel (and by a thread of its own while the loop is busy), then its task is cancelled.
Streams go on through a coordinator outage of up to CHATTER_COORDINATOR_SILENT_MS, their events held (bounded).
"""
from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import uuid

import zmq
import zmq.asyncio

from protocol import codec, messages as m
import transport
from services import config, pacing, shell
from services.generator.machine import GeneratorMachine, Log, Stop
from services.generator.rules import Generation, JobFailed
from services.generator.upstream import MODEL_ERRORS, Upstream, shut_down
from services.logs import redact
from services.tokens import count_tokens

JOBS_PER_TURN = 16  # jobs started in one turn of the event loop, at most
# How long the loop's thread may hold the interpreter's lock while the stopper thread waits for it (Python's
# default: 5 ms). Only a waiting thread makes the loop let go, and the stopper waits only when a cancel or a
# heartbeat came. Measured: docs/PERFORMANCE.md, "Cancel latency" (bench/switch_interval.py).
SWITCH_INTERVAL_S = 0.001
UNSENT_MAX_FRAMES = 100_000  # events held while the coordinator is away; past it the oldest go (a catch-up
# after its restart resends the text they carried)
CONTROL_MESSAGES = (m.CancelGeneration, m.CoordinatorHeartbeat, m.ResumeGeneration)


class GeneratorShell:
    def __init__(self) -> None:
        self.log = shell.start("generator")
        self.settings = settings = config.GeneratorSettings.from_env()
        generator_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.machine = GeneratorMachine(generator_id, settings.concurrency, settings.think_tags,
                                        settings.coordinator_silent_ms / 1000, count_tokens, time.monotonic(),
                                        os.getpid())
        self.upstream = Upstream(settings, settings.concurrency)
        self.ctx = zmq.asyncio.Context()
        self.jobs = transport.open_socket(self.ctx, transport.JOBS, bind=False)
        # A plain socket: a non-blocking send costs a few µs, where an awaited zmq.asyncio send cost ~18%
        # of this process under load (py-spy). Events are batched per event-loop turn, in order.
        self.sync_ctx = zmq.Context()
        self.events = transport.open_socket(self.sync_ctx, transport.GEN_EVENTS, bind=False)
        self.outbox = transport.Outbox(self.events, UNSENT_MAX_FRAMES)  # held while the coordinator's queue is full
        self.refusals = shell.RefusalWatch(self.log, self.events, transport.GEN_EVENTS)
        # read inside its descriptor's callback (``on_control``): a cancel acts in the loop turn it arrives in
        self.control = transport.open_socket(self.sync_ctx, transport.CONTROL, bind=False,
                                             subscribe=m.CONTROL_TOPIC_ALL)
        self.bad_frames = shell.BadFrames(self.log)
        self.tasks: dict[str, asyncio.Task] = {}
        self.flush_scheduled = False
        self.capacity = asyncio.Semaphore(settings.concurrency)
        self.stop = asyncio.Event()
        count_tokens("warm up", settings.default_model)  # load the encoding now, not on the first token

    # ------------------------------------------------------------ effects

    def carry_out(self, effects: list) -> None:
        for effect in effects:
            if type(effect) is Stop:
                self.stop_now(effect.generation_id)
            elif type(effect) is Log:
                getattr(self.log, effect.level)(effect.event, **effect.fields)
            else:
                try:
                    self.outbox.put(effect.encode())
                except codec.FrameTooLarge as exc:  # a bug: texts are cut to fit; it fails alone
                    self.log.error("frame_too_large", message=type(effect).__name__, bytes=exc.size,
                                   limit=codec.MAX_FRAME_BYTES)

    def flush_soon(self) -> None:
        """The deltas gathered in this turn go in one batch, after this turn's other chunks."""
        if self.machine.pending and not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        self.carry_out(self.machine.flush())

    def stop_now(self, generation_id: str) -> None:
        """Its upstream connection shut down in this callback, then its task cancelled, which ends the response."""
        self.upstream.stop(generation_id)
        task = self.tasks.get(generation_id)
        if task is not None:
            task.cancel()

    # ------------------------------------------------------------ inputs

    async def pull_jobs(self) -> None:
        taken = 0
        while True:
            await self.capacity.acquire()  # no free slot: leave jobs with the coordinator
            try:
                frames = await self.jobs.recv_multipart()
            except BaseException:
                self.capacity.release()
                raise
            try:
                job = m.job_of(frames)  # one frame, or a long prompt's several
            except codec.FrameError as err:
                self.capacity.release()
                self.bad_frames.drop("jobs", err)
                continue
            gen = self.machine.take_job(job, time.monotonic())
            if gen is None:
                self.capacity.release()
                continue
            self.tasks[job.generation_id] = asyncio.create_task(self.run_job(gen))
            taken += 1
            if taken % JOBS_PER_TURN == 0:
                # a queue of jobs is otherwise taken in one step, and their request set-ups (~1 ms each) all
                # run before the loop polls its sockets again, a cancel waiting behind them
                # (docs/PERFORMANCE.md, "Cancels during a burst")
                await asyncio.sleep(0)

    def on_control(self) -> None:
        """Every frame the control channel holds, handled at once. Its descriptor is edge-triggered: it is
        drained to the end each time it signals. A cancel through a zmq.asyncio receive took three loop turns
        (the descriptor, the future, the task) before it reached its task: at 1000 streams, tens of ms
        (docs/PERFORMANCE.md, "Cancel latency")."""
        while (frame := transport.take_one(self.control)) is not None:
            try:
                msg = shell.decode_published(frame, CONTROL_MESSAGES, "control", self.bad_frames)
                if msg is not None:
                    self.carry_out(self.machine.control(msg, time.monotonic()))
            except Exception:  # a bug costs this frame, never the channel
                self.log.exception("control_frame_failed")

    def stop_at_once(self) -> None:
        """The stopper thread: a subscription of its own to the control channel, so that a cancel shuts its
        upstream connection down while the event loop is still busy with its turn. Under a burst one turn
        runs for tens of ms; this thread waits for the interpreter's lock at most its switch interval. It only
        marks the generation stopped and shuts the socket down (a system call, safe from any thread); the loop
        reads the same cancel and does the rest. Measured: docs/PERFORMANCE.md, "Cancel latency"."""
        control = transport.open_socket(self.sync_ctx, transport.CONTROL, bind=False, subscribe=m.CONTROL_TOPIC_ALL)
        try:
            while True:
                frame = control.recv()
                try:
                    msg = codec.decode(transport.payload_of(frame), (m.CancelGeneration,))
                except codec.FrameError:
                    continue  # a heartbeat, a resume or a bad frame: the loop's to read
                gen = self.machine.live.get(msg.generation_id)
                connection = self.upstream.connections.get(msg.generation_id)
                if gen is not None and connection is not None:
                    gen.stopped = True  # first: the connection's end is the stop's, never retried
                    shut_down(connection)
        except zmq.ContextTerminated:
            pass
        finally:
            control.close(0)

    async def learn_contexts(self) -> None:
        """The models' context lengths, where the server tells them, now and every minute; the coordinator
        budgets prompts by them when a session sets no budget of its own."""
        while True:
            try:
                found, server = await self.upstream.models()
                if found != self.machine.contexts or server != self.machine.server:
                    self.log.info("model_contexts", contexts=found, server=server)
                self.machine.contexts, self.machine.server = found, server
            except MODEL_ERRORS as exc:
                self.log.debug("model_contexts_unknown", error=shell.plain_error(exc))  # not every server says
            await asyncio.sleep(60)

    async def heartbeat(self) -> None:
        while True:
            self.carry_out(self.machine.tick(time.monotonic()))
            self.outbox.flush()  # what the coordinator had no room for goes now, in order
            if self.outbox.dropped:
                self.log.warning("events_dropped", count=self.outbox.dropped, held=len(self.outbox))
                self.outbox.dropped = 0
            self.refusals.check()
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------ one job

    async def run_job(self, gen: Generation) -> None:
        generation_id = gen.job.generation_id
        log = self.log.bind(generation_id=generation_id)
        try:
            self.carry_out(self.machine.started(gen))
            await self.upstream.run(gen, self.on_chunk, self.on_retry)
            self.carry_out(self.machine.completed(gen, time.monotonic(), time.time()))
            log.info("generation_done", seq=gen.seq, length=gen.length, reasoning_length=gen.reasoning_length,
                     attempts=gen.attempts)
        except asyncio.CancelledError:
            self.carry_out(self.machine.cancelled(gen))
            log.info("generation_cancelled", seq=gen.seq)
        except JobFailed as exc:
            self.carry_out(self.machine.failed(gen, redact(str(exc)), time.monotonic(), time.time()))
            log.warning("generation_failed", reason=str(exc), seq=gen.seq)
        except Exception as exc:  # a bug must end this generation, never the process
            # the reason is stored and shown: a type and plain words, never a repr (it may hold the key)
            self.carry_out(self.machine.crashed(gen, f"{type(exc).__name__}: {shell.plain_error(exc)}"))
            log.exception("generation_crashed")
        finally:
            self.machine.finished(generation_id)
            self.tasks.pop(generation_id, None)
            self.capacity.release()

    def on_chunk(self, gen: Generation, event) -> None:
        self.carry_out(self.machine.chunk(gen, event, time.time()))
        self.flush_soon()

    def on_retry(self) -> None:
        self.machine.retries += 1

    # ------------------------------------------------------------ life

    def run(self) -> None:
        period = self.settings.wake_ms / 1000  # CHATTER_WAKE_MS: see pacing.Pacer
        # a cancel or a new job ends the pacer's sleep; a stream waiting for its first token keeps it from sleeping
        selector = pacing.PacedSelector(period, urgent=pacing.WakeOnMessage(self.control, self.jobs),
                                        hurry=self.machine.first_token_awaited)
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
            runner.run(self.main())

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        shell.on_stop_signals(self.stop.set, loop)
        workers = [asyncio.create_task(c) for c in (self.pull_jobs(), self.heartbeat(), self.learn_contexts())]
        loop.add_reader(self.control.FD, self.on_control)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        threading.Thread(target=self.stop_at_once, name="generator-stopper", daemon=True).start()
        self.on_control()  # what came before the reader was added does not signal again
        shell.freeze_startup_heap()
        self.log.info("generator_ready", generator_id=self.machine.generator_id, upstream=self.settings.base_url,
                      concurrency=self.settings.concurrency, streaming=self.settings.streaming)
        await self.stop.wait()
        for task in list(self.tasks.values()):
            task.cancel()  # close every upstream response before leaving
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=2)
        loop.remove_reader(self.control.FD)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await self.upstream.close()
        self.flush()
        self.refusals.close()
        for sock in (self.jobs, self.events, self.control):
            sock.close(0)
        self.ctx.term()
        self.sync_ctx.term()
        self.log.info("generator_stopped")


def main() -> None:
    shell.main("generator", GeneratorShell)


if __name__ == "__main__":
    main()
