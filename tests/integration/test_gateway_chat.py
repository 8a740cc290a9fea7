"""Chat Completions calls that name no session, with the real ``openai`` SDK against real processes: each call
sends its whole conversation, and the gateway finds the session that holds it by its chain (the earlier messages
and the reply they end with), on SQLite and PostgreSQL and after the coordinator restarts; a call that sends back
an earlier point of the conversation branches there; another user's identical conversation is not theirs."""
from __future__ import annotations

from services.mock_llm.script import reply_text
from tests.integration.stack import BOTH_DATABASES
from tests.integration.test_gateway import MODEL, add_user, gateway, sdk  # noqa: F401 (gateway: a fixture)

HEADER = "X-Chatter-Session"


def call(client, messages: list[dict]) -> tuple[str, str]:
    """One call as a front-end makes it, with no session named: (its session, the reply's text)."""
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    return raw.headers[HEADER], raw.parse().choices[0].message.content


@BOTH_DATABASES
def test_calls_without_a_session_continue_the_conversation_they_send_and_branch_where_it_differs(gateway):
    client = sdk(gateway)
    convo = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first [[mock tokens=6]]"}]
    session, first = call(client, convo)
    assert first == reply_text(convo, MODEL, 6)
    convo += [{"role": "assistant", "content": first}, {"role": "user", "content": "second [[mock tokens=5]]"}]
    again, second = call(client, convo)
    assert again == session  # found by what it said, not made anew
    history = gateway.cli_json("history", session)["messages"]
    assert [h["content"] for h in history] == ["first [[mock tokens=6]]", first, "second [[mock tokens=5]]", second]
    # after a coordinator restart the chains are read from the database
    gateway.kill("coordinator")
    gateway.start("coordinator")
    convo += [{"role": "assistant", "content": second}, {"role": "user", "content": "third [[mock tokens=4]]"}]
    later, third = call(client, convo)
    assert later == session and len(gateway.cli_json("history", session)["messages"]) == 6
    # a front-end's regenerate sends the conversation up to the first reply again: a branch from there
    branch, other = call(client, convo[:3] + [{"role": "user", "content": "second, edited [[mock tokens=3]]"}])
    assert branch == session
    path = [h["content"] for h in gateway.cli_json("history", session)["messages"]]
    assert path == ["first [[mock tokens=6]]", first, "second, edited [[mock tokens=3]]", other]
    assert gateway.cli_json("history", session)["messages"][2]["sibling_count"] == 2
    # a conversation Chatter never saw begins a session seeded with it, which the next call then finds
    foreign = [{"role": "user", "content": "from elsewhere"}, {"role": "assistant", "content": "an answer I had"},
               {"role": "user", "content": "go on [[mock tokens=3]]"}]
    seeded, going = call(client, foreign)
    assert seeded != session
    found, _ = call(client, foreign + [{"role": "assistant", "content": going},
                                       {"role": "user", "content": "and on [[mock tokens=2]]"}])
    assert found == seeded and len(gateway.cli_json("history", seeded)["messages"]) == 6
    # a reply the client altered is not the stored one: a new session, with the conversation as the client has it
    altered, _ = call(client, convo[:2] + [{"role": "assistant", "content": first + " (edited)"},
                                          {"role": "user", "content": "x [[mock tokens=2]]"}])
    assert altered not in (session, seeded)
    # the same conversation from another user is theirs alone: a session of their own
    bob = sdk(gateway, token=add_user(gateway, "bob"))
    bobs, _ = call(bob, convo[:3] + [{"role": "user", "content": "bob asks [[mock tokens=2]]"}])
    assert bobs not in (session, seeded, altered)
