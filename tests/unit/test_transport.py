from __future__ import annotations

import os
import stat

import pytest

import transport


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
                pub.send(transport.published(session, m.OrphansInterrupted(len(session), session).encode()))
            while sub.poll(100):
                got.append(codec.decode(transport.payload_of(sub.recv()), (m.OrphansInterrupted,)))
        # only "abc" came through: "abcd" and "ab" were filtered out, whatever the timing
        assert got and all(msg == m.OrphansInterrupted(3, "abc") for msg in got)
    finally:
        pub.close(0)
        sub.close(0)
        ctx.term()


def test_a_frame_without_a_topic_end_is_rejected_as_a_bad_frame():
    from protocol import codec, messages as m

    with pytest.raises(codec.FrameError):
        codec.decode(transport.payload_of(b"no-topic-end"), m.STREAM_EVENTS)


def test_one_address_puts_the_channels_on_consecutive_ports_in_the_documented_order(monkeypatch):
    monkeypatch.setenv("CHATTER_COORDINATOR", "tcp://10.0.0.5:7000")
    names = [channel.name for channel in transport.CHANNELS]
    assert names == ["rpc", "stream", "jobs", "gen-events", "control", "persist", "persist-acks"]
    assert [transport.endpoint(c) for c in transport.CHANNELS] == [f"tcp://10.0.0.5:{7000 + i}" for i in range(7)]
    monkeypatch.setenv("CHATTER_ENDPOINT_JOBS", "tcp://10.0.0.9:9000")  # a channel's own setting still wins
    assert transport.endpoint(transport.JOBS) == "tcp://10.0.0.9:9000"
    monkeypatch.setenv("CHATTER_COORDINATOR", "tcp://[::1]:7000")
    assert transport.endpoint(transport.STREAM) == "tcp://[::1]:7001"


@pytest.mark.parametrize("value", ["10.0.0.5:7000", "tcp://10.0.0.5", "tcp://10.0.0.5:0", "tcp://10.0.0.5:65530",
                                   "ipc:///tmp/x", "tcp://host name:7000", "tcp://10.0.0.5:7000/x"])
def test_a_bad_coordinator_address_is_refused_in_words(value, monkeypatch):
    monkeypatch.setenv("CHATTER_COORDINATOR", value)
    with pytest.raises(transport.SetupError, match="CHATTER_COORDINATOR must be tcp://HOST:PORT"):
        transport.endpoint(transport.RPC)


@pytest.mark.parametrize("address, loopback", [("tcp://127.0.0.1:1", True), ("tcp://127.9.9.9:1", True),
                                               ("tcp://localhost:1", True), ("tcp://[::1]:1", True),
                                               ("tcp://0.0.0.0:1", False), ("tcp://*:1", False),
                                               ("tcp://10.0.0.1:1", False), ("tcp://eth0:1", False),
                                               ("tcp://example.org:1", False)])
def test_only_loopback_addresses_count_as_this_host_only(address, loopback):
    assert transport.is_loopback(address) is loopback


def test_a_coordinator_will_not_bind_beyond_loopback_without_keys(tmp_path, monkeypatch):
    import zmq
    monkeypatch.setenv("CHATTER_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("CHATTER_COORDINATOR", "tcp://0.0.0.0:7000")
    monkeypatch.delenv("CHATTER_INSECURE_TCP", raising=False)
    ctx = zmq.Context()
    try:
        with pytest.raises(transport.SetupError, match="chatter keys new coordinator"):
            transport.open_socket(ctx, transport.RPC, bind=True)
    finally:
        ctx.term()
