"""Titles the model writes (CHATTER_AUTO_TITLE=1): once a session's first reply completes, a generation of its own,
never a message of the conversation, asks the model for a short title; its text, cleaned to one line, becomes the
session's title unless one was given by hand meanwhile, saved and told to its watchers as a rename. A part of
``machine.Coordinator``; pure. A title generation that fails leaves the automatic title (the first line)."""
from __future__ import annotations

import re

from protocol import messages as m
from services.coordinator.book import SessionBook
from services.coordinator.effects import Log, ToClients, ToGenerators, ToPersister
from services.coordinator.persistence import PersistTracker
from services.coordinator.prompt import prompt_hash
from services.coordinator.sessions import SessionState, save_op

ASK = ("Write a title for the conversation below: at most six words, in its language, without quotes or a full "
       "stop. Answer with the title alone.")
EXCERPT_CHARS = 2000  # of the first message and of the reply, at most
TITLE_CHARS = 60
TITLE_TOKENS = 24


class AutoTitles:
    def __init__(self, settings, new_ordered_id, book: SessionBook, persisted: PersistTracker) -> None:
        self.settings, self.new_ordered_id, self.book, self.persisted = settings, new_ordered_id, book, persisted
        self.jobs: dict[str, tuple[str, dict[int, str]]] = {}  # generation id -> (session id, its texts by seq)
        self.asked: set[str] = set()  # sessions asked for once already (in this coordinator's life)

    def after_reply(self, sess: SessionState | None, reply: m.MessageRecord | None, text: str, now: float,
                    out: list) -> None:
        """A reply completed: the session's first, with no title given by hand, gets one written."""
        if (not self.settings.auto_title or sess is None or reply is None or sess.title_set
                or sess.session_id in self.asked or sum(r.role == "assistant" for r in sess.history) != 1):
            return
        question = sess.user_text_before(reply.message_id) or ""
        messages = [{"role": "system", "content": ASK},
                    {"role": "user", "content": f"{question[:EXCERPT_CHARS]}\n\n---\n\n{text[:EXCERPT_CHARS]}"}]
        model, params = reply.model or self.settings.default_model, {"max_tokens": TITLE_TOKENS}
        gen_id = self.new_ordered_id()
        self.jobs[gen_id] = (sess.session_id, {})
        self.asked.add(sess.session_id)
        out.append(ToGenerators(m.Job(gen_id, messages, model, params, prompt_hash(messages, model, params))))

    def owns(self, generation_id: str) -> bool:
        return generation_id in self.jobs

    def on_event(self, msg: m.Message, now: float, out: list) -> None:
        """An event of a title's generation: its text gathered by seq; at its end, the title."""
        session_id, texts = self.jobs[msg.generation_id]
        if isinstance(msg, (m.GenDelta, m.DeltaItem)):
            texts[msg.seq] = msg.text
        elif isinstance(msg, m.GenDone):
            del self.jobs[msg.generation_id]
            self._titled(session_id, clean("".join(texts[seq] for seq in sorted(texts))), now, out)
        elif isinstance(msg, (m.GenError, m.GenCancelled)):
            del self.jobs[msg.generation_id]
            out.append(Log("auto_title_failed", {"session_id": session_id,
                                                 "reason": getattr(msg, "reason", "cancelled")}))

    def _titled(self, session_id: str, title: str, now: float, out: list) -> None:
        sess = self.book.sessions.get(session_id)
        if sess is None or sess.title_set or not title:
            return  # deleted, evicted, or named by hand meanwhile: nothing to do
        sess.title = title
        out.append(ToPersister(self.persisted.save_session(save_op(sess, now), now)))
        out.append(ToClients(session_id, m.SessionChanged(session_id, "renamed", title)))


def clean(text: str) -> str:
    """A model's title as one line: its first line with words, without Markdown marks, quotes or a full stop."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = re.sub(r"^[#>*\-\s]+|[*_`]+", "", line)
    line = " ".join(line.split()).strip("\"'“”‘’«» ").rstrip(".")
    return line[:TITLE_CHARS].rstrip()
