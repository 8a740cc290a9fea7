"""What the gateway reads from a request: a ``POST /v1/responses`` body checked into a ``CreateAsk`` (its input's
turns, tools and options), and the items a message is, as the Responses and Conversations APIs list them."""
from __future__ import annotations

import uuid
from typing import NamedTuple

from clients.gateway.errors import ApiError
from protocol import messages as m
from protocol.conversation import MessageRecord

TEXT_CHARS = 1_000_000  # an input's text, at most (the coordinator's own limit is lower: CHATTER_MAX_TEXT_CHARS)


def input_items_of(message_id: str, index: int, msg: dict) -> list[dict]:
    """A prompt message as the Responses API's input items."""
    return items_of(f"in_{message_id}_{index}", msg["role"], str(msg["content"]), msg.get("tool_calls") or (),
                    msg.get("tool_call_id"), "completed")


def items_of(item_id: str, role: str, content: str, calls, call_id: str | None, status: str) -> list[dict]:
    """A message as the Responses API's items: a message (a user's text as input, a reply's as output), a reply's
    calls as ``function_call`` items after it, a tool's result as a ``function_call_output``."""
    if role == "tool":
        return [{"id": item_id, "type": "function_call_output", "call_id": call_id or "", "output": content,
                 "status": status}]
    items = []
    if content or not calls:
        part = ({"type": "output_text", "text": content, "annotations": [], "logprobs": []} if role == "assistant"
                else {"type": "input_text", "text": content})
        items.append({"id": item_id, "type": "message", "role": role, "status": status, "content": [part]})
    items += [{"id": f"{item_id}_{number}", "type": "function_call", "call_id": call.get("id", ""),
               "name": call["function"]["name"], "arguments": call["function"]["arguments"], "status": status}
              for number, call in enumerate(calls)]
    return items


def seed_records(session_id: str, turns: list[Turn]) -> list[MessageRecord]:
    """Turns as a session's messages, each after the one before; a ``function_call`` item after the reply that
    made it is one of that reply's calls."""
    records: list[MessageRecord] = []
    for turn in turns:
        if turn.calls and records and records[-1].role == "assistant" and not turn.text:
            records[-1].tool_calls += turn.calls
            continue
        records.append(MessageRecord(message_id=uuid.uuid4().hex, session_id=session_id, role=turn.role,
                                     content=turn.text, status="completed", created_at=0.0,
                                     parent_id=records[-1].message_id if records else "",
                                     tool_calls=list(turn.calls), tool_call_id=turn.call_id))
    return records


class Turn(NamedTuple):
    """A message of a request's input: a user's, a reply's (with the calls it made), or a tool's result."""

    role: str  # user, assistant, system or tool
    text: str
    calls: tuple = ()  # an assistant's tool calls, Chat Completions' shape
    call_id: str | None = None  # a tool's result: the call it answers


class CreateAsk:
    """A ``POST /v1/responses`` body, checked: its last user message, the turns before it, and the options."""

    def __init__(self) -> None:
        self.text = ""
        self.earlier: list[Turn] = []
        self.tool_results: list[m.ToolOutput] = []  # the results this reply follows (the input's last items)
        self.tools: list[dict] | None = None  # as sent upstream: Chat Completions' shape
        self.tool_choice = None
        self.tools_given: list[dict] = []  # as the request gave them, for the response object
        self.tool_choice_given: str | dict = "auto"
        self.instructions: str | None = None
        self.model: str | None = None
        self.stream = self.background = False
        self.store = True
        self.previous_response_id: str | None = None
        self.conversation: str | None = None
        self.params: dict = {}
        self.user = ""  # who asks (signed in by the gateway)

    def send(self, req_id: int, session_id: str, key: str, after: str | None) -> m.Send:
        return m.Send(req_id, session_id, self.text, key, self.model, after, tools=self.tools,
                      tool_choice=self.tool_choice, tool_results=self.tool_results or None)

    def take_last(self, turns: list[Turn]) -> None:
        """What this reply answers, from the end of the input: a user message, the tools' results before it, or
        both; the rest are earlier turns (a system message among them is the instructions)."""
        turns = list(turns)
        if turns and turns[-1].role == "user":
            self.text = turns.pop().text
        while turns and turns[-1].role == "tool":
            turn = turns.pop()
            self.tool_results.insert(0, m.ToolOutput(turn.call_id, turn.text))
        if not self.text.strip() and not self.tool_results:
            raise ApiError(400, "the input must end with a user message, or with tools' results "
                           "(function_call_output)", param="input")
        system = [turn.text for turn in turns if turn.role == "system"]
        if system and self.instructions is None:
            self.instructions = "\n\n".join(system)
        self.earlier = [turn for turn in turns if turn.role != "system"]

    def follows_stored(self) -> None:
        """With ``previous_response_id`` or ``conversation`` the session holds the earlier turns: only the calls
        the input echoes back may come before what this reply answers (they are in the session already)."""
        if any(turn.role != "assistant" or turn.text for turn in self.earlier):
            raise ApiError(400, "earlier turns go in a new conversation; with conversation or previous_response_id, "
                           "give only the new user message and tools' results", param="input")
        self.earlier = []


KNOWN = {"input", "instructions", "model", "stream", "background", "store", "previous_response_id", "conversation",
         "temperature", "max_output_tokens", "metadata", "user", "parallel_tool_calls", "tool_choice", "tools",
         "top_p", "truncation", "text", "reasoning", "stream_options", "include", "service_tier",
         "safety_identifier", "prompt_cache_key"}


def parse_create(body: dict) -> CreateAsk:
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise ApiError(400, f"unknown parameter: {unknown[0]!r}", param=unknown[0], code="unknown_parameter")
    ask = CreateAsk()
    ask.instructions = _string(body, "instructions", 1_000_000)
    ask.take_last(input_turns(body.get("input")))
    ask.model = _string(body, "model", 128)
    for name in ("stream", "background", "store"):
        value = body.get(name)
        if value is not None and not isinstance(value, bool):
            raise ApiError(400, f"{name} must be true or false", param=name)
    ask.stream, ask.background = bool(body.get("stream")), bool(body.get("background"))
    ask.store = body.get("store") is not False
    ask.previous_response_id = _string(body, "previous_response_id", 80)
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    if conversation is not None and (not isinstance(conversation, str) or not 1 <= len(conversation) <= 64):
        raise ApiError(400, "conversation must be a conversation id (or {\"id\": ...})", param="conversation")
    ask.conversation = conversation
    if ask.conversation and ask.previous_response_id:
        raise ApiError(400, "give conversation or previous_response_id, not both", param="conversation")
    if ask.conversation or ask.previous_response_id:
        ask.follows_stored()
    read_tools(body, ask)
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ApiError(400, "temperature must be a number from 0 to 2", param="temperature")
        ask.params["temperature"] = temperature
    tokens = body.get("max_output_tokens")
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens < 2**31:
            raise ApiError(400, "max_output_tokens must be a positive integer", param="max_output_tokens")
        ask.params["max_tokens"] = tokens
    return ask


def input_turns(value) -> list[Turn]:
    """The input as turns: a string is one user message; a list holds message items (their content a string or a
    list of text parts), the function calls a reply made (``function_call``, as a reply's output has them) and
    the tools' results (``function_call_output``). A reply's reasoning items are passed over: an earlier
    reply's thinking is not sent back (``protocol.conversation.prompt_content``)."""
    if isinstance(value, str):
        if not value.strip():
            raise ApiError(400, "the input is empty", param="input")
        return [Turn("user", text_ok(value, "input"))]
    if not isinstance(value, list) or not value:
        raise ApiError(400, "input must be a string or a list of messages", param="input")
    turns = []
    for index, item in enumerate(value):
        where = f"input[{index}]"
        kind = item.get("type", "message") if isinstance(item, dict) else type(item).__name__
        if kind == "function_call":
            turns.append(Turn("assistant", "", (_function_call(item, where),)))
        elif kind == "function_call_output":
            turns.append(Turn("tool", _tool_output(item, where), call_id=_call_id(item, where)))
        elif kind == "reasoning":
            continue
        elif kind != "message":
            raise ApiError(400, f"{where}: Chatter takes message, function_call and function_call_output items, "
                           f"not {kind!r}", param=where)
        else:
            role = {"developer": "system"}.get(item.get("role"), item.get("role"))
            if role not in ("user", "assistant", "system"):
                raise ApiError(400, f"{where}.role must be user, assistant, system or developer",
                               param=f"{where}.role")
            turns.append(Turn(role, text_ok(_content_text(item.get("content"), where), f"{where}.content")))
    return turns


def _call_id(item: dict, where: str) -> str:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not 1 <= len(call_id) <= 128:
        raise ApiError(400, f"{where}.call_id must be the call's id (1 to 128 characters)", param=f"{where}.call_id")
    return call_id


def _function_call(item: dict, where: str) -> dict:
    name, arguments = item.get("name"), item.get("arguments")
    if not isinstance(name, str) or not isinstance(arguments, str):
        raise ApiError(400, f"{where}: a function_call has a name and its arguments as a string", param=where)
    return {"id": _call_id(item, where), "type": "function",
            "function": {"name": name[:64], "arguments": text_ok(arguments, f"{where}.arguments")}}


def _tool_output(item: dict, where: str) -> str:
    output = item.get("output")
    if isinstance(output, list):
        output = _content_text(output, where)
    if not isinstance(output, str):
        raise ApiError(400, f"{where}.output must be a string or text parts", param=f"{where}.output")
    return text_ok(output, f"{where}.output")


def read_tools(body: dict, ask: CreateAsk) -> None:
    """The request's function tools and tool_choice, in the Responses API's shape (a tool's name, description and
    parameters beside its type), as Chat Completions takes them upstream; anything but a function is refused."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is not None:
        if not isinstance(tools, list) or len(tools) > m.TOOLS_AT_MOST:
            raise ApiError(400, f"tools must be a list of at most {m.TOOLS_AT_MOST} tools", param="tools")
        ask.tools = [_chat_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools)] or None
        ask.tools_given = tools
    if choice is not None:
        ask.tool_choice_given = choice
        if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
            choice = {"type": "function", "function": {"name": choice.get("name")}}
        ask.tool_choice = choice


def _chat_tool(tool, where: str) -> dict:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
        raise ApiError(400, f"{where}: Chatter passes function tools to the model; a {kind!r} tool cannot be "
                       "passed", param=where)
    if isinstance(tool.get("function"), dict):  # Chat Completions' shape already
        return {"type": "function", "function": tool["function"]}
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if key in tool}
    return {"type": "function", "function": function}


def _content_text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(part.get("text"), str):
            raise ApiError(400, f"{where}.content[{index}]: Chatter sends text to the model; a {kind or 'part'!r} "
                           "cannot be sent", param=f"{where}.content[{index}]")
        texts.append(part["text"])
    return "".join(texts)


def text_ok(text: str, param: str) -> str:
    if len(text) > TEXT_CHARS:
        raise ApiError(400, f"{param} is {len(text):,} characters; the most is {TEXT_CHARS:,}", param=param)
    if "\x00" in text:
        raise ApiError(400, f"{param} contains a NUL character, which cannot be stored", param=param)
    return text


def _string(body: dict, name: str, most: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > most:
        raise ApiError(400, f"{name} must be a string of at most {most:,} characters", param=name)
    return text_ok(value, name)

