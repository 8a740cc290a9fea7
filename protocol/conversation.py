"""What a conversation is made of, as the protocol carries it inside messages: a prompt message, a session's history
record (a message as the coordinator keeps it, and as a client sees it), and a tool call. Compare ``messages`` (the
frames each channel carries) and ``answers`` (what each rpc request is answered with)."""
from __future__ import annotations

import hashlib
from typing import Optional, Union

import msgspec
from msgspec import field

from protocol.codec import Int
from protocol.lifecycle import NOT_PROMPTED

# {"role": ..., "content": ...}, and a continuation's trailing assistant message may carry "prefix": true
# (DeepSeek, Mistral): the openai client takes it as it is
# and an assistant message that called tools carries "tool_calls", as OpenAI's API has them
PromptMessage = dict[str, Union[str, bool, list, None]]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# the ids of messages left out of a prompt that an answer lists: a long session may leave out 100,000, whose ids
# alone would not fit a frame; the count says how many there are
DROPPED_SHOWN = 1000  # as reasoning models write their thinking inline in content


class MessageView(msgspec.Struct, kw_only=True):
    """A history record as clients see it: everything but the prompt it was generated from (that is
    ``chatter preview``'s)."""

    message_id: str
    session_id: str
    role: str  # "user" or "assistant", or "tool": a tool's result (the gateway's ``function_call_output``)
    content: str
    status: str
    created_at: float
    generation_id: Optional[str] = None
    prompt_hash: Optional[str] = None
    model: Optional[str] = None
    stats: dict = field(default_factory=dict)
    error: Optional[str] = None
    superseded: bool = False
    client_request_id: Optional[str] = None
    dropped_message_ids: list[str] = field(default_factory=list)  # the newest DROPPED_SHOWN of those left out...
    dropped_count: Int = 0  # ...of this many (0 with ids: an earlier version's record, all of them listed)
    # the tools the model called, as OpenAI's API has them: [{"id", "type": "function", "function": {"name",
    # "arguments"}}], the arguments' text as the model streamed it (finish_reason "tool_calls")
    tool_calls: list[dict] = field(default_factory=list)
    reasoning: str = ""  # a reasoning model's thinking before its answer
    # its place in the session's tree (DESIGN.md, "Sessions are trees"): the message it follows ("" for a first
    # message; None only in a row of an earlier version, read in order: ``sessions.SessionState.from_stored``),
    # and, in a history, which of its parent's children it is (0-based, oldest first) of how many
    parent_id: Optional[str] = None
    sibling_index: Int = 0
    sibling_count: Int = 1
    tool_call_id: Optional[str] = None  # a tool's result (role "tool"): the call it answers


class MessageRecord(MessageView, kw_only=True):
    """One message of a session as the coordinator keeps it in memory and reads it back from the database:
    the one shape of a history record, its prompt included."""

    preview: Optional[str] = None  # a copy of its prompt, as an earlier version stored it...
    prompt_messages: Optional[list[PromptMessage]] = None
    params: Optional[dict] = None  # the request's params, part of the prompt hash
    # ...or, from this version on, how to build it again (``services.coordinator.prompt.rebuild``): the system
    # prompt, the user message answered, how many turns before it were left out, whether thinking was kept, and
    # a continuation's reply so far (its id, length and style)
    prompt_ref: Optional[dict] = None
    # ``turn_chain`` of the conversation up to this message: stored with a user's message or a tool's result
    # (the gateway finds a Chat Completions call's session by it); a reply's is worked out when needed
    chain: Optional[str] = None

    def client_view(self, content: str | None = None, reasoning: str | None = None) -> MessageView:
        """What a client's history shows of it: no prompt; ``content`` and ``reasoning`` instead of its own
        while it streams."""
        fields = {name: getattr(self, name) for name in MessageView.__struct_fields__}
        if content is not None:
            fields["content"] = content
        if reasoning is not None:
            fields["reasoning"] = reasoning
        return MessageView(**fields)


class SessionRecord(msgspec.Struct, kw_only=True):
    """A session's own fields, as an export carries them (``chatter export``) and an import gives them back."""

    session_id: str
    title: str = ""
    title_set: bool = False
    system: Optional[str] = None
    model: Optional[str] = None
    max_input_tokens: Optional[Int] = None
    settings: Optional[dict] = None  # /config's: params, stream, continue_style
    created_at: float = 0.0
    updated_at: float = 0.0
    active_leaf: Optional[str] = None  # the last message of the active branch


def turn_chain(parent_chain: str, role: str, content: str) -> str:
    """A conversation up to one of its messages, as one hash: the chain of the message before it ("" for the
    first), its role and its text. Two conversations with the same messages in the same order have the same
    chain, whichever session holds them (a Chat Completions call sends its whole conversation each time)."""
    return hashlib.sha256(f"{parent_chain}\x1f{role}\x1f{content}".encode("utf-8")).hexdigest()


def prompt_message(record: MessageRecord, keep_thinking: bool) -> dict:
    """A message of the session as a prompt carries it: a reply that called tools with its calls, as OpenAI's
    API takes them back."""
    message = {"role": record.role, "content": prompt_content(record, keep_thinking)}
    if record.tool_calls:
        message["tool_calls"] = [dict(call) for call in record.tool_calls]
    if record.role == "tool":
        message["tool_call_id"] = record.tool_call_id or ""
    return message


def in_prompt(record: MessageRecord) -> bool:
    """User turns always count; a reply only if it completed (one that was regenerated is a sibling of its
    replacement, on another branch, so never on the path that a prompt is built from)."""
    return record.role != "assistant" or record.status not in NOT_PROMPTED


def prompt_content(record: MessageRecord, keep_thinking: bool) -> str:
    """What a message says in a prompt. An earlier reply's thinking is left out, as DeepSeek and Qwen advise
    (their chat templates drop it too); kept, it goes inline before the answer, as the model wrote it."""
    if keep_thinking and record.reasoning:
        return f"{THINK_OPEN}{record.reasoning}{THINK_CLOSE}{record.content}"
    return record.content


def tool_call_at(calls: list[dict], index: int, call_id: str = "", name: str = "") -> dict | None:
    """The call at ``index`` of a reply's tool calls (OpenAI's shape), a new one when it is the next, its id and
    name taken once known (a name in pieces is joined; one sent again whole is kept once); None past the next
    (a gap). Its arguments are the caller's to join: by offset, or as they come."""
    if index > len(calls):
        return None
    if index == len(calls):
        calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    call = calls[index]
    if call_id:
        call["id"] = call_id
    if name and call["function"]["name"] != name:
        call["function"]["name"] += name
    return call
