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
    with pytest.raises(PermissionError):
        transport.run_dir()


def test_endpoints_can_be_tcp(monkeypatch):
    monkeypatch.setenv("CHATTER_ENDPOINT_GEN_EVENTS", "tcp://127.0.0.1:5999")
    assert transport.endpoint(transport.GEN_EVENTS) == "tcp://127.0.0.1:5999"
    monkeypatch.setenv("CHATTER_ENDPOINT_JOBS", "http://nope")
    with pytest.raises(ValueError):
        transport.endpoint(transport.JOBS)
