"""Managing sessions against a real stack, on SQLite and on PostgreSQL: delete (the text gone from every file, a
reply streaming there stopped upstream, its watchers told) and rename (kept, shown everywhere, bad titles refused)."""
from __future__ import annotations

import json
import time
import uuid

import zmq

from protocol import codec, messages as m
from tests.integration.stack import BOTH_DATABASES, wait_until

pytestmark = BOTH_DATABASES


def marker() -> str:
    return "zq" + uuid.uuid4().hex[:14]


def sent(stack, text: str, *args: str) -> dict:
    outcome = stack.cli_json("send", text, *args)
    assert outcome["status"] == "completed", outcome
    return outcome


def files_with(stack, needle: bytes) -> list[str]:
    """The files of the stack's directory (its database, the database's log and every process's log) that hold
    ``needle``."""
    return sorted(str(path.name) for path in stack.workdir.rglob("*")
                  if path.is_file() and needle in path.read_bytes())


def test_a_deleted_session_is_gone_from_every_file_and_its_streaming_reply_is_stopped(fresh_stack):
    stack = fresh_stack(CHATTER_CHUNK_LOG_ROWS="8")  # the log turns over while the replies stream
    keep, gone = marker(), marker()
    kept = sent(stack, f"keep {keep} [[mock tokens=40 say={keep}]]")
    first = sent(stack, f"first {gone} [[mock tokens=300 tps=2000 say={gone}]]", "--system", f"be {gone}")
    session = first["session_id"]
    assert stack.cli("rename", session, f"trip {gone}").returncode == 0
    streaming_text = f"again {gone} [[mock tokens=4000 tps=40 say={gone}]]"
    send = stack.spawn_cli("send", streaming_text, "--session", session, "--json")
    watch = stack.spawn_cli("watch", session)
    try:
        wait_until(lambda: any(e["body"]["messages"][-1]["content"] == streaming_text and e["chunks_sent"] > 20
                               for e in stack.journal()), what="the reply to stream")
        time.sleep(0.6)  # a checkpoint or two of it (and its marker) in the chunk log
        if stack.env["CHATTER_DATABASE_URL"].startswith("sqlite"):
            assert files_with(stack, gone.encode()), "the marker was never written: this test could not fail"
        done = stack.cli("delete", session, "--yes", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"deleted": [session], "not_found": []}
        out, err = send.communicate(timeout=30)
        assert send.returncode == 1 and f"session {session} was deleted" in err.decode()
        _, err = watch.communicate(timeout=30)
        assert watch.returncode == 1 and f"session {session} was deleted" in err.decode()
    finally:
        for proc in (send, watch):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    streamed = next(e for e in stack.journal() if e["body"]["messages"][-1]["content"] == streaming_text)
    assert streamed["client_closed"] and not streamed["completed"], "the upstream request went on"
    refused = stack.cli("history", session)
    assert refused.returncode == 1 and f"session {session} was deleted" in refused.stderr.decode()
    listed = stack.cli_json("sessions")
    assert [row["session_id"] for row in listed] == [kept["session_id"]]
    assert stack.query("select count(*) as n from message where session_id = ?", (session,))[0]["n"] == 0
    assert stack.query("select count(*) as n from session where id = ?", (session,))[0]["n"] == 0
    assert not [e for e in all_log_entries(stack) if gone in e[3]], "its appends are still in the chunk log"
    history = stack.cli_json("history", kept["session_id"])
    assert keep in history["messages"][-1]["content"]
    if stack.env["CHATTER_DATABASE_URL"].startswith("sqlite"):
        assert files_with(stack, gone.encode()) == []
        assert files_with(stack, keep.encode()), "the session kept lost its text"
        assert (stack.workdir / "chatter.db-wal").stat().st_size == 0, "the database's log was not emptied"
    again = stack.cli("delete", session, "--yes", "--json")
    assert again.returncode == 1 and json.loads(again.stdout) == {"deleted": [], "not_found": [session]}


def test_deleting_asks_first_and_takes_old_sessions_or_all(fresh_stack):
    stack = fresh_stack()
    old = [sent(stack, f"old {i} [[mock tokens=3]]")["session_id"] for i in range(3)]
    refused = stack.cli("delete", old[0])  # not a terminal, and no --yes
    assert refused.returncode == 1 and "--yes" in refused.stderr.decode()
    assert stack.cli("delete", "--all", "--older-than", "1s", "--yes").returncode == 1  # one way of choosing
    assert stack.cli("delete", "--older-than", "soon", "--yes").returncode == 2  # not a span: a usage error
    time.sleep(6)  # the old ones idle longer than the span, the new one (a CLI's start-up ago) far shorter
    new = sent(stack, "new [[mock tokens=3]]")["session_id"]
    done = stack.cli_json("delete", "--older-than", "5s", "--yes")
    assert sorted(done["deleted"]) == sorted(old) and done["not_found"] == []
    assert [row["session_id"] for row in stack.cli_json("sessions")] == [new]
    assert stack.cli_json("delete", "--all", "--yes") == {"deleted": [new], "not_found": []}
    assert stack.cli_json("sessions") == []
    nothing = stack.cli("delete", "--all", "--yes")
    assert nothing.returncode == 0 and b"nothing to delete" in nothing.stdout


def test_a_rename_is_kept_shown_everywhere_and_bad_titles_change_nothing(stack):
    first = sent(stack, "line one\nline two [[mock tokens=3]]")
    session = first["session_id"]
    assert stack.cli_json("history", session)["title"] == "line one"  # the first line, automatically
    watcher = stack.client()
    watcher.subscribe(session)
    renamed = stack.cli_json("rename", session, "Trip to Lyon ✈")
    assert renamed == {"session_id": session, "title": "Trip to Lyon ✈"}
    event = wait_until(lambda: next((e for e in iter(lambda: _event(watcher), None)
                                     if isinstance(e, m.SessionChanged)), None), what="the rename's event")
    assert (event.change, event.title) == ("renamed", "Trip to Lyon ✈")
    watcher.close()
    sent(stack, "another [[mock tokens=3]]", "--session", session)
    assert stack.cli_json("history", session)["title"] == "Trip to Lyon ✈"  # kept after a new message
    row = next(r for r in stack.cli_json("sessions") if r["session_id"] == session)
    assert row["title"] == "Trip to Lyon ✈"
    assert stack.query("select title, title_set from session where id = ?", (session,))[0] == {
        "title": "Trip to Lyon ✈", "title_set": True}
    automatic = stack.cli_json("rename", session, "")
    assert automatic["title"] == "line one"
    with stack.client() as client:
        for bad, words in (("x" * 10_000_000, "at most 500"), ("bad\x00title", "NUL")):
            try:
                client.rename(session, bad)
            except Exception as exc:
                assert words in str(exc)
            else:
                raise AssertionError(f"{bad[:20]!r} was taken")
        try:
            client.rename("f" * 32, "nobody's")
        except Exception as exc:
            assert "unknown session" in str(exc)
        else:
            raise AssertionError("an unknown session was renamed")
    ctx, rpc = stack.raw_socket(zmq.DEALER, "rpc")  # a title over the bound, sent as raw msgpack
    try:
        rpc.send(codec.encode(m.RenameSession(7, session, "ok")).replace(b"\xa2ok", b"\xda\x02\x58" + b"y" * 600))
        assert rpc.poll(5000)
        reply = codec.decode(rpc.recv(), (m.Reply,))
        assert not reply.ok and "500" in reply.error
    finally:
        rpc.close(0)
        ctx.term()
    assert stack.cli_json("history", session)["title"] == "line one"


def all_log_entries(stack) -> list[tuple]:
    """Every append in the chunk log (both tables), unpacked: text that is compressed in a row is read here."""
    from services import store
    rows = stack.query("select * from chunk union all select * from chunk_b")
    return [e for row in rows for e in store.log_entries(tuple(row[c] for c in store._CHUNK_COLUMNS))]


def _event(client):
    if not client.stream.poll(100):
        return None
    from transport import payload_of
    return codec.decode(payload_of(client.stream.recv()), m.STREAM_EVENTS)


def test_with_auto_titles_the_model_names_a_session_once_and_never_in_its_conversation(fresh_stack):
    from services.coordinator.titles import ASK, clean
    from services.mock_llm.script import reply_text
    stack = fresh_stack(CHATTER_AUTO_TITLE="1")
    first = sent(stack, "Plan a weekend in Lyon [[mock tokens=12]]")
    session = first["session_id"]
    asked = wait_until(lambda: [e for e in stack.journal() if e["body"]["messages"][0]["content"] == ASK],
                       what="the title asked of the model")
    assert len(asked) == 1 and "Plan a weekend in Lyon" in asked[0]["body"]["messages"][1]["content"]
    body = asked[0]["body"]
    # the mock reads the directive quoted in the excerpt (12 tokens), within the request's max_tokens (24)
    title = clean(reply_text(body["messages"], body["model"], min(12, body["max_tokens"])))
    assert title and title != "Plan a weekend in Lyon [[mock tokens=12]]"
    wait_until(lambda: stack.cli_json("history", session)["title"] == title, what="the model's title")
    assert [h["role"] for h in stack.cli_json("history", session)["messages"]] == ["user", "assistant"]
    row = stack.query("select title, title_set from session where id = ?", (session,))[0]
    assert row["title"] == title and not row["title_set"]
    sent(stack, "and Paris? [[mock tokens=3]]", "--session", session)
    assert len([e for e in stack.journal() if e["body"]["messages"][0]["content"] == ASK]) == 1  # once
