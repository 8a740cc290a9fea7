"""``chatter chat``'s commands on sessions themselves: search, rename, delete (a session, or a branch), edit, the
branches and fork. Each takes the chat (``chat.Chat``) and the rest of its line, as the chat's own commands do."""
from __future__ import annotations

import uuid

from clients.api import ChatterError
from clients.manage import draw_tree, print_hits


def search(chat, rest: str) -> None:
    if not rest:
        raise ChatterError("/search needs words to look for")
    print_hits(chat.client.search(rest), chat.err)


def rename(chat, rest: str) -> None:
    renamed = chat.client.rename(chat.session_id, rest)
    chat.say(f"session {renamed.session_id}: {renamed.title}" + ("" if rest else " (automatic)"))


def delete(chat, rest: str) -> None:
    if rest:
        return delete_branch(chat, rest)
    chat.say(f"delete session {chat.session_id} with every message? This cannot be undone. [y/N]", style="bold")
    answer = chat.read_input()
    if (answer or "").strip().lower() not in ("y", "yes"):
        chat.say("nothing deleted")
        return
    gone = chat.session_id
    chat.client.unsubscribe(gone)
    chat.client.delete_sessions([gone])
    chat.session_id = chat.client.new_session(model=chat.model)
    chat.say(f"deleted {gone}; session {chat.session_id}")


def delete_branch(chat, message: str) -> None:
    chat.say(f"delete message {message} and every message after it, on every branch? This cannot be undone. "
             "[y/N]", style="bold")
    if (chat.read_input() or "").strip().lower() not in ("y", "yes"):
        chat.say("nothing deleted")
        return
    gone = chat.client.delete_branch(chat.session_id, message)
    chat.say(f"deleted {len(gone.deleted)} messages")


def edit(chat, rest: str) -> None:
    message, _, text = rest.partition(" ")
    if not message:
        raise ChatterError("/edit needs the number of your message (see /history)")
    if not text.strip():
        chat.say("the new text, on one line (empty: nothing changes):", style="bold")
        text = (chat.read_input() or "").strip()
        if not text:
            chat.say("nothing changed")
            return
    request_id = uuid.uuid4().hex
    chat.turn(lambda: chat.client.edit(chat.session_id, message, text, request_id))


def branch(chat, rest: str) -> None:
    words = rest.split()
    if not words:
        for line in draw_tree(chat.client.tree(chat.session_id).nodes):
            chat.say(line)
        return
    if len(words) > 2 or (len(words) == 2 and not words[1].isdigit()) or words[1:] == ["0"]:
        raise ChatterError("/branch N [K]: a message's number (or id), and which of its versions (1 the oldest)")
    switched = chat.client.switch(chat.session_id, words[0], int(words[1]) - 1 if len(words) == 2 else None)
    chat.say(f"the active branch now ends at {switched.leaf_id}")


def fork(chat, rest: str) -> None:
    forked = chat.client.fork(chat.session_id, rest or None)
    chat.client.unsubscribe(chat.session_id)
    chat.session_id = forked.session_id
    chat.client.subscribe(chat.session_id)
    chat.say(f"session {forked.session_id}: a copy of {forked.message_count} messages of {forked.source_id}")
