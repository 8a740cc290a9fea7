"""``chatter chaos`` marks a fault recovered once every reply open at the kill moved on after it: by a delta read
upstream after the kill, by its end, or by what a snapshot brought (``tools/chaos.py: RecoveryWatch``, fed by
``tools/loadtest.py: LoadRun``)."""
from __future__ import annotations

import time

from clients.view import ReplyView
from protocol import messages as m
from protocol import answers
from tools.chaos import RecoveryWatch, Trial
from tools.loadtest import LoadRun, LoadSpec, UserStream


class _Rpc:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)


class _Client:
    """The load run's side of a client: its rpc socket and its subscriptions, recorded."""

    def __init__(self) -> None:
        self.rpc = _Rpc()
        self.unsubscribed: list[str] = []

    def unsubscribe(self, session_id: str) -> None:
        self.unsubscribed.append(session_id)


class _Supervisor:
    def __init__(self) -> None:
        self.trials: list[Trial] = []


def _run_with_open_stream():
    run = LoadRun(_Client(), LoadSpec(streams=1, count=1), "t")
    stream = UserStream(0, "hello", None, session_id="s1", generation_id="g1", message_id="a1")
    stream.view = ReplyView("g1")
    run.streams.append(stream)
    run.by_session["s1"] = stream
    supervisor = _Supervisor()
    watch = RecoveryWatch(run, supervisor)
    run.on_moved = watch.moved
    stream.view.apply(m.StreamDelta("s1", "g1", 0, "Hel", 1, time.time()))
    supervisor.trials.append(Trial("coordinator", time.time()))
    watch.tick(time.time())  # the kill: the open stream is waited for
    return run, stream, supervisor.trials[0]


def _snapshot(run, stream, text, final):
    run.on_snapshot(stream, m.Reply(1, True, answers.Snapshot("g1", "a1", "completed" if final else "streaming",
                                                               text, final, {})))


def test_a_reply_that_ends_in_a_snapshot_after_the_kill_recovers_its_trial():
    run, stream, trial = _run_with_open_stream()
    assert trial.waiting == {0} and trial.recovered_at is None
    _snapshot(run, stream, "Hel", False)  # nothing new: not moved on
    assert trial.recovered_at is None
    _snapshot(run, stream, "Hello", True)  # its Final went out while the client was away
    assert trial.recovered_at is not None and stream.ended_at is not None


def test_a_snapshot_with_more_text_moves_a_reply_on_and_a_delta_read_before_the_kill_does_not():
    run, stream, trial = _run_with_open_stream()
    run.apply(stream, m.StreamDelta("s1", "g1", 3, "l", 2, trial.killed_at - 1.0), time.time())
    assert trial.recovered_at is None  # read upstream before the kill
    _snapshot(run, stream, "Hello wor", False)
    assert trial.recovered_at is not None and stream.view.text == "Hello wor"
