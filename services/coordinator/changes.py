"""Changes to a session itself: rename and delete. Each is answered only once the persister has applied it (an ack
means applied), and its watchers are told then (``SessionChanged``), so that every window on the session agrees.
A part of ``machine.Coordinator``, given the sessions, the replies under way and the persist tracker; pure, like
all of the machine.

- **Rename** keeps a title given by hand (``title_set``); an empty one gives the session back its automatic title.
- **Delete** stops a reply streaming in the session first (its upstream request too), forgets the session and
  everything the coordinator holds of it (its history, its replies' persist state, what was read of the
  database), remembers its id as gone (a read in flight cannot bring it back), and sends the persister one
  ``PurgeSessions``, resent until answered. The answer names the ids deleted.
"""
from __future__ import annotations

from dataclasses import dataclass

from protocol import answers, messages as m
from services.coordinator.book import SessionBook
from services.coordinator.effects import ForgetReadCaches, RequestRefused, ToClients, ToPersister
from services.coordinator.persistence import PersistTracker
from services.coordinator.sessions import auto_title
from services.coordinator.stream import Streams


@dataclass(frozen=True, slots=True)
class Deferred:
    """A request answered later, when what ``key`` names is applied (``Coordinator.handle_rpc`` keeps who asks)."""

    key: tuple


class SessionChanges:
    def __init__(self, settings, new_id, book: SessionBook, streams: Streams, persisted: PersistTracker) -> None:
        self.settings, self.new_id = settings, new_id
        self.book, self.streams, self.persisted = book, streams, persisted
        self.renames: dict[str, str] = {}  # session id -> the title its rename waits to see applied
        self.deletions: dict[str, list[str]] = {}  # purge op id -> the ids deleted in memory alone too
        self.refused: list[tuple[tuple, str]] = []  # deferred requests that can no longer be applied, and why

    # ------------------------------------------------------------ rename

    def on_rename(self, msg: m.RenameSession, now: float, out: list) -> Deferred:
        sess = self.book.get(msg.session_id)
        title = " ".join(msg.title.split())
        if "\x00" in title:
            raise RequestRefused("the title contains a NUL character (\\x00), which cannot be stored")
        first_user = next((r for r in sess.history if r.role == "user"), None)
        sess.title = title or (auto_title(first_user.content) if first_user else "")
        sess.title_set = bool(title)
        sess.saved = True
        op = m.SaveSession(sess.session_id, sess.title, sess.system, sess.max_input_tokens, now, sess.model,
                           sess.settings(), sess.title_set)
        out.append(ToPersister(self.persisted.save_session(op, now)))
        self.renames[sess.session_id] = sess.title
        return Deferred(("renamed", sess.session_id))

    def renamed(self, out: list) -> list[tuple[tuple, answers.Result]]:
        """The renames now applied: nothing of their session is waiting for the persister (its save, or the create
        of a message sent since, which carries the same title)."""
        done = []
        for session_id, title in list(self.renames.items()):
            if session_id in self.persisted.sessions or self._creates_pending(session_id):
                continue
            del self.renames[session_id]
            out.append(ToClients(session_id, m.SessionChanged(session_id, "renamed", title)))
            done.append((("renamed", session_id), answers.SessionRenamed(session_id=session_id, title=title)))
        return done

    def _creates_pending(self, session_id: str) -> bool:
        """A message of the session whose create (which carries the title) the persister has not acked yet."""
        sess = self.book.sessions.get(session_id)
        states = self.persisted.states
        return sess is not None and any(not state.created_acked for record in sess.history
                                        if (state := states.get(record.message_id)) is not None)

    # ------------------------------------------------------------ delete

    def on_delete(self, msg: m.DeleteSessions, now: float, out: list) -> Deferred:
        ids = list(dict.fromkeys(msg.session_ids))  # in the order asked, once each
        in_memory, message_ids = [], []
        for session_id in ids:
            sess = self.book.sessions.get(session_id)
            if sess is None:
                self.book.forget(session_id)
                continue
            gen = self.streams.active.get(sess.active_generation or "")
            if gen is not None:  # stopped first: the upstream request too (finalize cancels the generation)
                self.streams.finalize(gen, "cancelled", now, out)
            for gen_id in [g for g, gen in self.streams.finalizing.items() if gen.session_id == session_id]:
                del self.streams.finalizing[gen_id]  # its final is never published: the session is gone
            message_ids += [record.message_id for record in sess.history]
            if self.renames.pop(session_id, None) is not None:  # a rename still waiting: it never will be
                self.refused.append((("renamed", session_id), f"session {session_id} was deleted"))
            self.book.forget(session_id)
            in_memory.append(session_id)
        op = m.PurgeSessions(ids, self.new_id())
        out.append(ToPersister(self.persisted.purge(op, message_ids, now)))
        self.deletions[op.op_id] = in_memory
        return Deferred(("deleted", op.op_id))

    def purged(self, msg: m.SessionsPurged, out: list) -> list[tuple[tuple, answers.Result]]:
        """A deletion applied: its watchers are told, the reader forgets what it read of the log, and the request
        is answered with the ids deleted (those the database held, and those only in memory)."""
        entry = self.persisted.purges.get(msg.op_id)
        in_memory = self.deletions.pop(msg.op_id, None)
        if not self.persisted.on_purged(msg) or in_memory is None:
            return []  # a resend's second answer
        found = set(msg.deleted) | set(in_memory)
        deleted = [session_id for session_id in entry[0].session_ids if session_id in found]
        for session_id in deleted:
            out.append(ToClients(session_id, m.SessionChanged(session_id, "deleted")))
        out.append(ForgetReadCaches())
        return [(("deleted", msg.op_id), answers.SessionsDeleted(deleted=deleted))]
