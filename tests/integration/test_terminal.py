"""The real ``chatter chat`` in a pseudo-terminal against a real stack, as a person would use it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pexpect

from tools.spawn import REPO

SESSION = re.compile(r"session ([0-9a-f]{32})")


def spawn_chat(stack, tmp_path, *args: str, env: dict | None = None) -> pexpect.spawn:
    child_env = stack.env | {"TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1",
                             "XDG_DATA_HOME": str(tmp_path), "COLUMNS": "120", "LINES": "40"} | (env or {})
    return pexpect.spawn(sys.executable, ["-m", "clients.cli", "chat", *args], cwd=str(REPO), env=child_env,
                         encoding="utf-8", dimensions=(40, 120), timeout=30)


def quit_at_the_prompt(chat: pexpect.spawn) -> None:
    """Ctrl+D once the prompt is drawn and waiting for keys."""
    chat.expect("›")
    chat.expect(r"\x1b\[\?25h")  # the cursor shown again: the prompt is drawn
    time.sleep(0.3)  # keys sent while prompt_toolkit still sets up a new prompt can be lost
    chat.sendcontrol("d")
    chat.expect(pexpect.EOF)


def test_chat_in_a_terminal(stack, tmp_path):
    chat = spawn_chat(stack, tmp_path)
    try:
        chat.expect(SESSION)
        first_session = chat.match.group(1)
        chat.expect("›")
        chat.sendline("hello there [[mock tokens=30 tps=60 ttft_ms=1500]]")
        chat.expect("Thinking")  # the stats bar, before the first token
        chat.expect(r"tokens \(estimated\) \| [0-9.]+s \| [0-9.–]+ tok/s \| TTFT \d+ ms")  # live
        chat.expect(r"30 tokens \(server\) \| [0-9.]+s \| [0-9.]+ tok/s \| TTFT [0-9.]+ ms \| ctx ~\d+/8192 "
                    r"\| completed")
        chat.expect("›")
        chat.sendline("a long one [[mock tokens=400 tps=20]]")
        chat.expect(r"tokens \(estimated\)")
        chat.sendcontrol("c")  # cancels the reply, not the chat
        chat.expect(r"\| cancelled")
        chat.expect("›")
        chat.sendline("still here [[mock tokens=5]]")
        chat.expect(r"\| completed")
        chat.expect("›")
        chat.sendline("/new")
        chat.expect(SESSION)
        second_session = chat.match.group(1)
        assert second_session != first_session
        chat.expect("›")
        chat.sendline(f"/switch {first_session[:10]}")
        chat.expect(f"session {first_session}")
        chat.expect(r"5 tokens \(server\).*\| completed")  # its last reply, final
        chat.expect("›")
        chat.sendline("/regenerate")
        chat.expect(r"5 tokens \(server\).*\| completed")
        chat.expect("›")
        chat.sendline("/tokens")
        chat.expect(r"context ~\d+/8192 tokens")
        quit_at_the_prompt(chat)
    finally:
        chat.close(force=True)
    assert chat.exitstatus == 0
    history = stack.cli_json("history", first_session)["messages"]
    replies = [(h["status"], h["sibling_index"], h["sibling_count"]) for h in history if h["role"] == "assistant"]
    assert replies == [("completed", 0, 1), ("cancelled", 0, 1), ("completed", 1, 2)]  # the regenerated one, 2/2
    tree = stack.cli_json("branches", first_session)["nodes"]
    assert [n["status"] for n in tree if n["role"] == "assistant"] == ["completed", "cancelled", "completed",
                                                                       "completed"]


def test_ctrl_c_at_the_prompt_clears_the_input_and_errors_show_plainly(stack, tmp_path):
    chat = spawn_chat(stack, tmp_path)
    try:
        chat.expect("›")
        chat.send("half typed")
        chat.sendcontrol("c")
        chat.expect("›")
        chat.sendline("/switch nope-nope")
        chat.expect("error: unknown session nope-nope")
        chat.sendline("/config temperature=9")
        chat.expect("error: bad setting temperature=9")
        chat.sendline("/config temperature=0.3 max_tokens=50 stream=off")
        chat.expect(r"temperature 0.3, max_tokens 50, stream off")
        chat.sendline("configured [[mock tokens=4]]")
        chat.expect(r"\| completed")
        quit_at_the_prompt(chat)
    finally:
        chat.close(force=True)
    body = [e for e in stack.journal() if "configured" in json.dumps(e["body"])][-1]["body"]
    assert body["temperature"] == 0.3 and body["max_tokens"] == 50 and body["stream"] is False
    assert "half typed" not in json.dumps(stack.journal())


def test_piped_output_carries_no_escape_codes(stack):
    sent = stack.cli("send", "plain please [[mock tokens=20]]")
    assert sent.returncode == 0
    assert b"\x1b" not in sent.stdout and b"\x1b" not in sent.stderr
    session = json.loads(stack.cli("sessions", "--json").stdout)[0]["session_id"]
    watched = stack.cli("watch", session, "--once")
    assert watched.returncode == 0 and b"\x1b" not in watched.stdout + watched.stderr
    assert watched.stdout == sent.stdout  # the same reply, the same plain text


def test_no_color_is_respected_on_a_terminal(stack, tmp_path):
    child = pexpect.spawn(sys.executable, ["-m", "clients.cli", "send", "colourless [[mock tokens=10]]"],
                          cwd=str(REPO), env=stack.env | {"TERM": "xterm-256color", "NO_COLOR": "1"},
                          encoding="utf-8", dimensions=(40, 120), timeout=30)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "completed" in child.before
    assert not re.search(r"\x1b\[[0-9;]*(3[0-9]|9[0-7]|38;)[0-9;]*m", child.before), "colour codes despite NO_COLOR"


def test_help_is_complete_for_every_command():
    commands = ["send", "chat", "watch", "regenerate", "continue", "sessions", "status", "history", "preview", "loadtest", "chaos", "gui"]
    top = subprocess.run([sys.executable, "-m", "clients.cli", "--help"], capture_output=True, text=True, cwd=REPO)
    for command in commands:
        assert command in top.stdout
        done = subprocess.run([sys.executable, "-m", "clients.cli", command, "--help"], capture_output=True,
                              text=True, cwd=REPO)
        assert done.returncode == 0 and "usage: chatter " + command in done.stdout


def test_input_history_persists_tab_completes_and_alt_enter_adds_a_line(stack, tmp_path):
    chat = spawn_chat(stack, tmp_path)
    try:
        chat.expect(SESSION)
        session_id = chat.match.group(1)
        chat.expect("›")
        chat.send("first line")
        chat.send("\x1b\r")  # Esc then Enter (what Alt+Enter sends): a new line, not a send
        chat.sendline("second line [[mock tokens=3]]")
        chat.expect(r"\| completed")
        chat.send("/rege")
        chat.send("\t")  # Tab completes the command
        chat.expect("nerate")  # the completion, drawn after what was typed
        chat.sendcontrol("c")  # clears the completed, unsent input
        quit_at_the_prompt(chat)
    finally:
        chat.close(force=True)
    history = stack.cli_json("history", session_id)["messages"]
    assert history[0]["content"] == "first line\nsecond line [[mock tokens=3]]"
    assert len(history) == 2  # the completed /regenerate was never sent
    assert "second line" in (tmp_path / "chatter" / "history").read_text()
    again = spawn_chat(stack, tmp_path)  # a new run: Up brings the last input back
    try:
        again.expect("›")
        again.expect(r"\x1b\[\?25h")
        again.send("\x1b[A")
        again.expect("second line")
        again.sendcontrol("c")
        quit_at_the_prompt(again)
    finally:
        again.close(force=True)


def test_a_reasoning_models_thinking_folds_away_and_think_shows_it_in_full(stack, tmp_path):
    from services.mock_llm.script import reasoning_tokens
    chat = spawn_chat(stack, tmp_path)
    try:
        chat.expect("›")
        chat.sendline("think first [[mock tokens=10 reasoning_tokens=40 tps=20]]")
        chat.expect(r"Thinking… [0-9.]+s, \d+ tokens \(estimated\)")  # live, with the newest lines above it
        chat.expect(r"Thought for [0-9.]+ s")
        chat.expect(r"\| thought [0-9.]+s, 40 tokens \(server\) \| completed")
        chat.expect("›")
        chat.sendline("/think")
        chat.expect("thinking: shown in full")
        chat.expect("›")
        text = "and show it [[mock tokens=5 reasoning_tokens=30 tps=100]]"
        chat.sendline(text)
        chat.expect(r"Thought for [0-9.]+ s")
        body = next(e["body"] for e in stack.journal() if e["body"]["messages"][-1]["content"] == text)
        thought = "".join(reasoning_tokens(body["messages"], body["model"], 30))  # its prompt holds the first turn
        screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", chat.before)
        for line in filter(str.strip, thought.split("\n")):  # all of it, printed for good line by line
            assert line.strip() in screen, (line, screen[-2000:])
        chat.expect(r"\| completed")
        quit_at_the_prompt(chat)
    finally:
        chat.close(force=True)


def test_help_keeps_its_square_brackets_and_history_mid_reply_stays_in_the_session(stack, tmp_path):
    chat = spawn_chat(stack, tmp_path)
    try:
        chat.expect(SESSION)
        session = chat.match.group(1)
        chat.expect("›")
        chat.sendline("/help")
        chat.expect(r"/new \[SYSTEM\]")
        chat.expect(r"/config \[model=M\] \[temperature=T\] \[max_tokens=N\]")  # rich read them as markup before
        chat.expect("›")
        chat.sendline("a long one [[mock tokens=300 tps=30]]")
        chat.expect(r"tokens \(estimated\)")
        chat.sendline("/history")
        chat.expect(r"\(the reply goes on; it shows again below\)")
        chat.expect(r"#1 \[user\]")  # the history, then the reply again, live, to its end
        chat.expect(r"300 tokens \(server\).*\| completed", timeout=60)
        quit_at_the_prompt(chat)
        shown = chat.before or ""
    finally:
        chat.close(force=True)
    assert f"goes on in session {session}" not in shown
