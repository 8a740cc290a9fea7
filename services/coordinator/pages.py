"""Answers that grow with the data, cut into pages that each fit a frame: a reply's snapshot and a session's
history. Pure: the machine's handlers build the whole answer, these cut the page a request asks for.

A page holds at most ``PAGE_BYTES`` of texts beside its fixed fields (a system prompt or a user text of up to
CHATTER_MAX_TEXT_CHARS, 1.6 MiB at most), so that it stays under the 4 MiB frame whatever they hold."""
from __future__ import annotations

from typing import Iterator

import msgspec

from protocol import answers
from protocol.codec import PAGE_BYTES, fitting_chars
from protocol.conversation import MessageView

_encode = msgspec.msgpack.encode
SESSIONS_PAGE = 2000  # summaries a page: a title is at most a few hundred bytes
TREE_PAGE = 5000  # a tree's nodes a page: each at most ~470 bytes (its line is 80 characters)


class TooLargeToPage(ValueError):
    """One item of an answer is larger than a page holds even without its texts."""


def _room(fixed_bytes: int) -> int:
    """What a page's texts may take beside fixed fields of ``fixed_bytes``: always at least half a page, so a
    page of a large system prompt or user text still moves on."""
    return max(PAGE_BYTES - fixed_bytes, PAGE_BYTES // 2)


def _cut(text: str, room: int) -> tuple[str, int]:
    """The head of ``text`` that fits ``room`` bytes, and the room left after it."""
    head = text[:fitting_chars(text, room)]
    return head, room - len(head.encode("utf-8", "surrogatepass"))


def snapshot_page(snap: answers.Snapshot, offset: int, reasoning_offset: int) -> answers.Snapshot:
    """The page of a whole snapshot that begins at these offsets, each cut to its text's length (a cancel may
    have cut a text below what the asker already has): the thinking first, then the answer. The user text
    comes with the first page only."""
    reasoning_offset, offset = min(reasoning_offset, len(snap.reasoning)), min(offset, len(snap.text))
    first = offset == 0 and reasoning_offset == 0
    fixed = msgspec.structs.replace(snap, text="", reasoning="", user_text=snap.user_text if first else None)
    reasoning, room = _cut(snap.reasoning[reasoning_offset:], _room(len(_encode(fixed))))
    text = ""
    if reasoning_offset + len(reasoning) == len(snap.reasoning):
        text, room = _cut(snap.text[offset:], room)
    more = reasoning_offset + len(reasoning) < len(snap.reasoning) or offset + len(text) < len(snap.text)
    return msgspec.structs.replace(fixed, text=text, reasoning=reasoning, offset=offset,
                                   reasoning_offset=reasoning_offset, more=more)


def history_page(head: answers.History, views: Iterator[MessageView], offset: int,
                 reasoning_offset: int) -> answers.History:
    """The page of a history that begins with the first of ``views`` (its texts from these offsets): as many
    messages as fit, the last one cut if need be, and ``next``, where the page after it begins."""
    room = _room(len(_encode(head)))
    page: list[MessageView] = []
    for view in views:
        fixed = msgspec.structs.replace(view, content="", reasoning="")
        size = len(_encode(fixed)) + 8
        if size > room:
            if not page:
                raise TooLargeToPage(f"message {view.message_id} is {size} bytes without its text, more than a "
                                     "page holds")
            return msgspec.structs.replace(head, messages=page, next=answers.HistoryCursor(
                message_id=view.message_id, offset=offset, reasoning_offset=reasoning_offset))
        room -= size
        reasoning, room = _cut(view.reasoning[reasoning_offset:], room)
        content = ""
        if reasoning_offset + len(reasoning) == len(view.reasoning):
            content, room = _cut(view.content[offset:], room)
        left = len(view.reasoning) - reasoning_offset + len(view.content) - offset
        if left and not reasoning and not content:  # its fields fit, but none of its text: it begins the next page
            if not page:
                raise TooLargeToPage(f"message {view.message_id} is {size} bytes without its text: a page holds "
                                     "no text beside it")
            return msgspec.structs.replace(head, messages=page, next=answers.HistoryCursor(
                message_id=view.message_id, offset=offset, reasoning_offset=reasoning_offset))
        page.append(msgspec.structs.replace(view, content=content, reasoning=reasoning))
        if reasoning_offset + len(reasoning) < len(view.reasoning) or offset + len(content) < len(view.content):
            return msgspec.structs.replace(head, messages=page, next=answers.HistoryCursor(
                message_id=view.message_id, offset=offset + len(content),
                reasoning_offset=reasoning_offset + len(reasoning)))
        offset = reasoning_offset = 0
    return msgspec.structs.replace(head, messages=page, next=None)



def preview_page(whole: answers.Preview, preview_offset: int, index: int, offset: int) -> answers.Preview:
    """The page of a prompt's preview that begins at these places: its preview text from ``preview_offset``,
    then its messages from ``index`` (that one's content from ``offset``); ``next`` says where the next begins
    ([preview offset, index, offset]). The ids left out come with the first page."""
    first = preview_offset == 0 and index == 0 and offset == 0
    fixed = msgspec.structs.replace(whole, preview="", messages=[],
                                    dropped_message_ids=whole.dropped_message_ids if first else [])
    preview, room = _cut(whole.preview[preview_offset:], _room(len(_encode(fixed))))
    page: list[dict] = []
    at = [preview_offset + len(preview), index, offset]
    if at[0] == len(whole.preview):
        while at[1] < len(whole.messages):
            message = whole.messages[at[1]]
            size = len(_encode({**message, "content": ""})) + 8
            if size > room and page:
                break
            room -= size
            content, room = _cut(str(message["content"])[at[2]:], room)
            page.append({**message, "content": content})
            if at[2] + len(content) < len(str(message["content"])):
                at[2] += len(content)
                break
            at[1], at[2] = at[1] + 1, 0
    done = at[0] == len(whole.preview) and at[1] >= len(whole.messages)
    return msgspec.structs.replace(fixed, preview=preview, messages=page, preview_offset=preview_offset,
                                   index=index, offset=offset, next=None if done else at)
