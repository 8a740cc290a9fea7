"""Sessions taken elsewhere and brought back: ``chatter export`` (Chatter's own JSON, Markdown to read, OpenAI's
``messages`` to send) and ``chatter import`` (Chatter's export, and ChatGPT's data export, ``conversations.json``).

Chatter's format is one JSON object a line (JSON Lines, so ``--all`` is one file): ``{"format": "chatter-session",
"version": 1, "session": {...}, "messages": [...]}``, the session's own fields and every message of every branch
in the order they were written, with every field the coordinator keeps (its parent, status, stats, thinking, tool
calls and prompt reference). An import of it is exact: the same ids, tree, texts and fields.

A file is read and checked whole before anything is sent: a malformed one is refused with the line and the field
that is wrong, and nothing of it is imported."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import msgspec

from clients.api import ChatterError
from protocol import answers
from protocol.conversation import MessageRecord, SessionRecord, in_prompt, prompt_message

FORMAT, VERSION = "chatter-session", 1
# the fields an export leaves out: what only a history shows, and what means something only where it ran (the
# generation that wrote a reply, the client request that asked for it)
_NOT_EXPORTED = ("sibling_index", "sibling_count", "generation_id", "client_request_id")


@dataclass
class Incoming:
    """One session read from a file: where it begins (``line``), its fields and its messages."""

    line: int
    session: SessionRecord
    messages: list[MessageRecord]


# ---------------------------------------------------------------- export


def chatter_json(export: answers.SessionExport) -> str:
    """One line of Chatter's format."""
    messages = []
    for record in export.messages:
        fields = msgspec.to_builtins(record)
        for name in _NOT_EXPORTED:
            fields.pop(name, None)
        messages.append(fields)
    return json.dumps({"format": FORMAT, "version": VERSION, "session": msgspec.to_builtins(export.session),
                       "messages": messages}, ensure_ascii=False, sort_keys=True)


def active_branch(export: answers.SessionExport) -> list[MessageRecord]:
    by_id = {r.message_id: r for r in export.messages}
    out, record = [], by_id.get(export.session.active_leaf or "")
    while record is not None:
        out.append(record)
        record = by_id.get(record.parent_id or "")
    return out[::-1]


def openai_messages(export: answers.SessionExport) -> dict:
    """The active branch as a chat completions request's ``model`` and ``messages``: the system prompt, then each
    message that a prompt would carry (a reply that was cancelled, failed or interrupted is left out, as Chatter
    leaves it out of its own prompts), a reply that called tools with its calls."""
    messages = [{"role": "system", "content": export.session.system}] if export.session.system else []
    messages += [prompt_message(r, keep_thinking=False) for r in active_branch(export) if in_prompt(r)]
    return {"model": export.session.model or next((r.model for r in export.messages if r.model), None),
            "messages": messages}


def markdown(export: answers.SessionExport) -> str:
    """The active branch to read: a heading, the system prompt, then each message under its role, a reply's
    thinking quoted before it and its status when it did not complete."""
    session = export.session
    out = [f"# {session.title or session.session_id}", ""]
    if session.system:
        out += ["*System prompt:*", "", *(f"> {line}" for line in session.system.splitlines()), ""]
    for record in active_branch(export):
        stamp = _stamp(record.created_at)
        if record.role == "user":
            out += [f"## You · {stamp}", "", record.content, ""]
            continue
        if record.role == "tool":
            out += [f"## Tool result for `{record.tool_call_id}` · {stamp}", "", record.content, ""]
            continue
        status = "" if record.status == "completed" else f" · {record.status}"
        out += [f"## {record.model or 'Assistant'} · {stamp}{status}", ""]
        if record.reasoning:
            out += ["<details><summary>Thinking</summary>", "", record.reasoning, "", "</details>", ""]
        out += [record.content, ""]
        for call in record.tool_calls:
            out += [f"→ `{call['function']['name']}({call['function']['arguments']})`", ""]
    return "\n".join(out).rstrip() + "\n"


def _stamp(seconds: float) -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


# ---------------------------------------------------------------- import


class Malformed(ChatterError):
    """A file that is not an export, or one with a field that is wrong: where, and what."""


def read_file(name: str, data: bytes) -> list[Incoming]:
    """Every session of a file: Chatter's JSON Lines (one export a line), or ChatGPT's ``conversations.json``
    (one JSON array). Raises ``Malformed`` naming the line and field of the first thing wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed(f"{name}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte {exc.start})") from None
    if not text.strip():
        raise Malformed(f"{name}: empty: nothing to import")
    if text.lstrip().startswith("["):
        return _chatgpt(name, text)
    sessions = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise Malformed(f"{name}:{number}: not JSON ({exc.msg} at column {exc.colno}); an export has one "
                            "session a line") from None
        sessions.append(_chatter(f"{name}:{number}", number, value))
    return sessions


def _chatter(where: str, line: int, value) -> Incoming:
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise Malformed(f"{where}: field format: not a Chatter export (an object with \"format\": \"{FORMAT}\"), "
                        "nor ChatGPT's conversations.json")
    if value.get("version") != VERSION:
        raise Malformed(f"{where}: field version: {value.get('version')!r}; this Chatter reads version {VERSION}")
    try:
        session = msgspec.convert(value.get("session"), SessionRecord)
    except msgspec.ValidationError as exc:
        raise Malformed(f"{where}: field session{_path(exc)}: {_words(exc)}") from None
    raw = value.get("messages")
    if not isinstance(raw, list):
        raise Malformed(f"{where}: field messages: expected a list")
    messages = []
    for index, item in enumerate(raw):
        try:
            record = msgspec.convert(item, MessageRecord)
        except msgspec.ValidationError as exc:
            raise Malformed(f"{where}: field messages[{index}]{_path(exc)}: {_words(exc)}") from None
        messages.append(msgspec.structs.replace(record, session_id=session.session_id))
    _check_tree(where, messages)
    return Incoming(line, session, messages)


def _path(exc: msgspec.ValidationError) -> str:
    """msgspec's ``- at `$.role``` as ``.role``."""
    words = str(exc)
    return words.split("`$", 1)[1].rstrip("`") if "`$" in words else ""


def _words(exc: msgspec.ValidationError) -> str:
    return str(exc).split(" - at ", 1)[0]


def _check_tree(where: str, messages: list[MessageRecord]) -> None:
    """Every message's id is new, and its parent one before it: what the coordinator checks too, said here with
    the line."""
    seen: set[str] = set()
    for index, record in enumerate(messages):
        if not record.message_id or len(record.message_id) > 64:
            raise Malformed(f"{where}: field messages[{index}].message_id: 1 to 64 characters")
        if record.message_id in seen:
            raise Malformed(f"{where}: field messages[{index}].message_id: {record.message_id} is given twice")
        if record.parent_id and record.parent_id not in seen:
            raise Malformed(f"{where}: field messages[{index}].parent_id: {record.parent_id} is not a message "
                            "before it")
        if record.role not in ("user", "assistant"):
            raise Malformed(f"{where}: field messages[{index}].role: user or assistant, not {record.role!r}")
        seen.add(record.message_id)


# ---------------------------------------------------------------- ChatGPT's data export

_CHATGPT = uuid.UUID("5f0c7e1a-0d4e-4f4a-9a57-6368617467ff")  # names the ids derived from ChatGPT's


def _chatgpt(name: str, text: str) -> list[Incoming]:
    """ChatGPT's ``conversations.json``: an array of conversations, each a ``mapping`` of nodes (a tree: each names
    its parent and children) and its ``current_node``. Each conversation becomes a session whose ids are derived from
    ChatGPT's (so importing the file again adds nothing), its user and assistant messages in the same tree (the
    system, tool and empty nodes left out, their children following their parent), its current node the active
    leaf."""
    decoder, at, sessions = json.JSONDecoder(), text.index("[") + 1, []
    number = 0
    while True:
        at = _skip(text, at)
        if at < len(text) and text[at] == "]":
            break
        line = text.count("\n", 0, at) + 1
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise Malformed(f"{name}:{exc.lineno}: not JSON ({exc.msg} at column {exc.colno})") from None
        number += 1
        sessions.append(_conversation(f"{name}:{line} (conversation {number})", line, value))
        at = _skip(text, at)
        if at < len(text) and text[at] == ",":
            at += 1
        elif at >= len(text) or text[at] != "]":
            raise Malformed(f"{name}:{text.count(chr(10), 0, at) + 1}: not JSON (expected , or ] after conversation "
                            f"{number})")
    return sessions


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _conversation(where: str, line: int, value) -> Incoming:
    if not isinstance(value, dict):
        raise Malformed(f"{where}: expected an object with a mapping (ChatGPT's export)")
    mapping = value.get("mapping")
    if not isinstance(mapping, dict) or not mapping:
        raise Malformed(f"{where}: field mapping: expected an object of nodes (ChatGPT's export)")
    conversation_id = value.get("conversation_id") or value.get("id")
    if not isinstance(conversation_id, str) or not conversation_id:
        raise Malformed(f"{where}: field id: expected the conversation's id (a string)")
    created = _number(value.get("create_time"), f"{where}: field create_time") or 0.0
    session_id = uuid.uuid5(_CHATGPT, conversation_id).hex
    kept: dict[str, MessageRecord] = {}  # node id -> its message
    order = _nodes_in_order(where, mapping)
    placed: dict[str, str] = {}  # node id -> the kept message it stands for (itself, or its nearest kept ancestor)
    system = None
    for node_id in order:
        node = mapping[node_id]
        parent = node.get("parent")
        parent_message = placed.get(parent, "") if parent else ""
        record, words = _message(f"{where}: field mapping.{node_id}.message", node.get("message"), created)
        if words is not None and system is None and not parent_message and words.strip():
            system = words  # a system prompt with words, before any message: the session's
        if record is None:
            placed[node_id] = parent_message
            continue
        message_id = uuid.uuid5(_CHATGPT, f"{conversation_id}/{node_id}").hex
        kept[node_id] = msgspec.structs.replace(record, message_id=message_id, session_id=session_id,
                                                parent_id=parent_message)
        placed[node_id] = message_id
    if not kept:
        raise Malformed(f"{where}: no user or assistant message with text in it")
    current = value.get("current_node")
    leaf = placed.get(current) if isinstance(current, str) else None
    title = value.get("title") if isinstance(value.get("title"), str) else ""
    updated = _number(value.get("update_time"), f"{where}: field update_time") or created
    session = SessionRecord(session_id=session_id, title=" ".join(title.split())[:500], title_set=bool(title.strip()),
                            system=system, created_at=created, updated_at=updated, active_leaf=leaf or None)
    return Incoming(line, session, list(kept.values()))


def _nodes_in_order(where: str, mapping: dict) -> list[str]:
    """The nodes, each after its parent: from the roots, children in the order the export lists them."""
    for node_id, node in mapping.items():
        if not isinstance(node, dict):
            raise Malformed(f"{where}: field mapping.{node_id}: expected a node (an object)")
        parent = node.get("parent")
        if parent is not None and (not isinstance(parent, str) or parent not in mapping):
            raise Malformed(f"{where}: field mapping.{node_id}.parent: {parent!r} is not a node of this mapping")
        children = node.get("children", [])
        if not isinstance(children, list) or not all(isinstance(c, str) and c in mapping for c in children):
            raise Malformed(f"{where}: field mapping.{node_id}.children: expected a list of this mapping's node ids")
    children_of: dict[str, list[str]] = {}
    for node_id, node in mapping.items():
        if node.get("parent") is not None:
            children_of.setdefault(node["parent"], []).append(node_id)
    order, stack = [], [node_id for node_id, node in reversed(list(mapping.items())) if node.get("parent") is None]
    seen: set[str] = set()
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            raise Malformed(f"{where}: field mapping.{node_id}.parent: the nodes go round in a circle")
        seen.add(node_id)
        order.append(node_id)
        stack.extend(reversed(children_of.get(node_id, [])))
    if len(order) != len(mapping):
        raise Malformed(f"{where}: field mapping: {len(mapping) - len(order)} nodes hang from no root (a circle)")
    return order


def _message(where: str, message, created: float) -> tuple[MessageRecord | None, str | None]:
    """A node's message as Chatter keeps it, or None for what Chatter has no message for (no message, a system or
    tool message, one without text); the second value is a system message's text."""
    if message is None:
        return None, None
    if not isinstance(message, dict):
        raise Malformed(f"{where}: expected an object or null")
    author = message.get("author")
    role = author.get("role") if isinstance(author, dict) else None
    if not isinstance(role, str):
        raise Malformed(f"{where}.author.role: expected a string")
    content = message.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    if content is not None and not isinstance(content, dict):
        raise Malformed(f"{where}.content: expected an object")
    if parts is not None and not isinstance(parts, list):
        raise Malformed(f"{where}.content.parts: expected a list")
    text = "\n".join(part for part in parts or () if isinstance(part, str))
    if "\x00" in text:
        raise Malformed(f"{where}.content.parts: a NUL character (\\x00), which cannot be stored")
    if role == "system":
        return None, text
    if role not in ("user", "assistant") or not text.strip():
        return None, None
    at = _number(message.get("create_time"), f"{where}.create_time") or created
    metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
    model = metadata.get("model_slug") if isinstance(metadata.get("model_slug"), str) else None
    status = "completed" if message.get("status") in (None, "finished_successfully") else "interrupted"
    return MessageRecord(message_id="", session_id="", role=role, content=text, status=status, created_at=at,
                         model=model if role == "assistant" else None), None


def _number(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e12:
        raise Malformed(f"{where}: expected a time in seconds")
    return float(value)
