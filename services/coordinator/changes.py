"""Changes to a session itself: rename, delete, switch branches, delete a branch, fork. Each is answered only once
the persister has applied it (an ack means applied), and its watchers are told then (``SessionChanged``), so that
every window on the session agrees.
A part of ``machine.Coordinator``, given the sessions, the replies under way and the persist tracker; pure, like
all of the machine.

- **Rename** keeps a title given by hand (``title_set``); an empty one gives the session back its automatic title.
- **Delete** stops a reply streaming in the session first (its upstream request too), forgets the session and
  everything the coordinator holds of it (its history, its replies' persist state, what was read of the
  database), remembers its id as gone (a read in flight cannot bring it back), and sends the persister one
  ``PurgeSessions``, resent until answered. The answer names the ids deleted.
- **Switch** makes the branch through a message active: its newest leaf, saved with the session's row.
- **Delete a branch** takes a message and its subtree like a deleted session's text (``PurgeMessages``); the active
  branch, if it ran through them, ends beside them.
- **Fork** copies the active branch, up to a message, into a new session: each message written final at once, its
  prompt's reference following the copies, so that its preview is still exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import msgspec

from protocol import answers, messages as m
from protocol.lifecycle import FINAL
from services.coordinator import sessions
from services.coordinator.book import SessionBook
from services.coordinator.effects import ForgetReadCaches, RequestRefused, ToClients, ToPersister, content_hash
from services.coordinator.persistence import PersistTracker
from services.coordinator.sessions import SessionState, auto_title
from services.coordinator.stream import Streams


@dataclass(frozen=True, slots=True)
class Deferred:
    """A request answered later, when what ``key`` names is applied (``Coordinator.handle_rpc`` keeps who asks)."""

    key: tuple


@dataclass(slots=True)
class Waiting:
    """A change of a session's row (or a fork's messages) that is answered once all of it is applied."""

    session_id: str
    answer: Callable[[], answers.Result]  # the answer as things stand when it is applied
    told: Callable[[], m.SessionChanged | None]  # what its watchers are told then


class SessionChanges:
    def __init__(self, settings, new_id, new_ordered_id, book: SessionBook, streams: Streams,
                 persisted: PersistTracker) -> None:
        self.settings, self.new_id, self.new_ordered_id = settings, new_id, new_ordered_id
        self.book, self.streams, self.persisted = book, streams, persisted
        self.waiting: dict[tuple, Waiting] = {}  # a deferred answer's key -> what it waits for
        self.deletions: dict[str, list[str]] = {}  # purge op id -> the ids deleted in memory alone too
        self.refused: list[tuple[tuple, str]] = []  # deferred requests that can no longer be applied, and why

    # ------------------------------------------------------------ rename, switch: the session's row

    def on_rename(self, msg: m.RenameSession, now: float, out: list) -> Deferred:
        sess = self.book.get(msg.session_id)
        title = " ".join(msg.title.split())
        if "\x00" in title:
            raise RequestRefused("the title contains a NUL character (\\x00), which cannot be stored")
        first_user = next((r for r in sess.history if r.role == "user"), None)
        sess.title = title or (auto_title(first_user.content) if first_user else "")
        sess.title_set = bool(title)
        return self._save(sess, "renamed", now, out,
                          lambda: answers.SessionRenamed(session_id=sess.session_id, title=sess.title),
                          lambda: m.SessionChanged(sess.session_id, "renamed", sess.title))

    def on_switch(self, msg: m.SwitchBranch, now: float, out: list) -> Deferred:
        sess = self.book.get(msg.session_id)
        target = sess.find(msg.message)
        if msg.sibling is not None:
            siblings = sess.siblings(target)
            if msg.sibling >= len(siblings):
                raise RequestRefused(f"message {target.message_id} has {len(siblings)} versions; there is no "
                                     f"number {msg.sibling + 1}")
            target = sess.record(siblings[msg.sibling])
        sess.leaf = sess.newest_leaf_under(target.message_id)
        return self._save(sess, "switched", now, out, lambda: self._switched(sess), lambda: self._branched(sess))

    def _switched(self, sess: SessionState) -> answers.BranchSwitched:
        return answers.BranchSwitched(session_id=sess.session_id, leaf_id=sess.leaf or "")

    def _branched(self, sess: SessionState) -> m.SessionChanged:
        return m.SessionChanged(sess.session_id, "branched", sess.title, sess.leaf or "")

    def _save(self, sess: SessionState, what: str, now: float, out: list, answer, told) -> Deferred:
        """The session's row as it stands now, to the persister; answered once nothing of it waits there."""
        sess.saved = True
        out.append(ToPersister(self.persisted.save_session(sessions.save_op(sess, now), now)))
        key = (what, sess.session_id)
        self.waiting[key] = Waiting(sess.session_id, answer, told)
        return Deferred(key)

    def settled(self, out: list) -> list[tuple[tuple, answers.Result]]:
        """The changes now applied: nothing of their session is waiting for the persister (its save, or the create
        of a message sent since, which carries the same row)."""
        done = []
        for key, waiting in list(self.waiting.items()):
            if waiting.session_id in self.persisted.sessions or self._creates_pending(waiting.session_id):
                continue
            del self.waiting[key]
            told = waiting.told()
            if told is not None:
                out.append(ToClients(waiting.session_id, told))
            done.append((key, waiting.answer()))
        return done

    def _creates_pending(self, session_id: str) -> bool:
        """A message of the session whose create (which carries the title) the persister has not acked yet."""
        sess = self.book.sessions.get(session_id)
        states = self.persisted.states
        return sess is not None and any(not state.created_acked for record in sess.history
                                        if (state := states.get(record.message_id)) is not None)

    def _give_up(self, session_id: str, words: str) -> None:
        """Changes of a session that can no longer be applied (it was deleted): refused now."""
        for key in [key for key, waiting in self.waiting.items() if waiting.session_id == session_id]:
            del self.waiting[key]
            self.refused.append((key, words))

    # ------------------------------------------------------------ fork

    def on_fork(self, msg: m.ForkSession, now: float, out: list) -> Deferred:
        """A new session with a copy of the active branch up to ``msg.message`` (None: up to its last message that
        is not streaming), each message final, ids new, and each reply's prompt reference following the copies."""
        sess = self.book.get(msg.session_id)
        path = sess.lineage(sess.find(msg.message).message_id) if msg.message else sess.path()
        if msg.message is None:
            while path and path[-1].status not in FINAL:
                path.pop()
        unfinished = next((r for r in path if r.status not in FINAL), None)
        if unfinished is not None:
            raise RequestRefused(f"message {unfinished.message_id} is still streaming: fork up to the message "
                                 "before it, or once it ends")
        if not path:
            raise RequestRefused(f"nothing to fork: session {sess.session_id} has no finished message yet")
        copy = SessionState(self.new_id(), f"{sess.title} (fork)"[:m.TITLE_CHARS], sess.system, sess.model,
                            sess.max_input_tokens, dict(sess.params), sess.stream, sess.continue_style,
                            created_at=now, last_activity=now, saved=True, owner=sess.owner)
        ids = {"": ""}
        for record in path:
            ids[record.message_id] = self.new_ordered_id()
        for record in path:
            copied = copied_record(record, copy.session_id, ids)
            copy.add_record(copied)
            out.append(ToPersister(self.persisted.create(copy_op(copy, copied, now), now)))
        self.book.add(copy)
        # the copies keep their times; the fork itself is new: its row says so once they are written
        out.append(ToPersister(self.persisted.save_session(sessions.save_op(copy, now), now)))
        key = ("forked", copy.session_id)
        self.waiting[key] = Waiting(copy.session_id, lambda: answers.SessionForked(
            session_id=copy.session_id, source_id=sess.session_id, message_count=len(path)), lambda: None)
        return Deferred(key)

    # ------------------------------------------------------------ delete

    def on_delete(self, msg: m.DeleteSessions, now: float, out: list) -> Deferred:
        ids = list(dict.fromkeys(msg.session_ids))  # in the order asked, once each
        in_memory, message_ids = [], []
        for session_id in ids:
            sess = self.book.sessions.get(session_id)
            if sess is None:
                self.book.forget(session_id)
                continue
            self._stop(sess, {r.message_id for r in sess.history}, now, out)
            message_ids += [record.message_id for record in sess.history]
            self._give_up(session_id, f"session {session_id} was deleted")  # a rename still waiting never will be
            self.book.forget(session_id)
            in_memory.append(session_id)
        op = m.PurgeSessions(ids, self.new_id())
        out.append(ToPersister(self.persisted.purge(op, message_ids, now)))
        self.deletions[op.op_id] = in_memory
        return Deferred(("deleted", op.op_id))

    def _stop(self, sess: SessionState, message_ids: set[str], now: float, out: list) -> None:
        """A reply streaming among these messages is stopped first: the upstream request too (finalize cancels the
        generation); its final is never published, since the messages are gone."""
        gen = self.streams.active.get(sess.active_generation or "")
        if gen is not None and gen.message_id in message_ids:
            self.streams.finalize(gen, "cancelled", now, out)
        for gen_id in [g for g, gen in self.streams.finalizing.items() if gen.message_id in message_ids]:
            del self.streams.finalizing[gen_id]

    def on_delete_branch(self, msg: m.DeleteBranch, now: float, out: list) -> Deferred:
        """A message and its subtree, gone for real; the rest of the session stays."""
        sess = self.book.get(msg.session_id)
        ids = sess.subtree(sess.find(msg.message).message_id)
        self._stop(sess, set(ids), now, out)
        sess.remove(ids)
        for message_id in ids:
            self.book.message_sessions.pop(message_id, None)
        if sess.session_id in self.persisted.sessions:  # a save still waiting names the leaf of before
            self.persisted.save_session(sessions.save_op(sess, now), now)
        op = m.PurgeMessages(sess.session_id, ids, sess.leaf, self.new_id())
        out.append(ToPersister(self.persisted.purge(op, ids, now)))
        self.deletions[op.op_id] = ids
        return Deferred(("deleted", op.op_id))

    def purged(self, msg: m.SessionsPurged, out: list) -> list[tuple[tuple, answers.Result]]:
        """A deletion applied: its watchers are told, the reader forgets what it read of the log, and the request
        is answered with the ids deleted (those the database held, and those only in memory)."""
        entry = self.persisted.purges.get(msg.op_id)
        in_memory = self.deletions.pop(msg.op_id, None)
        if not self.persisted.on_purged(msg) or in_memory is None:
            return []  # a resend's second answer
        out.append(ForgetReadCaches())
        op = entry[0]
        if type(op) is m.PurgeMessages:
            sess = self.book.sessions.get(op.session_id)
            leaf = sess.leaf or "" if sess else op.active_leaf or ""
            out.append(ToClients(op.session_id, m.SessionChanged(op.session_id, "branched", "", leaf)))
            return [(("deleted", msg.op_id), answers.BranchDeleted(session_id=op.session_id, deleted=op.message_ids,
                                                                   leaf_id=leaf))]
        found = set(msg.deleted) | set(in_memory)
        deleted = [session_id for session_id in op.session_ids if session_id in found]
        for session_id in deleted:
            out.append(ToClients(session_id, m.SessionChanged(session_id, "deleted")))
        return [(("deleted", msg.op_id), answers.SessionsDeleted(deleted=deleted))]


def copied_record(record: m.MessageRecord, session_id: str, ids: dict[str, str]) -> m.MessageRecord:
    """A message of a fork: new ids (``ids`` maps the old to the new), its prompt's reference following them."""
    ref = record.prompt_ref
    if ref is not None:
        ref = dict(ref, user=ids.get(ref.get("user"), ref.get("user")))
        if ref.get("tail"):
            ref["tail"] = dict(ref["tail"], id=ids.get(ref["tail"]["id"], ref["tail"]["id"]))
    return msgspec.structs.replace(
        record, message_id=ids[record.message_id], session_id=session_id, parent_id=ids[record.parent_id or ""],
        generation_id=None, client_request_id=None, prompt_ref=ref,
        dropped_message_ids=[ids.get(i, i) for i in record.dropped_message_ids])


def copy_op(sess: SessionState, copied: m.MessageRecord, now: float, leaf: str | None = None) -> m.CreateMessage:
    """The create of a message copied whole (a fork's, an import's): written final, with its texts, stats and
    prompt; ``leaf``, the session's active leaf once it is written, when that is not this message."""
    return m.CreateMessage(
        message_id=copied.message_id, session_id=sess.session_id, session_title=sess.title,
        session_system=sess.system, role=copied.role, content=copied.content, status=copied.status,
        created_at=copied.created_at, prompt_messages=copied.prompt_messages, prompt_hash=copied.prompt_hash,
        preview=copied.preview, model=copied.model, params=copied.params,
        session_max_input_tokens=sess.max_input_tokens, dropped_message_ids=copied.dropped_message_ids or None,
        session_model=sess.model, session_settings=sess.settings(), prompt_ref=copied.prompt_ref,
        session_title_set=sess.title_set, parent_id=copied.parent_id, session_active_leaf=leaf,
        session_owner=sess.owner, tool_call_id=copied.tool_call_id, chain=copied.chain,
        copied=m.Copied(copied.reasoning, copied.stats or None, copied.error,
                        content_hash(copied.content) if copied.role == "assistant" else None,
                        copied.tool_calls or None))
