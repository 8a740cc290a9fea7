"""What a conversation is made of, as the protocol carries it inside messages: a prompt message, a session's history
record (a message as the coordinator keeps it, and as a client sees it), and a tool call. Compare ``messages`` (the
frames each channel carries) and ``answers`` (what each rpc request is answered with)."""
from __future__ import annotations

from typing import Optional, Union

import msgspec
from msgspec import field

from protocol.codec import Int

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
    role: str  # "user" or "assistant"
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

    def client_view(self, content: str | None = None, reasoning: str | None = None) -> MessageView:
        """What a client's history shows of it: no prompt; ``content`` and ``reasoning`` instead of its own
        while it streams."""
        fields = {name: getattr(self, name) for name in MessageView.__struct_fields__}
        if content is not None:
            fields["content"] = content
        if reasoning is not None:
            fields["reasoning"] = reasoning
        return MessageView(**fields)


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
