"""Sessions as trees against a real stack, on SQLite and on PostgreSQL: edit, regenerate as a sibling, switch,
the tree drawn, fork, a branch deleted with its text gone, and every prompt's preview exactly what the mock
received, also after a restart of the coordinator."""
from __future__ import annotations

import json
import uuid

from tests.integration.stack import BOTH_DATABASES

pytestmark = BOTH_DATABASES


def contents(stack, session_id: str) -> list[str]:
    return [h["content"] for h in stack.cli_json("history", session_id)["messages"]]


def request_of(stack, text: str) -> list[dict]:
    """The messages of the newest request to the mock whose last message is ``text``."""
    return [e for e in stack.journal() if e["body"]["messages"][-1]["content"] == text][-1]["body"]["messages"]


def assert_previews_exact(stack, history: list[dict]) -> None:
    """Every reply's preview is the request the mock received for it, and says so."""
    for reply in (h for h in history if h["role"] == "assistant"):
        preview = stack.cli_json("preview", reply["message_id"])
        assert preview["exact"] and preview["prompt_hash"] == reply["prompt_hash"]
        assert preview["messages"] in [e["body"]["messages"] for e in stack.journal()]


def test_edit_regenerate_switch_and_the_tree_on_a_real_stack(fresh_stack):
    stack = fresh_stack()
    first = stack.cli_json("send", "q1 [[mock tokens=5]]")
    session = first["session_id"]
    stack.cli_json("send", "q2 [[mock tokens=5]]", "--session", session)
    old = stack.cli_json("history", session)["messages"]
    edited = stack.cli_json("edit", session, "3", "q2 again [[mock tokens=6]]")
    assert edited["status"] == "completed"
    assert request_of(stack, "q2 again [[mock tokens=6]]") == [
        {"role": "user", "content": "q1 [[mock tokens=5]]"}, {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": "q2 again [[mock tokens=6]]"}]
    history = stack.cli_json("history", session)["messages"]
    assert [h["content"] for h in history[:2]] == [h["content"] for h in old[:2]]
    assert (history[2]["content"], history[2]["sibling_index"], history[2]["sibling_count"]) == (
        "q2 again [[mock tokens=6]]", 1, 2)
    assert "< 2/2 >" in stack.cli("history", session).stdout.decode()
    regen = stack.cli_json("regenerate", session)
    assert regen["status"] == "completed"
    history = stack.cli_json("history", session)["messages"]
    assert (history[3]["message_id"], history[3]["sibling_index"], history[3]["sibling_count"]) == (
        regen["message_id"], 1, 2)
    tree = stack.cli_json("branches", session)
    assert len(tree["nodes"]) == 7 and [n["active"] for n in tree["nodes"]] == [True, True, False, False, True,
                                                                               False, True]
    drawn = stack.cli("branches", session).stdout.decode()
    assert "├─" in drawn and "└─" in drawn and drawn.count("\n* ") == 4
    switched = stack.cli_json("switch", session, "3", "--version", "1")
    assert switched["leaf_id"] == old[3]["message_id"]
    assert contents(stack, session) == [h["content"] for h in old]
    stack.cli_json("send", "q3 [[mock tokens=4]]", "--session", session)
    assert request_of(stack, "q3 [[mock tokens=4]]")[-2:] == [{"role": "assistant", "content": old[3]["content"]},
                                                               {"role": "user", "content": "q3 [[mock tokens=4]]"}]
    before = stack.cli_json("history", session)["messages"]
    stack.kill("coordinator")  # the active branch and every prompt come back from the rows
    stack.start("coordinator")
    assert stack.cli_json("history", session)["messages"] == before
    for node in stack.cli_json("branches", session)["nodes"]:
        if node["role"] == "assistant":
            preview = stack.cli_json("preview", node["message_id"])
            assert preview["exact"] and preview["messages"] in [e["body"]["messages"] for e in stack.journal()]


def test_a_fork_copies_the_branch_and_a_deleted_branch_is_gone_from_every_file(fresh_stack):
    stack = fresh_stack()
    first = stack.cli_json("send", "q1 [[mock tokens=5]]")
    session = first["session_id"]
    stack.cli_json("send", "q2 [[mock tokens=5]]", "--session", session)
    forked = stack.cli_json("fork", session, "2")
    assert forked["message_count"] == 2 and forked["source_id"] == session
    fork_history = stack.cli_json("history", forked["session_id"])["messages"]
    assert [h["content"] for h in fork_history] == contents(stack, session)[:2]
    assert fork_history[1]["stats"] == stack.cli_json("history", session)["messages"][1]["stats"]
    assert_previews_exact(stack, fork_history)
    stack.cli_json("send", "q3 in the fork [[mock tokens=3]]", "--session", forked["session_id"])
    assert [msg["content"] for msg in request_of(stack, "q3 in the fork [[mock tokens=3]]")] == [
        "q1 [[mock tokens=5]]", first["content"], "q3 in the fork [[mock tokens=3]]"]
    gone = "zq" + uuid.uuid4().hex[:14]
    edited = stack.cli_json("edit", session, "3", f"secret {gone} [[mock tokens=30 say={gone}]]")
    assert gone in edited["content"]
    done = stack.cli("delete", session, "--branch", "3", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["deleted"]) == 2
    history = stack.cli_json("history", session)["messages"]
    assert [h["content"] for h in history][2] == "q2 [[mock tokens=5]]" and len(history) == 4
    assert history[2]["sibling_count"] == 1
    if stack.env["CHATTER_DATABASE_URL"].startswith("sqlite"):
        hits = sorted(str(p.name) for p in stack.workdir.rglob("*") if p.is_file() and gone.encode() in p.read_bytes()
                      and not p.name.startswith("mock"))
        assert hits == [], hits  # the mock's journal keeps what it was sent: it stands for the model's server
    assert stack.query("select count(*) as n from message where content like ?", (f"%{gone}%",)) == [{"n": 0}]
    assert stack.cli_json("search", gone) == []


def test_bad_branch_requests_get_one_line_and_change_nothing(fresh_stack):
    stack = fresh_stack()
    out = stack.cli_json("send", "q1 [[mock tokens=3]]")
    other = stack.cli_json("send", "elsewhere [[mock tokens=3]]")
    session = out["session_id"]
    before = stack.cli_json("branches", session)
    for args, words in ((("edit", session, "2", "x"), "model's reply"),
                        (("edit", session, "7", "x"), "no message 7"),
                        (("edit", session, other["message_id"], "x"), "no message"),
                        (("switch", session, "1", "--version", "3"), "has 1 versions"),
                        (("fork", session, "nope"), "no message nope"),
                        (("delete", session, "--branch", other["message_id"], "--yes"), "no message")):
        result = stack.cli(*args)
        err = result.stderr.decode()
        assert result.returncode == 1 and words in err and err.count("\n") == 1, (args, err)
    assert stack.cli_json("branches", session) == before


def test_the_chat_edits_draws_switches_forks_and_deletes_a_branch(fresh_stack, tmp_path):
    from tests.integration.test_terminal import quit_at_the_prompt, spawn_chat
    stack = fresh_stack()
    chat = spawn_chat(stack, tmp_path)
    try:
        chat.expect(r"session ([0-9a-f]{32})")
        session = chat.match.group(1)
        for line in ("q1 [[mock tokens=3]]", "q2 [[mock tokens=3]]", "/edit 3 q2 again [[mock tokens=3]]"):
            chat.expect("›")
            chat.sendline(line)
            chat.expect(r"\| completed")
        chat.expect("›")
        chat.sendline("/branch")
        chat.expect("└─")
        chat.expect("›")
        chat.sendline("/branch 3 1")
        chat.expect("the active branch now ends at")
        chat.expect("›")
        chat.sendline("/delete 3")
        chat.expect(r"\[y/N\]")
        chat.sendline("y")
        chat.expect("deleted 2 messages")
        chat.expect("›")
        chat.sendline("/fork")
        chat.expect(r"session ([0-9a-f]{32}): a copy of 4 messages")
        fork = chat.match.group(1)
        quit_at_the_prompt(chat)
    finally:
        chat.close(force=True)
    history = [h["content"] for h in stack.cli_json("history", session)["messages"]]
    assert history[2] == "q2 again [[mock tokens=3]]" and len(history) == 4  # the first q2's branch is gone
    assert [h["content"] for h in stack.cli_json("history", fork)["messages"]] == history
