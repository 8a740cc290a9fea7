"""Sessions given back whole (``chatter import``): a Chatter export or a conversation read from another tool's. A
part of ``machine.Coordinator``, given the sessions, the persist tracker and the session changes (whose waiting
answers it shares); pure, like all of the machine.

- **In parts**: a session larger than a frame comes in several ``ImportSession``s, kept here until the last; a
  part-way import left by a client that went away is dropped after ``PART_KEPT_S``.
- **Checked whole before anything is written**: ids, the tree (every parent before its children), roles, texts
  that can be stored; a refusal names the message and the field.
- **Idempotent**: its ids are kept, and a message the session has already is not written again, so an import made
  twice makes no duplicates, and one cut short (its client or this coordinator gone) is completed by the next.
- **Written as a fork's copies are** (``changes.copy_op``): each message final at once; answered once applied.
"""
from __future__ import annotations

import math

import msgspec

from protocol import answers, messages as m
from protocol.lifecycle import FINAL, Status
from services.coordinator.book import SessionBook
from services.coordinator.changes import Deferred, SessionChanges, Waiting, copy_op
from services.coordinator.effects import RequestRefused, ToPersister
from services.coordinator.persistence import PersistTracker
from services.coordinator.sessions import SessionState

PART_KEPT_S = 600.0
IMPORT_MESSAGES_MOST = 1_000_000  # messages one session's import may bring, over all its parts


class Imports:
    def __init__(self, settings, book: SessionBook, persisted: PersistTracker, changes: SessionChanges) -> None:
        self.settings, self.book, self.persisted, self.changes = settings, book, persisted, changes
        self.parts: dict[str, tuple[float, list[m.MessageRecord]]] = {}  # session id -> (last part at, messages)

    def on_import(self, msg: m.ImportSession, now: float, out: list) -> answers.Result | Deferred:
        header = msg.session
        _check_id(header.session_id, "session.session_id")
        self._drop_stale(now)
        _, records = self.parts.pop(header.session_id, (now, []))
        records = records + list(msg.messages)
        if len(records) > IMPORT_MESSAGES_MOST:
            raise RequestRefused(f"session {header.session_id} brings over {IMPORT_MESSAGES_MOST:,} messages; "
                                 "that is more than one import takes")
        if not msg.last:
            self.parts[header.session_id] = (now, records)
            return answers.ImportPart(session_id=header.session_id, received=len(records))
        sess = self.book.sessions.get(header.session_id)  # read from the database first, when it is there
        have = {r.message_id for r in sess.history} if sess is not None else set()
        new = self._checked(header.session_id, [r for r in records if r.message_id not in have], have)
        if sess is None:
            self._check_session(header)
            self.book.gone.pop(header.session_id, None)  # a backup of a deleted session may come back
            sess = SessionState(header.session_id, " ".join(header.title.split())[:m.TITLE_CHARS], header.system,
                                header.model, header.max_input_tokens or None,
                                created_at=header.created_at or now, last_activity=header.updated_at or now,
                                saved=True,
                                title_set=header.title_set)
            sess.take_settings(header.settings)
            self.book.add(sess)
        fresh = not have
        for record in new:
            sess.add_record(record)
            self.book.message_sessions[record.message_id] = sess.session_id
        if fresh and header.active_leaf in {r.message_id for r in new}:
            sess.leaf = header.active_leaf
        answer = answers.SessionImported(session_id=sess.session_id, created=len(new), existing=len(have))
        if not new:
            return answer
        for record in new:
            out.append(ToPersister(self.persisted.create(copy_op(sess, record, now, leaf=sess.leaf), now)))
        key = ("imported", sess.session_id)
        self.changes.waiting[key] = Waiting(sess.session_id, lambda: answer, lambda: None)
        return Deferred(key)

    def _drop_stale(self, now: float) -> None:
        for session_id in [sid for sid, (at, _) in self.parts.items() if now - at > PART_KEPT_S]:
            del self.parts[session_id]

    def _check_session(self, header) -> None:
        for name in ("title", "system", "model"):
            value = getattr(header, name)
            if value is not None and "\x00" in value:
                raise RequestRefused(f"session.{name} contains a NUL character (\\x00), which cannot be stored")
        if header.system is not None and len(header.system) > self.settings.max_text_chars:
            raise RequestRefused(f"session.system is {len(header.system)} characters; the limit is "
                                 f"{self.settings.max_text_chars} (CHATTER_MAX_TEXT_CHARS)")
        if header.model is not None and len(header.model) > 128:
            raise RequestRefused("session.model is over 128 characters")
        if header.max_input_tokens is not None and not 0 <= header.max_input_tokens < 2**31:
            raise RequestRefused("session.max_input_tokens is out of range (0 to 2^31-1)")

    def _checked(self, session_id: str, records: list[m.MessageRecord], have: set[str]) -> list[m.MessageRecord]:
        """The messages as they will be written, each checked: a refusal names the message and its field. A reply
        that was still streaming when it was exported is kept as it was, interrupted."""
        known, out = set(have), []
        for number, record in enumerate(records, 1):
            where = f"message {number} ({record.message_id[:64]!r})"
            _check_id(record.message_id, f"{where}: message_id")
            if record.message_id in known:
                raise RequestRefused(f"{where}: message_id is given twice")
            parent = record.parent_id or ""
            if parent and parent not in known:
                raise RequestRefused(f"{where}: parent_id {parent[:64]!r} is not a message before it in this session")
            if record.role not in ("user", "assistant", "tool"):
                raise RequestRefused(f"{where}: role must be user, assistant or tool, not {record.role[:20]!r}")
            if record.role == "tool" and not 1 <= len(record.tool_call_id or "") <= 128:
                raise RequestRefused(f"{where}: a tool's result needs the tool_call_id it answers (1 to 128 "
                                     "characters)")
            for name in ("content", "reasoning", "model", "error"):
                value = getattr(record, name)
                if value is not None and "\x00" in value:
                    raise RequestRefused(f"{where}: {name} contains a NUL character (\\x00), which cannot be stored")
            if record.role != "assistant" and len(record.content) > self.settings.max_text_chars:
                raise RequestRefused(f"{where}: content is {len(record.content)} characters; the limit is "
                                     f"{self.settings.max_text_chars} (CHATTER_MAX_TEXT_CHARS)")
            if not math.isfinite(record.created_at):
                raise RequestRefused(f"{where}: created_at is not a finite number")
            if record.model is not None and len(record.model) > 128:
                raise RequestRefused(f"{where}: model is over 128 characters")
            status, error = record.status, record.error
            if record.role != "assistant":
                status = Status.COMPLETED.value
            elif status not in FINAL:
                status, error = Status.INTERRUPTED.value, error or "interrupted: exported while it was streaming"
            known.add(record.message_id)
            out.append(msgspec.structs.replace(record, session_id=session_id, parent_id=parent, status=status,
                                               error=error,
                                               generation_id=None, client_request_id=None, superseded=False,
                                               sibling_index=0, sibling_count=1))
        return out


def _check_id(value: str, field: str) -> None:
    if not value or len(value) > 64 or "\x00" in value or not value.isprintable():
        raise RequestRefused(f"{field} must be 1 to 64 printable characters")
