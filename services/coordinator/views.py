"""The coordinator's read-only answers: a reply's snapshot, a session's history (its active branch), its tree, the
session whole (an export), the sessions list, a prefix resolved, a reply's exact prompt, and status. A part of
``machine.Coordinator``, given what it reads; pure, like all of the machine. Each answer that can grow with the
data is a page (``pages.py``)."""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import msgspec

from protocol import messages as m, answers
from protocol.conversation import DROPPED_SHOWN
from services.coordinator import pages, sessions
from services.coordinator.book import SessionBook
from services.coordinator.effects import RequestRefused
from services.coordinator.generation import stats
from services.coordinator.generators import Generators
from services.coordinator.persistence import PersistTracker
from services.coordinator.prompt import prompt_hash, rebuild, render_preview, sent_params
from services.coordinator.stream import Streams


@dataclass
class Health:
    """What status tells of the processes around the machine: the persister as it last reported, and the
    shell's database reads."""

    pid: int = 0  # the coordinator's, so a load test can read each process's CPU accounting
    persister_pid: int = 0
    persister_seen_at: float | None = None  # the last message from the persister (it heartbeats)
    persister_stats: answers.PersisterTotals | None = None  # its latest totals
    reads: tuple[float | None, str | None] = (None, None)  # the shell's database reads: (failing since, error)
    reads_last_failure: tuple[float, str] | None = None  # and their last failure, kept after it passed


class Views:
    def __init__(self, settings, count_tokens, book: SessionBook, streams: Streams, generators: Generators,
                 persisted: PersistTracker, counters: dict, health: Health) -> None:
        self.settings, self.count_tokens, self.counters, self.health = settings, count_tokens, counters, health
        self.book, self.streams, self.generators, self.persisted = book, streams, generators, persisted
        self.search_hits: dict[int, list[dict]] = {}  # a search request's hits, read by the shell
        self.turns: dict[int, tuple[str, str] | None] = {}  # a FindTurn's (session id, message id), read by the shell

    def found(self, msg: m.Search, rows: list[dict]) -> None:
        """The database's hits for a search, read by the shell; its answer follows (``on_search``)."""
        self.search_hits[id(msg)] = rows

    def on_search(self, msg: m.Search, now: float, out: list) -> answers.Result:
        """The hits the shell read, less those of sessions deleted meanwhile."""
        if not msg.query.strip():
            raise RequestRefused("the search is empty: give a word, a \"phrase\" or a prefix*")
        if msg.session_id in self.book.gone:
            raise RequestRefused(f"session {msg.session_id} was deleted")
        rows = self.search_hits.pop(id(msg), [])
        return answers.SearchResults(hits=[answers.SearchHit(**row) for row in rows
                                           if row["session_id"] not in self.book.gone])

    def on_find_turn(self, msg: m.FindTurn, now: float, out: list) -> answers.Result:
        """The reply the shell found by its conversation (``store.find_turn``), unless its session was deleted
        meanwhile or the reply is not there any more (a deleted branch)."""
        found = self.turns.pop(id(msg), None)
        sess = self.book.sessions.get(found[0]) if found is not None else None
        if found is None or found[0] in self.book.gone or (sess is not None and sess.record(found[1]) is None):
            return answers.TurnFound()
        return answers.TurnFound(session_id=found[0], message_id=found[1])

    def on_snapshot(self, msg: m.Snapshot, now: float, out: list) -> answers.Result:
        """Exactly what clients were sent of a reply: its text, offset (= length) and status; a page of it."""
        return pages.snapshot_page(self._snapshot(msg, now), msg.offset, msg.reasoning_offset)

    def _snapshot(self, msg: m.Snapshot, now: float) -> answers.Snapshot:
        sess = self.book.get(msg.session_id)
        gen = self.streams.active.get(msg.generation_id or sess.active_generation or "")
        if gen is not None and gen.session_id == sess.session_id:
            return self._live_snapshot(sess, gen, now)
        if msg.generation_id:
            record = next((r for r in sess.history if r.generation_id == msg.generation_id), None)
        else:
            record = sess.last_reply()
        if record is None:
            if msg.generation_id:
                raise RequestRefused(f"no generation {msg.generation_id} in session {sess.session_id}")
            return answers.Snapshot(generation_id=None, message_id=None, status=None, text="", final=True, stats={},
                                    session_id=sess.session_id)
        return self._stored_snapshot(sess, record)

    def on_reply_of(self, msg: m.ReplyOf, now: float, out: list) -> answers.Result:
        """The snapshot of one reply named by its message id (the gateway's response id): live, or as stored."""
        sess = self.book.of_message(msg.message_id)
        record = sess.record(msg.message_id) if sess else None
        if record is None or record.role != "assistant":
            raise RequestRefused(f"no reply {msg.message_id}")
        gen = self.streams.active.get(record.generation_id or "")
        snap = self._live_snapshot(sess, gen, now) if gen is not None else self._stored_snapshot(sess, record)
        return pages.snapshot_page(snap, msg.offset, msg.reasoning_offset)

    def _live_snapshot(self, sess, gen, now: float) -> answers.Snapshot:
        return answers.Snapshot(generation_id=gen.generation_id, message_id=gen.message_id, status=gen.status,
                                text=gen.text()[:gen.answer.client_len], final=False,
                                stats=stats(gen, now), prompt_hash=gen.prompt.prompt_hash,
                                user_text=sess.user_text_before(gen.message_id),
                                reasoning=gen.thinking.text()[:gen.thinking.client_len],
                                tool_calls=gen.tool_calls, session_id=sess.session_id,
                                created_at=gen.record.created_at, model=gen.prompt.model, owner=sess.owner)

    def _stored_snapshot(self, sess, record: m.MessageRecord) -> answers.Snapshot:
        return answers.Snapshot(generation_id=record.generation_id, message_id=record.message_id,
                                status=record.status, text=record.content,
                                # a reply read as streaming after a restart may yet be adopted: not final
                                final=(record.generation_id not in self.streams.finalizing
                                       and record.status != "streaming"),
                                stats=record.stats,
                                error=record.error, prompt_hash=record.prompt_hash, superseded=record.superseded,
                                user_text=sess.user_text_before(record.message_id), reasoning=record.reasoning,
                                tool_calls=record.tool_calls, session_id=sess.session_id,
                                created_at=record.created_at, model=record.model, owner=sess.owner)

    def on_status(self, msg: m.Status, now: float, out: list) -> answers.Result:
        context = None
        if msg.session_id:
            sess = self.book.get(msg.session_id)
            model = sess.model or self.settings.default_model
            context = answers.ContextUse(session_id=sess.session_id, max_input_tokens=self.generators.budget(sess),
                                         history_tokens=sessions.context_tokens(sess, model, self.count_tokens))
        unsaved, oldest_unsaved = self.persisted.oldest_unsaved()
        asked_about = self.book.sessions.get(msg.session_id or "")
        style, style_why = self.generators.continue_style(asked_about.continue_style if asked_about else None)
        seen_ms_ago, totals = _ms_since(self.health.persister_seen_at, now), self.health.persister_stats
        return answers.Status(
            generators=[answers.GeneratorView(generator_id=g.generator_id, capacity_free=g.capacity_free,
                                              active=g.active, seen_ms_ago=round((now - g.last_seen) * 1000),
                                              pid=g.pid) for g in self.generators.known.values()],
            coordinator_pid=self.health.pid, persister_pid=self.health.persister_pid, persister=totals,
            active_total=len(self.streams.active),
            active=[answers.ActiveGeneration(generation_id=g.generation_id, session_id=g.session_id, status=g.status,
                                             length=g.length, reasoning_length=g.thinking.length,
                                             generator_id=g.stream.generator_id,
                                             prompt_tokens=g.prompt.prompt_tokens,
                                             max_input_tokens=g.prompt.max_input_tokens)
                    for g in itertools.islice(self.streams.active.values(), answers.ACTIVE_SHOWN)],
            counters=self.counters | {"retries": self.generators.retries(),
                                      "persist_resends": self.persisted.resends},
            context=context, unsaved=unsaved,
            continue_style=style, continue_style_why=style_why, oldest_unsaved_ms=_ms_since(oldest_unsaved, now),
            persister_seen_ms_ago=seen_ms_ago,
            persister_connected=seen_ms_ago is not None and seen_ms_ago <= answers.PERSISTER_SILENT_MS,
            database_reachable=None if totals is None else totals.failing_since is None,
            reads_failing_since=self.health.reads[0], reads_error=self.health.reads[1],
            reads_last_failed_at=self.health.reads_last_failure and self.health.reads_last_failure[0],
            reads_last_error=self.health.reads_last_failure and self.health.reads_last_failure[1])

    def on_history(self, msg: m.History, now: float, out: list) -> answers.Result:
        """A page of the session's messages, from ``msg.message_id`` (the first when None) on."""
        sess = self.book.get(msg.session_id)
        path, start = sess.path(), 0
        if msg.message_id is not None:
            start = next((i for i, r in enumerate(path) if r.message_id == msg.message_id), -1)
            if start < 0:
                raise RequestRefused(f"message {msg.message_id} is not on the active branch of session "
                                     f"{sess.session_id}: it changed since the page before; read its history again")
        head = answers.History(session_id=sess.session_id, title=sess.title, system=sess.system,
                               max_input_tokens=self.generators.budget(sess), messages=[], created_at=sess.created_at,
                               owner=sess.owner)
        views = (self._client_view(sess, record) for record in path[start:])
        try:
            return pages.history_page(head, views, msg.offset, msg.reasoning_offset)
        except pages.TooLargeToPage as exc:
            raise RequestRefused(str(exc)) from None

    def _client_view(self, sess, record: m.MessageRecord):
        """A history record as clients see it: its place among its siblings, and a streaming reply with the text
        they were sent of it."""
        gen = self.streams.active.get(record.generation_id or "")
        if gen is None:
            view = record.client_view()
        else:
            view = record.client_view(gen.text()[:gen.answer.client_len],
                                      gen.thinking.text()[:gen.thinking.client_len])
            view.tool_calls = gen.tool_calls
        siblings = sess.siblings(record)
        view.sibling_index, view.sibling_count = siblings.index(record.message_id), len(siblings)
        return view

    def on_export(self, msg: m.ExportSession, now: float, out: list) -> answers.Result:
        """A page of the session whole: every message of every branch in the order they were written, with every
        field (a reply under way with the text sent of it so far), from ``msg.message_id`` on."""
        sess = self.book.get(msg.session_id)
        start = 0
        if msg.message_id is not None:
            start = next((i for i, r in enumerate(sess.history) if r.message_id == msg.message_id), -1)
            if start < 0:
                raise RequestRefused(f"message {msg.message_id} is not in session {sess.session_id}: it changed "
                                     "since the page before; export it again")
        head = answers.SessionExport(session=sessions.session_record(sess), messages=[])
        records = (self._exported(record) for record in sess.history[start:])
        try:
            return pages.history_page(head, records, msg.offset, msg.reasoning_offset)
        except pages.TooLargeToPage as exc:
            raise RequestRefused(str(exc)) from None

    def _exported(self, record: m.MessageRecord) -> m.MessageRecord:
        gen = self.streams.active.get(record.generation_id or "")
        if gen is None:
            return record
        return msgspec.structs.replace(record, content=gen.text()[:gen.answer.client_len],
                                       reasoning=gen.thinking.text()[:gen.thinking.client_len],
                                       tool_calls=gen.tool_calls)

    def on_tree(self, msg: m.SessionTree, now: float, out: list) -> answers.Result:
        """A page of the session's tree: every message from ``offset``, in the order they were written."""
        sess = self.book.get(msg.session_id)
        on_path = {r.message_id for r in sess.path()}
        page = sess.history[msg.offset:msg.offset + pages.TREE_PAGE]
        nodes = [answers.TreeNode(message_id=r.message_id, parent_id=r.parent_id or "", role=r.role,
                                  status=r.status, created_at=r.created_at, line=first_line(r.content),
                                  active=r.message_id in on_path) for r in page]
        end = msg.offset + len(page)
        return answers.Tree(session_id=sess.session_id, title=sess.title, leaf_id=sess.leaf or "", nodes=nodes,
                            offset=msg.offset, total=len(sess.history),
                            next=end if end < len(sess.history) else None)

    def on_sessions(self, msg: m.Sessions, now: float, out: list) -> answers.Result:
        """A page of the most recently active sessions: the database's (read by the shell first, one more than
        the page, so that it knows if there are more) merged with the newer ones in memory; with ``owner``, only
        that gateway user's."""
        limit = min(max(1, msg.limit), pages.SESSIONS_PAGE)
        before = None if msg.before is None else (msg.before, msg.before_id or "")

        def listed(row) -> bool:  # a summary, or a session in memory
            return ((before is None or (row.last_activity, row.session_id) < before)
                    and (msg.owner is None or row.owner == msg.owner))

        # a session in memory is as memory has it: its row read from the database may be older (a page after it
        # would list it again by that older time)
        merged = {sid: row for sid, row in self.book.stored_summaries.items()
                  if not (sid in self.book.sessions and self.book.sessions[sid].history)}
        # memory is newer than the database; only its ``limit`` most recent sessions can be listed, so only
        # those are summarized (the cache holds thousands; every sessions request summarized them all)
        recent = heapq.nlargest(limit, (sess for sess in self.book.sessions.values()  # no message: not stored either
                                        if sess.history and listed(sess)),
                                key=lambda sess: (sess.last_activity, sess.session_id))
        for sess in recent:
            merged[sess.session_id] = sessions.summary(sess, sess.active_generation is not None)
        ordered = heapq.nlargest(limit + 1, filter(listed, merged.values()),
                                 key=lambda row: (row.last_activity, row.session_id))
        return answers.SessionList(sessions=ordered[:limit],
                                   more=len(ordered) > limit or len(self.book.stored_summaries) > limit)

    def on_resolve(self, msg: m.ResolveSession, now: float, out: list) -> answers.Result:
        """A prefix, against the database's sessions (read by the shell first) and those only in memory."""
        prefix = msg.prefix
        if not prefix.strip():
            raise RequestRefused("a session id (or a unique prefix of one) cannot be empty")
        stored_count, stored = self.book.stored_matches.get(prefix, (0, []))
        matches = set(stored)
        matches.update(sid for sid, sess in self.book.sessions.items() if sid.startswith(prefix) and sess.history)
        count = max(stored_count, len(matches))
        if count == 1:
            return answers.SessionResolved(session_id=matches.pop())
        if not matches:
            raise RequestRefused(f"unknown session {prefix}")
        some = sorted(matches)[:5]
        more = ', …' if count > len(some) else ''
        raise RequestRefused(f"{prefix} matches {count} sessions ({', '.join(some)}{more})"
                             "; give more of the id")

    def on_preview(self, msg: m.Preview, now: float, out: list) -> answers.Result:
        """The exact prompt of a reply: a live one's frozen prompt, else built again from the session by its
        reference and checked against its sha256; a page of it."""
        sess = self.book.of_message(msg.message_id)
        record = sess.record(msg.message_id) if sess else None
        if record is None or record.role != "assistant" or (record.prompt_ref is None
                                                           and record.prompt_messages is None):
            raise RequestRefused(f"no assistant message {msg.message_id}")
        gen = self.streams.active.get(record.generation_id or "")
        problem = None
        if gen is not None:
            messages, preview = gen.prompt.wire_messages(), gen.prompt.preview
            dropped, params = list(gen.prompt.dropped_message_ids), gen.prompt.wire_params()
        else:
            messages, dropped, problem = rebuild(sess.lineage(record.message_id), record)
            params = sent_params(record)
            preview = record.preview or render_preview(messages, params)
            if problem is None and record.prompt_hash and \
                    prompt_hash(messages, record.model or "", params) != record.prompt_hash:
                problem = ("built again from the session, it does not match the sha256 of what was sent: a message "
                           "it was built from has changed")
        left_out = gen.prompt.thinking_left_out if gen else (record.stats or {}).get("thinking_left_out", 0)
        whole = answers.Preview(message_id=msg.message_id, session_id=sess.session_id, preview=preview,
                                messages=messages, prompt_hash=record.prompt_hash, model=record.model,
                                dropped_message_ids=dropped[-DROPPED_SHOWN:], dropped_count=len(dropped),
                                thinking_left_out=left_out, exact=problem is None,
                                problem=problem, params=params)
        return pages.preview_page(whole, msg.preview_offset, msg.index, msg.offset)


def first_line(text: str) -> str:
    """A message's first line that has words, as a tree shows it: cut to ``answers.TREE_LINE_CHARS``."""
    line = sessions.first_words(text)
    return line if len(line) <= answers.TREE_LINE_CHARS else line[:answers.TREE_LINE_CHARS - 1] + "…"


def _ms_since(then: float | None, now: float) -> int | None:
    return None if then is None else max(0, round((now - then) * 1000))
