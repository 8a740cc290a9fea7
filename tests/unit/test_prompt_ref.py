"""A prompt is stored once, by reference: what a reply keeps (``PromptPackage.ref``) builds its prompt again
(``prompt.rebuild``) exactly as it was sent, whatever the session held: left-out turns, cancelled and superseded
replies, kept or dropped thinking, a system prompt, a continuation in each style. And ``preview`` pages join."""
from __future__ import annotations

import dataclasses

import msgspec
from hypothesis import given, settings, strategies as st

from clients.api import Client
from protocol import messages as m, answers
from protocol.conversation import MessageRecord
from services.coordinator import pages
from services.coordinator.prompt import (assemble, continuation, original_of, package_of, prompt_hash, rebuild,
                                        sent_params, with_user)


def words(text: str, model: str) -> int:
    return len(text.split()) + 1


STATUSES = st.sampled_from(["completed", "completed", "cancelled", "error", "interrupted"])
TURN = st.tuples(st.text(" ab🙂", min_size=1, max_size=12), st.text(" xy数", max_size=12), STATUSES, st.booleans(),
                 st.text(" t", max_size=6))


def history_of(turns) -> list[MessageRecord]:
    out = []
    for i, (user, reply, status, superseded, thought) in enumerate(turns):
        out.append(MessageRecord(message_id=f"u{i}", session_id="s", role="user", content=user, status="completed",
                                 created_at=float(i)))
        out.append(MessageRecord(message_id=f"a{i}", session_id="s", role="assistant", content=reply, status=status,
                                 created_at=float(i), superseded=superseded, reasoning=thought))
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(TURN, max_size=8), st.text(" q", min_size=1, max_size=10), st.one_of(st.none(), st.text(" s", max_size=8)),
       st.integers(0, 60), st.booleans(), st.sampled_from([None, "vllm", "prefill", "prefix"]))
def test_a_reply_rebuilds_its_prompt_exactly_from_its_reference(turns, user_text, system, budget, keep, style):
    history = history_of(turns)
    try:
        prompt = assemble(system, history, user_text, "m", {"temperature": 0.5}, words, budget, keep_thinking=keep)
    except Exception:
        return  # over the budget: refused, nothing stored
    user = MessageRecord(message_id="u-new", session_id="s", role="user", content=user_text, status="completed",
                         created_at=99.0)
    prompt = with_user(prompt, "u-new")
    reply = MessageRecord(message_id="a-new", session_id="s", role="assistant", content="so far, the reply",
                          status="cancelled", created_at=99.0, model="m", params={"temperature": 0.5},
                          prompt_ref=prompt.ref, prompt_hash=prompt.prompt_hash)
    session = history + [user, reply]
    assert rebuild(session, reply) == (prompt.wire_messages(), list(prompt.dropped_message_ids), None)
    assert package_of(session, reply, words).prompt_hash == prompt.prompt_hash
    if style is None:
        return
    cont = continuation(dataclasses.replace(prompt, max_input_tokens=0), reply.content, style, words, reply.message_id)
    continued = msgspec.structs.replace(reply, prompt_ref=cont.ref, prompt_hash=cont.prompt_hash, content=reply.content + " and on")
    messages, _, problem = rebuild(session[:-1] + [continued], continued)
    assert problem is None and messages == cont.wire_messages()
    assert prompt_hash(messages, "m", sent_params(continued)) == cont.prompt_hash  # what preview checks
    assert original_of(cont, words).ref == prompt.ref  # a continuation of it extends the prompt first answered


def test_a_reference_is_small_and_says_when_a_message_it_needs_is_gone():
    history = history_of([("q" * 1000, "a" * 1000, "completed", False, "")] * 50)
    prompt = with_user(assemble("sys", history, "last", "m", {}, words, 0), "u-last")
    assert len(msgspec.json.encode(prompt.ref)) < 100  # the same size after 50 turns of 2,000 characters
    user = MessageRecord(message_id="u-last", session_id="s", role="user", content="last", status="completed",
                         created_at=1.0)
    reply = MessageRecord(message_id="a-last", session_id="s", role="assistant", content="", status="completed",
                          created_at=1.0, prompt_ref=prompt.ref)
    assert rebuild(history + [user, reply], reply)[2] is None
    assert "is no longer in the session" in rebuild(history + [reply], reply)[2]


def test_a_preview_over_a_frame_is_read_whole_page_by_page(monkeypatch):
    whole = answers.Preview(message_id="a", session_id="s", preview="p🙂" * 300, prompt_hash="h", model="m",
                            messages=[{"role": "user", "content": "x数" * 200}, {"role": "assistant", "content": "y"},
                                      {"role": "user", "content": "z" * 500}], dropped_message_ids=["u0", "a0"])
    monkeypatch.setattr(pages, "PAGE_BYTES", 300)  # a page holds a few hundred bytes of text

    class Paged(Client):
        def __init__(self):
            self.req_ids, self.asked = iter(range(1, 10_000)), 0

        def request(self, msg: m.Preview, attempts: int = 1):
            self.asked += 1
            return pages.preview_page(whole, msg.preview_offset, msg.index, msg.offset)

    client = Paged()
    got = client.preview("a")
    assert (got.preview, got.messages, got.dropped_message_ids, got.next) == (
        whole.preview, whole.messages, ["u0", "a0"], None)
    assert client.asked > 5
