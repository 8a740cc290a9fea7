"""What clients ask the coordinator to change: sessions and their settings, send, regenerate, continue and
cancel. A part of ``machine.Coordinator``, given the sessions, the replies under way (``stream.Streams``), the
generators and the persist tracker; the read-only answers are ``views.py``. Pure, like all of the machine."""
from __future__ import annotations

import dataclasses

from protocol import messages as m, answers
from protocol.codec import PIECE_CHARS
from protocol.lifecycle import Status, continuable, move
from protocol.conversation import DROPPED_SHOWN, MessageRecord
from services.coordinator import sessions
from services.coordinator.book import SessionBook
from services.coordinator.continuing import set_prompt
from services.coordinator.effects import Log, RequestRefused, ToClients, ToPersister
from services.coordinator.generation import Asked, GenerationState
from services.coordinator.generators import Generators
from services.coordinator.persistence import PersistTracker
from services.coordinator.prompt import (CONTINUE_STYLES, PromptPackage, PromptTooLarge, assemble, continuation,
                                        original_of, package_of, with_user)
from services.coordinator.sessions import SessionState
from services.coordinator.stream import Streams


class Requests:
    def __init__(self, settings, count_tokens, new_id, new_ordered_id, book: SessionBook, streams: Streams,
                 generators: Generators, persisted: PersistTracker) -> None:
        self.settings, self.count_tokens = settings, count_tokens
        self.new_id, self.new_ordered_id = new_id, new_ordered_id
        self.book, self.streams, self.generators, self.persisted = book, streams, generators, persisted

    def _check_text(self, what: str, text: str | None) -> None:
        """A text for the database: within CHATTER_MAX_TEXT_CHARS, and without NUL (which PostgreSQL cannot
        store), refused alike on every database."""
        if text is None:
            return
        if len(text) > self.settings.max_text_chars:
            raise RequestRefused(f"{what} is {len(text)} characters; the limit is "
                                 f"{self.settings.max_text_chars} (CHATTER_MAX_TEXT_CHARS)")
        if "\x00" in text:
            raise RequestRefused(f"{what} contains a NUL character (\\x00), which cannot be stored")

    def _check_session_texts(self, msg) -> None:
        self._check_text("the system prompt", msg.system)
        self._check_text("the model name", msg.model)

    def on_new_session(self, msg: m.NewSession, now: float, out: list) -> answers.Result:
        self._check_session_texts(msg)
        sess = SessionState(self.new_id(), "", msg.system or None, msg.model, msg.max_input_tokens or None,
                            created_at=now, last_activity=now, owner=msg.owner)
        self.book.sessions[sess.session_id] = sess
        if msg.save:
            out.append(self._save_session(sess, now))
        return answers.SessionCreated(session_id=sess.session_id)

    def _save_session(self, sess: SessionState, now: float) -> ToPersister:
        """The session's row as it stands, resent until the persister has it."""
        sess.saved = True
        return ToPersister(self.persisted.save_session(sessions.save_op(sess, now), now))

    def on_configure(self, msg: m.ConfigureSession, now: float, out: list) -> answers.Result:
        """Takes effect from the next prompt (a reply under way keeps its frozen prompt), and is saved at once
        with the session's row: it outlives the session's leaving memory and a restart of the coordinator. Asked
        with no change, the settings as they are, and nothing written."""
        sess = self.book.get(msg.session_id)
        params, stream, style = dict(sess.params), sess.stream, sess.continue_style
        for key, value in (msg.params or {}).items():
            if not sessions.setting_ok(key, value):
                raise RequestRefused(f"bad setting {key}={value!r}: temperature is 0..2, max_tokens a positive "
                                     f"integer, stream true or false, continue_style {', '.join(CONTINUE_STYLES)}")
            if key == "stream":
                stream = value
            elif key == "continue_style":
                style = value
            else:
                params[key] = value
        if msg.max_input_tokens is not None and msg.max_input_tokens < 0:
            raise RequestRefused("the input budget cannot be negative")
        self._check_session_texts(msg)
        sess.params = {k: v for k, v in params.items() if v is not None}
        sess.stream, sess.continue_style = stream, style
        if msg.system is not None:
            sess.system = msg.system or None
        if msg.max_input_tokens is not None:
            sess.max_input_tokens = msg.max_input_tokens or None
        if msg.model is not None:
            sess.model = msg.model or None
        asked = msg.system is not None or msg.max_input_tokens is not None or msg.model is not None or msg.params
        if asked or not sess.saved:  # nothing asked is a read of the settings (the page's Settings): no write
            out.append(self._save_session(sess, now))
        return self._settings(sess)

    def _settings(self, sess: SessionState) -> answers.SessionSettings:
        return answers.SessionSettings(session_id=sess.session_id, system=sess.system,
                                       max_input_tokens=self.generators.budget(sess),
                                       model=sess.model or self.settings.default_model, params=dict(sess.params),
                                       stream=sess.stream, continue_style=sess.continue_style)

    def on_send(self, msg: m.Send, now: float, out: list) -> answers.Result:
        sess = self.book.get(msg.session_id)
        self._check_text("the request id", msg.client_request_id)
        if msg.client_request_id in sess.request_ids:
            return self._request_result(sess, msg.client_request_id)  # a retry never starts a second generation
        if msg.after is not None and sess.record(msg.after) is None:
            raise RequestRefused(f"no message {msg.after} in session {sess.session_id}")
        after = msg.after if msg.after is not None else sess.leaf or ""
        try:
            extra = sessions.tool_params(msg.tools, msg.tool_choice)
        except ValueError as exc:
            raise RequestRefused(str(exc)) from None
        results = self._tool_results(sess, after, msg.tool_results or [])
        return self._ask(sess, after, msg.text, msg.model, now, out, msg.client_request_id, extra, results)

    def _tool_results(self, sess: SessionState, after: str, given: list) -> list:
        """Tool results checked against the reply they follow: each answers a call it made, once."""
        if not given:
            return []
        reply = sess.record(after) if after else None
        calls = {call.get("id") for call in (reply.tool_calls if reply is not None else ())}
        seen = set()
        for index, result in enumerate(given):
            if result.call_id not in calls:
                raise RequestRefused(f"tool result {index}: the reply it follows made no call {result.call_id!r}")
            if result.call_id in seen:
                raise RequestRefused(f"tool result {index}: call {result.call_id!r} is answered twice")
            seen.add(result.call_id)
            self._check_text(f"tool result {index}", result.output)
        return given

    def on_edit(self, msg: m.EditMessage, now: float, out: list) -> answers.Result:
        """A user message written again: the new one beside it (its parent's child too), and a reply to it."""
        sess = self.book.get(msg.session_id)
        self._check_text("the request id", msg.client_request_id)
        if msg.client_request_id in sess.request_ids:
            return self._request_result(sess, msg.client_request_id)
        edited = sess.find(msg.message)
        if edited.role != "user":
            raise RequestRefused(f"message {edited.message_id} is the model's reply: only your own messages can "
                                 "be edited (regenerate makes a new reply)")
        return self._ask(sess, edited.parent_id or "", msg.text, None, now, out, msg.client_request_id)

    def _ask(self, sess: SessionState, parent_id: str, text: str, model: str | None, now: float, out: list,
             client_request_id: str, extra_params: dict | None = None, tool_results: list = ()
             ) -> answers.ReplyStarted:
        """A user message after ``parent_id`` ("" first), on the active branch from now on, and a reply to it;
        tool results first, each a message of its own (then the user's may be empty, and is left out)."""
        if sess.active_generation is not None:
            raise RequestRefused(f"a reply is already streaming in session {sess.session_id}; cancel it first")
        if not text.strip() and not tool_results:
            raise RequestRefused("empty message")
        self._check_text("the message", text)
        self._check_text("the model name", model)
        asked = [("tool", result.output, result.call_id) for result in tool_results]
        if text.strip():
            asked.append(("user", text, None))
        records, parent = [], parent_id
        for role, content, call_id in asked:
            records.append(sessions.user_record(self.new_ordered_id(), sess.session_id, content, now, parent, role,
                                                call_id))
            parent = records[-1].message_id
        # validated before anything changes: a prompt that does not fit leaves the session as it was
        prompt = with_user(self._assemble(sess, sess.lineage(parent_id) + records[:-1], records[-1], model,
                                          extra_params), records[-1].message_id)
        if not sess.title and text.strip():
            sess.title = sessions.auto_title(text)
        for record in records:
            sess.add_record(record)
            self.book.message_sessions[record.message_id] = sess.session_id
            out.append(ToPersister(self.persisted.create(self._create_op(sess, record, now), now)))
        return self._start_generation(sess, prompt, now, out, client_request_id)

    def on_regenerate(self, msg: m.Regenerate, now: float, out: list) -> answers.Result:
        """A new reply to the active branch's last user message, beside the replies it has (they are kept, on
        branches of their own); a reply streaming in the session is stopped first."""
        sess = self.book.get(msg.session_id)
        self._check_text("the request id", msg.client_request_id)
        if msg.client_request_id in sess.request_ids:
            return self._request_result(sess, msg.client_request_id)
        user = sess.last_user()
        if user is None:
            raise RequestRefused("nothing to regenerate: the session has no message yet")
        # validate before touching anything: a prompt that no longer fits leaves the session as it was
        lineage = sess.lineage(user.message_id)
        prompt = with_user(self._assemble(sess, lineage[:-1], user, None), user.message_id)
        active = self.streams.active.get(sess.active_generation or "")
        if active is not None:
            self.streams.finalize(active, "cancelled", now, out)
        sess.leaf = user.message_id  # the new reply follows it
        return self._start_generation(sess, prompt, now, out, msg.client_request_id)

    def on_continue(self, msg: m.Continue, now: float, out: list) -> answers.Result:
        """The session's last reply goes on where it was cut: the same message, offsets continuing from its
        length, by a new generation whose frozen prompt ends with the reply so far (in the session's style)."""
        sess = self.book.get(msg.session_id)
        self._check_text("the request id", msg.client_request_id)
        if msg.client_request_id in sess.request_ids:
            return self._request_result(sess, msg.client_request_id)  # one continuation per request id
        if sess.active_generation is not None:
            raise RequestRefused(f"a reply is streaming in session {sess.session_id}; it goes on by itself")
        record = sess.last_reply()
        if record is None:
            raise RequestRefused("nothing to continue: the session has no reply yet")
        if not continuable(record.status, (record.stats or {}).get("finish_reason")):
            raise RequestRefused(f"the last reply is {record.status}: only a reply cut by the length limit, a "
                                 "stop, an error or an interruption can be continued (regenerate makes a new one)")
        if record.generation_id in self.streams.finalizing or record.message_id in self.persisted.states:
            raise RequestRefused("the last reply is still being saved; continue it in a moment")
        if not record.content:
            raise RequestRefused("the last reply has no answer text to continue (it was cut before its answer "
                                 "began); regenerate it")
        style, why = self.generators.continue_style(sess.continue_style)
        if style == "none":
            raise RequestRefused(f"this server cannot continue a reply ({why}); if it can, set "
                                 "CHATTER_CONTINUE_STYLE=vllm, prefill or prefix (or /config continue_style=...)")
        sent = package_of(sess.lineage(record.message_id), record, self.count_tokens)
        base = dataclasses.replace(original_of(sent, self.count_tokens),
                                   max_input_tokens=self.generators.budget(sess, record.model))
        try:
            prompt = continuation(base, record.content, style, self.count_tokens, record.message_id)
        except PromptTooLarge as exc:
            raise RequestRefused(f"cannot continue: {exc}") from None
        return self._continue_message(sess, record, prompt, style, now, out, msg.client_request_id)

    def _continue_message(self, sess: SessionState, record, prompt: PromptPackage, style: str, now: float,
                          out: list, client_request_id: str) -> answers.ReplyStarted:
        """The reply streams again, as a new generation of the same message, from its stored texts."""
        gen_id = self.new_ordered_id()
        stats = record.stats or {}
        gen = GenerationState(gen_id, sess.session_id, record.message_id, prompt, record, Asked(now, sess.stream))
        counts = gen.counts
        counts.segment_from, counts.tokens_before = len(record.content), stats.get("tokens") or 0
        counts.tokens = counts.tokens_before
        counts.segments = [dict(seg) for seg in stats.get("segments") or ()] or [
            {"from": 0, "tokens": counts.tokens_before, "tokens_source": stats.get("tokens_source", "estimated"),
             "prompt_hash": record.prompt_hash, "ttft_ms": stats.get("ttft_ms")}]  # the reply's own TTFT, kept
        counts.segments[-1]["ended"] = "length" if record.status == "completed" else record.status
        gen.answer.take_stored(record.content)
        gen.thinking.take_stored(record.reasoning)
        record.generation_id, record.status, record.error = gen_id, move(record.status, Status.QUEUED), None
        set_prompt(gen, prompt, style)
        self.streams.active[gen_id] = gen
        sess.active_generation = gen_id
        self.book.touch(sess, now)
        sess.request_ids[client_request_id] = record.message_id
        continued = m.ContinuedPrompt(None, prompt.prompt_hash, None, prompt.ref)
        reopen = m.Reopen(record.message_id, gen_id, "", "", continued,
                          len(record.content), len(record.reasoning))  # the persister reads the texts from the row
        out.append(ToPersister(self.persisted.reopen(reopen, len(record.content), len(record.reasoning), now)))
        out.append(ToClients(sess.session_id, started(sess.session_id, gen_id, record.message_id, prompt)))
        self.streams.dispatch(gen, now, out)
        out.append(Log("generation_continues", {"session_id": sess.session_id, "generation_id": gen_id,
                                                "message_id": record.message_id, "from": len(record.content),
                                                "style": style}))
        return self._request_result(sess, client_request_id)

    def _assemble(self, sess: SessionState, history: list[MessageRecord], newest: MessageRecord, model: str | None,
                  extra_params: dict | None = None) -> PromptPackage:
        """The prompt of a reply to ``newest`` (the user's message or a tool's result), after ``history``, with
        the session's params and this request's own (its tools)."""
        model = model or sess.model or self.settings.default_model
        try:
            return assemble(sess.system, history, newest, model, sess.params | (extra_params or {}), self.count_tokens,
                            self.generators.budget(sess, model), keep_thinking=self.settings.prompt_thinking == "keep")
        except PromptTooLarge as exc:
            raise RequestRefused(str(exc)) from None

    def _start_generation(self, sess: SessionState, prompt: PromptPackage, now: float, out: list,
                          client_request_id: str) -> answers.ReplyStarted:
        """A new assistant message after the active branch's last, and its generation: persisted, announced,
        dispatched."""
        message_id, gen_id = self.new_ordered_id(), self.new_ordered_id()
        record = sessions.assistant_record(message_id, sess.session_id, gen_id, prompt, now, client_request_id or None,
                                           sess.leaf or "")
        sess.add_record(record)
        self.book.touch(sess, now)
        self.book.message_sessions[message_id] = sess.session_id
        gen = GenerationState(gen_id, sess.session_id, message_id, prompt, record, Asked(now, sess.stream))
        self.streams.active[gen_id] = gen
        sess.active_generation = gen_id
        if client_request_id:
            sess.request_ids[client_request_id] = message_id
        out.append(ToPersister(self.persisted.create(self._create_op(sess, record, now), now)))
        out.append(ToClients(sess.session_id, started(sess.session_id, gen_id, message_id, prompt)))
        self.streams.dispatch(gen, now, out)
        out.append(Log("generation_queued", {"session_id": sess.session_id, "generation_id": gen_id,
                                             "prompt_tokens": prompt.prompt_tokens,
                                             "dropped_messages": len(prompt.dropped_message_ids)}))
        return self._request_result(sess, client_request_id) if client_request_id else self._result(sess, record)

    def _create_op(self, sess: SessionState, rec: dict, now: float) -> m.CreateMessage:
        assistant = rec.role == "assistant"
        return m.CreateMessage(
            message_id=rec.message_id, session_id=sess.session_id, session_title=sess.title,
            session_system=sess.system, role=rec.role, content=rec.content,
            status="streaming" if assistant else rec.status, created_at=now, generation_id=rec.generation_id,
            prompt_hash=rec.prompt_hash, prompt_ref=rec.prompt_ref,  # the prompt by reference, never a copy
            model=rec.model, params=rec.params if assistant else None, tool_call_id=rec.tool_call_id, chain=rec.chain,
            client_request_id=rec.client_request_id, supersedes=None,
            session_max_input_tokens=sess.max_input_tokens,
            session_model=sess.model, session_settings=sess.settings(), session_title_set=sess.title_set,
            parent_id=rec.parent_id, session_owner=sess.owner)

    def _request_result(self, sess: SessionState, client_request_id: str) -> answers.ReplyStarted:
        return self._result(sess, sess.record(sess.request_ids[client_request_id]))

    def _result(self, sess: SessionState, record: m.MessageRecord) -> answers.ReplyStarted:
        return answers.ReplyStarted(session_id=sess.session_id, generation_id=record.generation_id,
                                    message_id=record.message_id, prompt_hash=record.prompt_hash,
                                    dropped_message_ids=list(record.dropped_message_ids),
                                    dropped_count=record.dropped_count or len(record.dropped_message_ids))

    def on_cancel(self, msg: m.Cancel, now: float, out: list) -> answers.Result:
        sess = self.book.get(msg.session_id)
        gen_id = msg.generation_id or sess.active_generation
        gen = self.streams.active.get(gen_id) if gen_id else None
        if gen is None or gen.session_id != sess.session_id:
            raise RequestRefused("nothing is streaming to cancel")
        self.streams.finalize(gen, "cancelled", now, out, keep_len=msg.seen_len,
                              keep_reasoning_len=msg.seen_reasoning_len)
        return answers.Cancelled(generation_id=gen.generation_id, length=gen.length)


def started(session_id: str, generation_id: str, message_id: str, prompt: PromptPackage) -> m.Started:
    """The ``started`` event of a reply (a new one, or one continued): its prompt's hash, tokens, what was left
    out, and its preview when that fits a piece (a longer one is asked for with ``chatter preview``)."""
    whole = len(prompt.preview) <= PIECE_CHARS
    return m.Started(session_id, generation_id, message_id, prompt.prompt_hash, prompt.preview if whole else "",
                     prompt.prompt_tokens, list(prompt.dropped_message_ids[-DROPPED_SHOWN:]),
                     prompt.max_input_tokens, prompt.thinking_left_out, -1 if whole else len(prompt.preview),
                     len(prompt.dropped_message_ids))

