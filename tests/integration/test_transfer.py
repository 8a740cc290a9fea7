"""Export and import against real stacks, on SQLite and on PostgreSQL: Chatter's own format round-trips exactly
(branches, thinking, tool calls, prompts whose previews stay exact), --all is a backup another stack reads back,
Markdown and OpenAI's messages, ChatGPT's conversations.json (made here, with a branch), idempotence, and malformed
files refused with their line and field, nothing imported."""
from __future__ import annotations

import json
import os
import stat

import openai

from tests.integration.stack import BOTH_DATABASES

pytestmark = BOTH_DATABASES


def a_session_with_everything(stack) -> str:
    first = stack.cli_json("send", "ponder [[mock tokens=6 reasoning_tokens=8 reasoning_field=reasoning]]",
                           "--system", "be brief")
    session = first["session_id"]
    stack.cli_json("send", "weather? [[mock tokens=3 tool_call=get_weather]]", "--session", session)
    stack.cli_json("edit", session, "3", "weather in Oslo? [[mock tokens=4]]")
    stack.cli_json("regenerate", session)
    assert stack.cli("rename", session, "Everything ✈").returncode == 0
    return session


def export_lines(stack, *args: str) -> list[dict]:
    out = stack.cli("export", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.decode().splitlines()]


def without_run_ids(history: dict) -> dict:
    """A history without what an export leaves out: the generation that wrote a reply, the request that asked."""
    for message in history["messages"]:
        message.pop("generation_id"), message.pop("client_request_id")
    return history


def message_count(stack) -> int:
    return stack.query("select count(*) as n from message")[0]["n"]


def test_an_export_imported_again_is_exact_and_importing_twice_adds_nothing(fresh_stack, tmp_path):
    stack = fresh_stack()
    session = a_session_with_everything(stack)
    (exported,) = export_lines(stack, session)
    assert exported["format"] == "chatter-session" and len(exported["messages"]) == 7
    assert exported["session"]["title"] == "Everything ✈" and exported["session"]["system"] == "be brief"
    assert exported["messages"][1]["reasoning"] and exported["messages"][3]["tool_calls"]
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(exported) + "\n")
    history = without_run_ids(stack.cli_json("history", session))
    assert stack.cli("delete", session, "--yes").returncode == 0
    done = stack.cli_json("import", str(path), "--json")
    assert done == [{"session_id": session, "created": 7, "existing": 0}]
    assert export_lines(stack, session) == [exported]  # ids, tree, texts, stats, prompts: the same
    assert without_run_ids(stack.cli_json("history", session)) == history
    for message in exported["messages"]:
        if message["role"] == "assistant":
            preview = stack.cli_json("preview", message["message_id"])
            assert preview["exact"] and preview["messages"] in [e["body"]["messages"] for e in stack.journal()]
    before = message_count(stack)
    assert stack.cli_json("import", str(path), "--json") == [{"session_id": session, "created": 0, "existing": 7}]
    assert message_count(stack) == before
    stack.cli_json("send", "and after the import? [[mock tokens=3]]", "--session", session)  # it goes on


def test_all_sessions_back_up_to_a_private_file_that_another_stack_reads_back(fresh_stack, tmp_path):
    stack = fresh_stack()
    sessions = [a_session_with_everything(stack), stack.cli_json("send", "a short one [[mock tokens=3]]")["session_id"]]
    backup = tmp_path / "backup.jsonl"
    done = stack.cli("export", "--all", "--output", str(backup))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    lines = [json.loads(line) for line in backup.read_text().splitlines()]
    assert sorted(line["session"]["session_id"] for line in lines) == sorted(sessions)
    other = fresh_stack()
    imported = other.cli_json("import", str(backup), "--json")
    assert sorted(i["session_id"] for i in imported) == sorted(sessions)
    for session in sessions:
        assert export_lines(other, session) == export_lines(stack, session)


def test_markdown_reads_the_active_branch_and_openai_messages_go_straight_to_a_server(stack):
    session = a_session_with_everything(stack)
    text = stack.cli("export", session, "--format", "markdown").stdout.decode()
    history = stack.cli_json("history", session)["messages"]
    assert text.startswith("# Everything ✈\n") and "be brief" in text and "<summary>Thinking</summary>" in text
    assert text.count("## You") == 2 and "weather in Oslo?" in text and "weather? [[mock" not in text
    assert history[-1]["content"] in text
    request = json.loads(stack.cli("export", session, "--format", "openai").stdout)
    assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert request["messages"][-1]["content"] == history[-1]["content"]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.port}/v1", api_key="not-needed")
    answer = client.chat.completions.create(model=request["model"], messages=request["messages"] + [
        {"role": "user", "content": "and now? [[mock tokens=3]]"}])
    assert answer.choices[0].message.content


def chatgpt_export() -> list[dict]:
    """A ChatGPT-shaped data export, made here: a conversation whose second question was edited (two children of
    one reply, the edited one current), a hidden system node and a tool node; and a plain one."""
    def node(node_id, parent, children, role=None, text=None, at=0.0, **message):
        msg = None if role is None else {"id": node_id, "author": {"role": role}, "create_time": at,
                                         "content": {"content_type": "text", "parts": [text]},
                                         "status": "finished_successfully", "metadata": message}
        return node_id, {"id": node_id, "parent": parent, "children": children, "message": msg}

    branched = dict([
        node("root", None, ["sys"]),
        node("sys", "root", ["u1"], "system", ""),
        node("u1", "sys", ["a1"], "user", "How do I boil an egg?", 1.0),
        node("a1", "u1", ["u2", "u2b"], "assistant", "Ten minutes in boiling water.", 2.0, model_slug="gpt-4o"),
        node("u2", "a1", ["a2"], "user", "And soft?", 3.0),
        node("a2", "u2", [], "assistant", "Six minutes.", 4.0, model_slug="gpt-4o"),
        node("u2b", "a1", ["t1"], "user", "And a soft one, runny?", 5.0),
        node("t1", "u2b", ["a2b"], "tool", "timer output", 5.5),
        node("a2b", "t1", [], "assistant", "Six and a half minutes, then cold water.", 6.0, model_slug="gpt-4o"),
    ])
    plain = dict([node("r", None, ["q"]), node("q", "r", ["a"], "user", "Hi", 10.0),
                  node("a", "q", [], "assistant", "Hello!", 11.0)])
    return [{"title": "Eggs", "create_time": 1.0, "update_time": 6.0, "mapping": branched, "current_node": "a2b",
             "conversation_id": "c-eggs", "id": "c-eggs"},
            {"title": "Greeting", "create_time": 10.0, "update_time": 11.0, "mapping": plain, "current_node": "a",
             "conversation_id": "c-hi", "id": "c-hi"}]


def test_chatgpts_export_comes_in_as_trees_with_their_branches_once(fresh_stack, tmp_path):
    stack = fresh_stack()
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(chatgpt_export(), indent=2))
    done = stack.cli_json("import", str(path), "--json")
    assert [d["created"] for d in done] == [6, 2]
    eggs = done[0]["session_id"]
    history = stack.cli_json("history", eggs)
    assert history["title"] == "Eggs"
    assert [(h["role"], h["content"]) for h in history["messages"]] == [
        ("user", "How do I boil an egg?"), ("assistant", "Ten minutes in boiling water."),
        ("user", "And a soft one, runny?"), ("assistant", "Six and a half minutes, then cold water.")]
    assert (history["messages"][2]["sibling_index"], history["messages"][2]["sibling_count"]) == (1, 2)
    assert history["messages"][1]["model"] == "gpt-4o"
    assert stack.cli_json("switch", eggs, "3", "--version", "1")["leaf_id"]
    assert [h["content"] for h in stack.cli_json("history", eggs)["messages"]][2:] == ["And soft?", "Six minutes."]
    assert stack.cli_json("search", "runny")[0]["session_id"] == eggs
    before = message_count(stack)
    assert [d["created"] for d in stack.cli_json("import", str(path), "--json")] == [0, 0]
    assert message_count(stack) == before
    reply = stack.cli_json("send", "and a poached one? [[mock tokens=3]]", "--session", eggs)
    body = [e for e in stack.journal() if "poached" in json.dumps(e["body"])][-1]["body"]
    assert [m["content"] for m in body["messages"]][:2] == ["How do I boil an egg?", "Ten minutes in boiling water."]
    assert reply["status"] == "completed"


def test_a_malformed_file_is_refused_with_its_line_and_field_and_nothing_is_imported(fresh_stack, tmp_path):
    stack = fresh_stack()
    session = stack.cli_json("send", "to export [[mock tokens=3]]")["session_id"]
    (good,) = export_lines(stack, session)
    assert stack.cli("delete", session, "--yes").returncode == 0
    bad_role = json.loads(json.dumps(good))
    bad_role["messages"][1]["role"] = "wizard"
    bad_type = json.loads(json.dumps(good))
    bad_type["messages"][0]["created_at"] = "yesterday"
    orphan = json.loads(json.dumps(good))
    orphan["messages"][1]["parent_id"] = "nope"
    eggs = chatgpt_export()
    eggs[0]["mapping"]["u2"]["message"]["author"]["role"] = 7
    cases = [
        ([good, bad_role], ".jsonl", ":2: field messages[1].role: user or assistant"),
        ([bad_type], ".jsonl", ":1: field messages[0].created_at: Expected `float`"),
        ([orphan], ".jsonl", ":1: field messages[1].parent_id: nope is not a message before it"),
        ([{"hello": "world"}], ".jsonl", ":1: field format: not a Chatter export"),
        (None, ".json", ":2 (conversation 1): field mapping.u2.message.author.role: expected a string"),
    ]
    for number, (lines, suffix, words) in enumerate(cases):
        path = tmp_path / f"bad{number}{suffix}"
        if lines is None:
            path.write_text(json.dumps(eggs, indent=1))
        else:
            path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        result = stack.cli("import", str(path))
        err = result.stderr.decode()
        assert result.returncode == 1 and words in err and err.count("\n") == 1, (words, err)
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    assert "not UTF-8" in stack.cli("import", str(tmp_path / "binary")).stderr.decode()
    assert message_count(stack) == 0 and stack.cli_json("sessions") == []
