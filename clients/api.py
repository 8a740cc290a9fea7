"""The client library: rpc to the coordinator and exact following of a reply's stream.

Every command that follows a reply uses ``follow``: it is subscribed before it sends, applies
deltas by offset, and takes a snapshot on a gap or a silence, so a slow or reconnecting
client always ends with the exact text.
"""
from __future__ import annotations

import itertools
import os
import time
from typing import Callable

import msgspec
import zmq

from clients.view import GAP, ReplyView
from protocol import codec, messages as m, answers
from protocol.conversation import MessageRecord, SessionRecord
import transport
from transport import curve


class ChatterError(Exception):
    """The coordinator refused a request, or could not be reached."""


class CoordinatorSilent(ChatterError):
    """No answer within the rpc timeout."""


class SessionDeleted(ChatterError):
    """The session followed was deleted (by this client or another)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id} was deleted")
        self.session_id = session_id


# a request answered once the persister has applied it (a rename, a deletion) waits this long at most
APPLIED_WAIT_MS = 30_000



def _env_ms(name: str, default: int) -> int:
    raw = os.environ.get(name) or str(default)
    if not raw.isdigit() or not 1 <= int(raw) <= 3_600_000:
        raise ChatterError(f"{name} must be a number of milliseconds from 1 to 3600000, got {raw!r}")
    return int(raw)


def encode_request(msg: m.Message) -> bytes:
    """A request's frame, or a ChatterError that names the input that cannot be sent."""
    for name in msg._FIELDS:
        value = getattr(msg, name)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = value[exc.start]
                what = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
                raise ChatterError(f"the {name.replace('_', ' ')} is not valid UTF-8 ({what} at character "
                                   f"{exc.start})") from None
    try:
        return msg.encode()
    except codec.FrameTooLarge:
        raise ChatterError(f"the request is too large to send: over {codec.MAX_FRAME_BYTES // (1024 * 1024)} MiB "
                           "(the coordinator's character limit is lower still: CHATTER_MAX_TEXT_CHARS)") from None
    except (OverflowError, ValueError) as exc:
        raise ChatterError(f"the request cannot be sent: {exc}") from None


SESSIONS_LIMIT = 100_000  # the most one ``Sessions`` request asks for (a page holds fewer)


def join_history(whole: answers.History, page: answers.History) -> answers.History:
    """A history's pages joined: a message cut at the end of one page goes on at the start of the next (from
    the offsets the next page was asked for), and its other fields are the later page's."""
    messages, rest = list(whole.messages), page.messages
    at = whole.next
    if rest and messages and at is not None and messages[-1].message_id == at.message_id == rest[0].message_id:
        cut, more = messages.pop(), rest[0]
        messages.append(msgspec.structs.replace(
            more, content=cut.content[:at.offset] + more.content,
            reasoning=cut.reasoning[:at.reasoning_offset] + more.reasoning))
        rest = rest[1:]
    return msgspec.structs.replace(page, messages=messages + list(rest))


def join_preview(whole: answers.Preview, page: answers.Preview) -> answers.Preview:
    """A preview's pages joined: its text goes on from the page's ``preview_offset``, and a message cut at the end
    of one page goes on at the start of the next (from its ``offset``); ``next`` is the later page's."""
    messages, rest = list(whole.messages), list(page.messages)
    if rest and len(messages) == page.index + 1:
        cut = messages.pop()
        rest[0] = {**rest[0], "content": str(cut["content"])[:page.offset] + rest[0]["content"]}
    return msgspec.structs.replace(page, preview=whole.preview[:page.preview_offset] + page.preview,
                                   messages=messages + rest, dropped_message_ids=whole.dropped_message_ids,
                                   preview_offset=0, index=0, offset=0)


IMPORT_PART_BYTES = 3 * 2**20  # an ImportSession's messages, at most: the frame holds 4 MiB


class Client:
    def __init__(self, rpc_timeout_ms: int | None = None, run_dir: str | None = None,
                 stream_hwm: int | None = None) -> None:
        self.run_dir = run_dir  # default: CHATTER_RUN_DIR
        self.rpc_timeout_ms = rpc_timeout_ms or _env_ms("CHATTER_RPC_TIMEOUT_MS", 5000)
        # how long a reply that ended waits to become durable before the client stops waiting for it
        self.durable_wait_ms = _env_ms("CHATTER_DURABLE_WAIT_MS", 30_000)
        self.ctx = zmq.Context()
        self.rpc_address = transport.endpoint(transport.RPC, self.run_dir)
        self._open_rpc()
        self.stream = transport.open_socket(self.ctx, transport.STREAM, bind=False, run_dir_path=self.run_dir,
                                            hwm=stream_hwm)
        self.req_ids = itertools.count(1)
        self.bad_frames = 0
        self.snapshots = 0  # how often following had to catch up: gaps, silences, attaches
        self.rpc_timeouts = 0

    def _open_rpc(self) -> None:
        self.rpc = transport.open_socket(self.ctx, transport.RPC, bind=False, run_dir_path=self.run_dir)
        # over tcp, a refused handshake (a key the coordinator does not know, CURVE on one side only) is told
        # at once, in words, instead of as silence until the rpc timeout
        self.rpc_monitor = curve.watch(self.rpc) if self.rpc_address.startswith("tcp://") else None

    def _close_rpc(self) -> None:
        if self.rpc_monitor is not None:
            self.rpc.disable_monitor()
            self.rpc_monitor.close(0)
        self.rpc.close(0)

    def close(self) -> None:
        self._close_rpc()
        self.stream.close(0)
        self.ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ rpc

    def request(self, msg: m.Message, attempts: int = 1, timeout_ms: int | None = None) -> answers.Result:
        """One rpc. ``attempts`` > 1 only for idempotent requests: a send carries its client request
        id, so asking again after a timeout can never start a second generation. ``timeout_ms``: for a request
        answered once the persister has applied it, longer than the rpc timeout."""
        for attempt in range(attempts):
            try:
                return self._request_once(msg, timeout_ms or self.rpc_timeout_ms)
            except CoordinatorSilent:
                self.rpc_timeouts += 1
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _request_once(self, msg: m.Message, timeout_ms: int) -> answers.Result:
        self.rpc.send(encode_request(msg))
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            left_ms = (deadline - time.monotonic()) * 1000
            if left_ms <= 0 or not self._wait_rpc(left_ms):
                # a DEALER would deliver this request late to a coordinator that comes up: start afresh
                self._close_rpc()
                self._open_rpc()
                hint = ("is it running, and are CHATTER_CURVE_SECRET and CHATTER_CURVE_SERVER this client's key and "
                        "the coordinator's?" if self.rpc_monitor is not None else "is it running (make run)?")
                if timeout_ms > self.rpc_timeout_ms:  # answered once applied: the persister may be what is away
                    hint += (" If it is, the persister has not applied it yet (chatter status); the coordinator keeps "
                             "it and applies it when the persister is back")
                raise CoordinatorSilent(f"the coordinator did not answer within {timeout_ms} ms at "
                                        f"{self.rpc_address}: {hint}")
            try:
                reply = codec.decode(self.rpc.recv(), (m.Reply,))
            except codec.FrameError:
                self.bad_frames += 1
                continue
            if reply.req_id != msg.req_id:
                continue  # the answer to an earlier request that timed out
            if not reply.ok:
                raise ChatterError(reply.error or "request refused")
            return reply.result

    def _wait_rpc(self, timeout_ms: float) -> bool:
        """Wait for an answer; a refused handshake is a ChatterError at once."""
        if self.rpc_monitor is None:
            return bool(self.rpc.poll(timeout_ms))
        poller = zmq.Poller()
        poller.register(self.rpc, zmq.POLLIN)
        poller.register(self.rpc_monitor, zmq.POLLIN)
        ready = dict(poller.poll(timeout_ms))
        if self.rpc_monitor in ready and (words := curve.refusal(self.rpc_monitor)) is not None:
            raise ChatterError(f"cannot talk to the coordinator at {self.rpc_address}: {words}")
        return self.rpc in ready

    def rename(self, session_id: str, title: str) -> answers.SessionRenamed:
        """A title given by hand (kept from then on); "" gives back the automatic one. Returns once applied."""
        if len(title) > m.TITLE_CHARS:
            raise ChatterError(f"the title is {len(title):,} characters; at most {m.TITLE_CHARS}")
        return self.request(m.RenameSession(next(self.req_ids), session_id, title), timeout_ms=APPLIED_WAIT_MS)

    def delete_sessions(self, session_ids: list[str]) -> list[str]:
        """Delete these sessions (a reply streaming in one is stopped first); returns the ids deleted, once the
        persister has applied it. More than ``DELETE_AT_ONCE`` go in turn."""
        deleted: list[str] = []
        for start in range(0, len(session_ids), m.DELETE_AT_ONCE):
            batch = session_ids[start:start + m.DELETE_AT_ONCE]
            deleted += self.request(m.DeleteSessions(next(self.req_ids), batch), timeout_ms=APPLIED_WAIT_MS).deleted
        return deleted

    def search(self, query: str, session_id: str | None = None, limit: int = 20) -> list[answers.SearchHit]:
        """The messages that hold every word, "phrase" and prefix* of ``query``, best first."""
        if len(query) > m.SEARCH_CHARS:
            raise ChatterError(f"the search is {len(query):,} characters; at most {m.SEARCH_CHARS}")
        return self.request(m.Search(next(self.req_ids), query, session_id, limit)).hits

    def edit(self, session_id: str, message: str, text: str, client_request_id: str) -> answers.Result:
        """A user message written again, on a new branch, and a reply to it; retried safely (one per request id)."""
        return self.request(m.EditMessage(next(self.req_ids), session_id, message, text, client_request_id),
                            attempts=3)

    def switch(self, session_id: str, message: str, sibling: int | None = None) -> answers.BranchSwitched:
        """The branch through ``message`` (or through its ``sibling``, 0-based) active; returns once applied."""
        return self.request(m.SwitchBranch(next(self.req_ids), session_id, message, sibling),
                            timeout_ms=APPLIED_WAIT_MS)

    def fork(self, session_id: str, message: str | None = None) -> answers.SessionForked:
        """A new session holding the active branch up to ``message`` (None: all of it); returns once applied."""
        return self.request(m.ForkSession(next(self.req_ids), session_id, message), timeout_ms=APPLIED_WAIT_MS)

    def delete_branch(self, session_id: str, message: str) -> answers.BranchDeleted:
        """A message and every message after it on any branch, gone; returns once applied."""
        return self.request(m.DeleteBranch(next(self.req_ids), session_id, message), timeout_ms=APPLIED_WAIT_MS)

    def tree(self, session_id: str) -> answers.Tree:
        """Every message of a session as a tree's nodes, page by page."""
        whole = self.request(m.SessionTree(next(self.req_ids), session_id))
        nodes = list(whole.nodes)
        while whole.next is not None:
            whole = self.request(m.SessionTree(next(self.req_ids), session_id, whole.next))
            nodes += whole.nodes
        return msgspec.structs.replace(whole, nodes=nodes, offset=0, next=None)

    def export(self, session_id: str) -> answers.SessionExport:
        """A session whole, every branch and field, page by page (a message cut at a page's end goes on)."""
        whole = self.request(m.ExportSession(next(self.req_ids), session_id))
        while whole.next is not None:
            at = whole.next
            whole = join_history(whole, self.request(m.ExportSession(next(self.req_ids), session_id, at.message_id,
                                                                     at.offset, at.reasoning_offset)))
        return whole

    def import_session(self, session: SessionRecord, messages: list[MessageRecord]) -> answers.SessionImported:
        """A session given back whole, in parts that each fit a frame; returns once every message it adds is
        applied. A message too large for a frame alone is refused here, before any part is sent."""
        parts: list[list[MessageRecord]] = [[]]
        size = 0
        for record in messages:
            record_size = len(msgspec.msgpack.encode(record))
            if record_size > IMPORT_PART_BYTES:
                raise ChatterError(f"message {record.message_id} of session {session.session_id} is "
                                   f"{record_size / 2**20:.1f} MiB; an import takes messages up to "
                                   f"{IMPORT_PART_BYTES / 2**20:.0f} MiB")
            if parts[-1] and (size + record_size > IMPORT_PART_BYTES or len(parts[-1]) == m.IMPORT_PART_MESSAGES):
                parts.append([])
                size = 0
            parts[-1].append(record)
            size += record_size
        for number, part in enumerate(parts, 1):
            last = number == len(parts)
            done = self.request(m.ImportSession(next(self.req_ids), session, part, last),
                                timeout_ms=APPLIED_WAIT_MS if last else None)
        return done

    def new_session(self, system: str | None = None, model: str | None = None,
                    max_input_tokens: int | None = None, save: bool = True) -> str:
        """A new session's id; ``save=False``: it is stored with the first message sent to it (see NewSession)."""
        return self.request(m.NewSession(next(self.req_ids), system, model, max_input_tokens, save)).session_id

    def send(self, session_id: str, text: str, client_request_id: str, model: str | None = None) -> answers.Result:
        return self.request(m.Send(next(self.req_ids), session_id, text, client_request_id, model), attempts=3)

    def cancel(self, session_id: str, generation_id: str | None = None, seen_len: int | None = None,
               seen_reasoning_len: int | None = None) -> answers.Result:
        return self.request(m.Cancel(next(self.req_ids), session_id, generation_id, seen_len, seen_reasoning_len))

    def snapshot(self, session_id: str, generation_id: str | None = None) -> answers.Snapshot:
        """A reply's snapshot, whole: its pages asked for in turn, each going on from the texts so far (a page
        begins at a shorter text's end when a cancel cut it meanwhile)."""
        self.snapshots += 1
        page = self.request(m.Snapshot(next(self.req_ids), session_id, generation_id))
        text, reasoning, user_text = page.text, page.reasoning, page.user_text
        while page.more:
            page = self.request(m.Snapshot(next(self.req_ids), session_id, page.generation_id, len(text),
                                           len(reasoning)))
            text = text[:page.offset] + page.text
            reasoning = reasoning[:page.reasoning_offset] + page.reasoning
        return msgspec.structs.replace(page, text=text, reasoning=reasoning, user_text=user_text, offset=0,
                                       reasoning_offset=0, more=False)

    def regenerate(self, session_id: str, client_request_id: str) -> answers.Result:
        return self.request(m.Regenerate(next(self.req_ids), session_id, client_request_id), attempts=3)

    def continue_reply(self, session_id: str, client_request_id: str) -> answers.Result:
        """Continue the session's last reply where it was cut; retried safely (one continuation per request id)."""
        return self.request(m.Continue(next(self.req_ids), session_id, client_request_id), attempts=3)

    def sessions(self, limit: int = 50) -> list[answers.SessionSummary]:
        """The ``limit`` most recently active sessions, page by page (a page holds what fits a frame)."""
        listed: list[answers.SessionSummary] = []
        while len(listed) < limit:
            last = listed[-1] if listed else None
            page = self.request(m.Sessions(next(self.req_ids), min(limit - len(listed), SESSIONS_LIMIT),
                                           last and last.last_activity, last and last.session_id))
            listed.extend(page.sessions)
            if not page.more or not page.sessions:
                break
        return listed[:limit]

    def resolve(self, prefix: str) -> str:
        """The one session whose id starts with ``prefix``; refused when none or several do."""
        return self.request(m.ResolveSession(next(self.req_ids), prefix)).session_id

    def configure(self, session_id: str, system: str | None = None, max_input_tokens: int | None = None,
                  model: str | None = None, params: dict | None = None) -> answers.Result:
        return self.request(m.ConfigureSession(next(self.req_ids), session_id, system, max_input_tokens, model,
                                               params))

    def status(self, session_id: str | None = None) -> answers.Result:
        return self.request(m.Status(next(self.req_ids), session_id))

    def history(self, session_id: str) -> answers.History:
        """A session's whole history, page by page: a message cut at a page's end goes on in the next."""
        whole = self.request(m.History(next(self.req_ids), session_id))
        while whole.next is not None:
            at = whole.next
            page = self.request(m.History(next(self.req_ids), session_id, at.message_id, at.offset,
                                          at.reasoning_offset))
            whole = join_history(whole, page)
        return whole

    def preview(self, message_id: str) -> answers.Preview:
        """A reply's exact prompt, whole: page by page, a message cut at a page's end going on in the next."""
        whole = self.request(m.Preview(next(self.req_ids), message_id))
        while whole.next is not None:
            whole = join_preview(whole, self.request(m.Preview(next(self.req_ids), message_id, *whole.next)))
        return whole

    # ------------------------------------------------------------ stream

    def subscribe(self, session_id: str) -> None:
        self.stream.setsockopt(zmq.SUBSCRIBE, transport.topic_prefix(session_id))

    def unsubscribe(self, session_id: str) -> None:
        self.stream.setsockopt(zmq.UNSUBSCRIBE, transport.topic_prefix(session_id))

    def follow(self, session_id: str, generation_id: str, *, on_text: Callable[[str, ReplyView], None] | None = None,
               on_thinking: Callable[[str, ReplyView], None] | None = None,
               interrupt: Callable[[], str | None] | None = None, attach: bool = False,
               silence_ms: int = 1000, shown: tuple[str, str] = ("", "")) -> ReplyView:
        """Follow one generation to its durable end (or until ``interrupt`` says ``detach``).

        The caller has subscribed to the session. ``attach`` starts from a snapshot, for a reply
        already under way. ``on_thinking`` and ``on_text`` get the thinking and the answer as they grow.
        ``interrupt`` is polled: ``"cancel"`` cancels the reply at exactly the text rendered so far, after
        which nothing more is rendered; ``"detach"`` leaves it running. ``shown``: the answer and thinking this
        caller already rendered of the message (a continuation of it goes on from there), not given again.
        """
        away_since: float | None = None  # when the coordinator stopped answering, while it does not

        def catch_up() -> None:
            """A snapshot (the Clone pattern's catch-up). A coordinator that does not answer may be restarting,
            and it adopts the reply in flight: keep following, up to CHATTER_DURABLE_WAIT_MS of silence."""
            nonlocal away_since
            try:
                snap = self.snapshot(session_id, generation_id)
            except CoordinatorSilent:
                away_since = away_since or time.monotonic()
                if (time.monotonic() - away_since) * 1000 >= self.durable_wait_ms:
                    raise
                return
            away_since = None
            view.apply_snapshot(snap)

        def render() -> None:
            thought = view.take_new_thinking()
            if thought and on_thinking is not None:
                on_thinking(thought, view)
            fresh = view.take_new_text()
            if fresh and on_text is not None:
                on_text(fresh, view)

        view = ReplyView(generation_id)
        view.answer.set(shown[0])
        view.thinking.set(shown[1])
        if attach:
            catch_up()
        last_event = time.monotonic()
        ended_at: float | None = None  # when a snapshot first said the reply ended, not yet durable
        while view.final is None:
            if view.ended is not None:
                ended_at = ended_at or time.monotonic()
                if (time.monotonic() - ended_at) * 1000 >= self.durable_wait_ms:
                    view.stop_waiting_for_durability()
                    break
            render()
            action = interrupt() if interrupt is not None and view.kept_text is None else None
            if action == "detach":
                return view
            if action == "cancel":
                try:
                    seen_len, seen_reasoning_len = view.cancel()
                    self.cancel(session_id, generation_id, seen_len, seen_reasoning_len)
                except ChatterError:
                    pass  # it ended first; its final event follows
            if self.stream.poll(50):
                last_event = time.monotonic()
                try:
                    event = codec.decode(transport.payload_of(self.stream.recv()), m.STREAM_EVENTS)
                except codec.FrameError:
                    self.bad_frames += 1
                    continue
                if type(event) is m.SessionChanged:
                    if event.change == "deleted" and event.session_id == session_id:
                        raise SessionDeleted(session_id)
                    continue
                if view.apply(event) == GAP:
                    catch_up()
            elif (time.monotonic() - last_event) * 1000 >= silence_ms:
                last_event = time.monotonic()  # a quiet stream, a lost final, or a restarted coordinator: ask
                catch_up()
        render()
        return view

    def next_generation(self, session_id: str, after: set[str], stop: Callable[[], bool],
                        poll_ms: int = 1000) -> dict | None:
        """Wait for a reply of the session not in ``after``: the snapshot says if one is under way or
        done, a ``started`` event says when one begins. Returns that snapshot, or None when stopped."""
        while not stop():
            snap = self.snapshot(session_id)
            if snap.generation_id and snap.generation_id not in after:
                return snap
            deadline = time.monotonic() + poll_ms / 1000
            while time.monotonic() < deadline and not stop():
                if not self.stream.poll(50):
                    continue
                try:
                    event = codec.decode(transport.payload_of(self.stream.recv()), m.STREAM_EVENTS)
                except codec.FrameError:
                    self.bad_frames += 1
                    continue
                if type(event) is m.SessionChanged:
                    if event.change == "deleted" and event.session_id == session_id:
                        raise SessionDeleted(session_id)
                    continue
                if event.generation_id not in after:
                    break  # something new: the snapshot above tells what
        return None
