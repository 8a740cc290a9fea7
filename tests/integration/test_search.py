"""``chatter search`` against a real stack, on SQLite and on PostgreSQL: ranked hits with their matches marked,
phrases, prefixes and diacritics, one session or all, a reply found once it is final, and nothing of a deleted
session."""
from __future__ import annotations

import uuid

from tests.integration.stack import BOTH_DATABASES

pytestmark = BOTH_DATABASES


def test_search_finds_words_phrases_prefixes_and_diacritics_and_forgets_what_was_deleted(stack):
    tag = "zq" + uuid.uuid4().hex[:10]
    first = stack.cli_json("send", f"{tag} a naïve question about sockets [[mock tokens=5]]")
    second = stack.cli_json("send", f"{tag} the streaming of replies [[mock tokens=5 say={tag}reply]]")
    hits = stack.cli_json("search", f"{tag} naive")
    assert [(h["session_id"], h["message_id"]) for h in hits] == [(first["session_id"], hits[0]["message_id"])]
    assert hits[0]["role"] == "user" and "[naïve]" in hits[0]["snippet"] and f"[{tag}]" in hits[0]["snippet"]
    assert {h["session_id"] for h in stack.cli_json("search", f"{tag} stream*")} == {second["session_id"]}
    assert stack.cli_json("search", f'"{tag} the streaming"')[0]["session_id"] == second["session_id"]
    assert stack.cli_json("search", f'"{tag} streaming the"') == []
    reply = stack.cli_json("search", f"{tag}reply")  # the reply's own text, indexed once it was final (the user's
    assert (second["message_id"], "assistant") in [(h["message_id"], h["role"]) for h in reply]  # holds it too)
    assert stack.cli_json("search", f"{tag}*", "--session", first["session_id"])[0]["session_id"] == \
        first["session_id"]
    assert len(stack.cli_json("search", f"{tag}*", "--limit", "1")) == 1
    shown = stack.cli("search", f"{tag} naive")
    assert shown.returncode == 0 and first["session_id"][:8].encode() in shown.stdout
    empty = stack.cli("search", "   ")
    assert empty.returncode == 1 and b"the search is empty" in empty.stderr
    assert stack.cli("delete", second["session_id"], "--yes").returncode == 0
    assert stack.cli_json("search", f"{tag}reply") == [] and stack.cli_json("search", f"{tag} stream*") == []
    refused = stack.cli("search", tag, "--session", second["session_id"])
    assert refused.returncode == 1
