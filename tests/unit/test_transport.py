from __future__ import annotations

import os
import stat

import pytest

from protocol import transport


def test_run_dir_is_created_private(tmp_path, monkeypatch):
    path = tmp_path / "run"
    monkeypatch.setenv("CHATTER_RUN_DIR", str(path))
    assert transport.run_dir() == str(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert transport.endpoint(transport.RPC) == f"ipc://{path}/rpc.sock"


def test_a_run_dir_others_can_reach_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "open"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    monkeypatch.setenv("CHATTER_RUN_DIR", str(path))
    with pytest.raises(transport.SetupError):
        transport.run_dir()


def test_endpoints_can_be_tcp(monkeypatch):
    monkeypatch.setenv("CHATTER_ENDPOINT_GEN_EVENTS", "tcp://127.0.0.1:5999")
    assert transport.endpoint(transport.GEN_EVENTS) == "tcp://127.0.0.1:5999"
    monkeypatch.setenv("CHATTER_ENDPOINT_JOBS", "http://nope")
    with pytest.raises(transport.SetupError):
        transport.endpoint(transport.JOBS)


def test_a_subscriber_gets_only_its_topic_in_one_frame_and_a_longer_id_never_matches(tmp_path):
    import time

    import zmq

    from protocol import codec, messages as m

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    sub = ctx.socket(zmq.SUB)
    try:
        pub.bind(f"ipc://{tmp_path}/t.sock")
        sub.connect(f"ipc://{tmp_path}/t.sock")
        sub.setsockopt(zmq.SUBSCRIBE, transport.topic_prefix("abc"))
        got: list = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:  # a subscription takes a moment to reach the publisher
            for session in ("abcd", "ab", "abc"):
                pub.send(transport.published(session, m.OrphansInterrupted(len(session)).encode()))
            while sub.poll(100):
                got.append(codec.decode(transport.payload_of(sub.recv()), (m.OrphansInterrupted,)))
        # only "abc" came through: "abcd" and "ab" were filtered out, whatever the timing
        assert got and all(msg == m.OrphansInterrupted(3) for msg in got)
    finally:
        pub.close(0)
        sub.close(0)
        ctx.term()


def test_a_frame_without_a_topic_end_is_rejected_as_a_bad_frame():
    from protocol import codec, messages as m

    with pytest.raises(codec.FrameError):
        codec.decode(transport.payload_of(b"no-topic-end"), m.STREAM_EVENTS)
