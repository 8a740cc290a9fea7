"""CURVE settings and key files: each mistake refused in one sentence naming its setting, a secret key
never readable by others, and keys that work on real sockets."""
from __future__ import annotations

import os
import stat

import pytest
import zmq

import transport
from transport import curve


@pytest.fixture
def keys(tmp_path):
    for name in ("coordinator", "client"):
        curve.new_keys(name, str(tmp_path))
    return tmp_path


def test_new_keys_are_zmq_auth_files_and_the_secret_is_private(keys):
    assert stat.S_IMODE(os.stat(keys / "client.key_secret").st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(str(keys / "client.key_secret"))
    assert (public, secret) != (None, None) and zmq.auth.load_certificate(str(keys / "client.key"))[0] == public
    with pytest.raises(FileExistsError):
        curve.new_keys("client", str(keys))
    with pytest.raises(ValueError):
        curve.new_keys("../elsewhere", str(keys))


def env(monkeypatch, **values):
    for name in ("CHATTER_CURVE_SECRET", "CHATTER_CURVE_SERVER", "CHATTER_CURVE_AUTHORIZED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))


def test_no_keys_is_no_curve_and_half_a_setting_is_refused(keys, monkeypatch):
    env(monkeypatch)
    assert curve.settings(coordinator=False) is None and curve.settings(coordinator=True) is None
    env(monkeypatch, CHATTER_CURVE_SERVER=keys / "coordinator.key")
    with pytest.raises(transport.SetupError, match="set CHATTER_CURVE_SECRET"):
        curve.settings(coordinator=False)
    env(monkeypatch, CHATTER_CURVE_SECRET=keys / "client.key_secret")
    with pytest.raises(transport.SetupError, match="not CHATTER_CURVE_SERVER"):
        curve.settings(coordinator=False)
    with pytest.raises(transport.SetupError, match="needs CHATTER_CURVE_AUTHORIZED"):
        curve.settings(coordinator=True)


def test_bad_key_files_are_refused_naming_the_setting(keys, tmp_path, monkeypatch):
    garbage = tmp_path / "garbage"
    garbage.write_text("no key here")
    cases = [(tmp_path / "missing", "CHATTER_CURVE_SECRET=.*no such file"),
             (garbage, "holds no CURVE key"),
             (keys / "client.key", "holds no secret key")]  # a public key where the secret is wanted
    for path, words in cases:
        env(monkeypatch, CHATTER_CURVE_SECRET=path, CHATTER_CURVE_SERVER=keys / "coordinator.key")
        with pytest.raises(transport.SetupError, match=words):
            curve.settings(coordinator=False)
    os.chmod(keys / "client.key_secret", 0o644)
    env(monkeypatch, CHATTER_CURVE_SECRET=keys / "client.key_secret", CHATTER_CURVE_SERVER=keys / "coordinator.key")
    with pytest.raises(transport.SetupError, match="chmod 600"):
        curve.settings(coordinator=False)


class Log:
    def __init__(self):
        self.lines = []

    def warning(self, event, **kw):
        self.lines.append((event, kw))

    info = error = warning


def test_authorized_keys_let_in_only_theirs_and_are_read_again_when_they_change(keys, tmp_path):
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    ctx = zmq.Context()
    log = Log()
    auth = curve.AuthorizedKeys(ctx, str(authorized), log)
    try:
        client_public = zmq.auth.load_certificate(str(keys / "client.key"))[0]
        assert not auth.callback("*", client_public) and auth.refused_keys == 1
        (authorized / "client.key").write_bytes((keys / "client.key").read_bytes())
        auth.reload_if_changed()
        assert auth.callback("*", client_public) and auth.refused_keys == 1
        (authorized / "broken.key").write_text("nothing")
        auth.reload_if_changed()  # one bad file is logged and skipped; the others stay in
        assert auth.callback("*", client_public)
        assert any(event == "authorized_key_unreadable" for event, _ in log.lines)
    finally:
        auth.stop()
        ctx.term()


def test_a_curve_pair_talks_and_a_stranger_or_a_plain_peer_is_refused_at_the_handshake(keys, tmp_path):
    """Real sockets on loopback: the keys as ``Keys.apply`` sets them, the ZAP handler as the coordinator runs it."""
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "client.key").write_bytes((keys / "client.key").read_bytes())
    curve.new_keys("stranger", str(tmp_path))
    ctx = zmq.Context()
    auth = curve.AuthorizedKeys(ctx, str(authorized), Log())
    server_public, server_secret = zmq.auth.load_certificate(str(keys / "coordinator.key_secret"))
    server = ctx.socket(zmq.ROUTER)
    curve.Keys(server_public, server_secret, None).apply(server, server=True)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    peers = []
    try:
        def peer(secret_file):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            if secret_file is not None:
                public, secret = zmq.auth.load_certificate(str(secret_file))
                curve.Keys(public, secret, server_public).apply(sock, server=False)
            monitor = curve.watch(sock)
            sock.connect(f"tcp://127.0.0.1:{port}")
            peers.append((sock, monitor))
            return sock, monitor

        good, _ = peer(keys / "client.key_secret")
        good.send(b"hello")
        assert server.poll(5000) and server.recv_multipart()[1] == b"hello"
        for secret_file, words in ((tmp_path / "stranger.key_secret", "not among its authorized keys"),
                                   (None, "one side uses CURVE")):
            _, monitor = peer(secret_file)
            assert monitor.poll(5000), "no handshake event"
            assert words in curve.refusal(monitor)
        assert auth.refused_keys >= 1
    finally:
        for sock, monitor in peers:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
        server.close(0)
        auth.stop()
        ctx.term()
