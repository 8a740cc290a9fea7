"""The requests of the coordinator's machine: sessions, send, regenerate, cancel, and the views clients
ask for (snapshot, history, sessions, preview, status). A mixin of ``machine.Coordinator``, which holds
the state and dispatches to these handlers; pure, like all of the machine."""
from __future__ import annotations

import dataclasses
import heapq
import itertools

from protocol import messages as m, results
from protocol.codec import PIECE_CHARS
from protocol.lifecycle import Status, continuable, move
from protocol.records import DROPPED_SHOWN
from services.coordinator import pages, sessions
from services.coordinator.effects import Log, RequestRefused, ToClients, ToGenerators, ToPersister
from services.coordinator.prompt import (CONTINUE_STYLES, PromptPackage, PromptTooLarge, assemble, continuation,
                                        original_of, package_of, prompt_hash, rebuild, render_preview, sent_params,
                                        with_user)
from services.coordinator.sessions import SessionState
from services.coordinator.stream import GenerationState


# how long a session made for the message sent next (``NewSession.save`` false) waits for it, once the cache is
# full, before it is dropped: ``chatter send`` sends its message at once
UNSAVED_SESSION_KEEP_S = 60.0
# what auto makes of a server's /v1/models owned_by
SERVER_STYLES = {"vllm": "vllm", "llamacpp": "prefill"}


class Requests:
    # ------------------------------------------------------------ rpc

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

    def _on_new_session(self, msg: m.NewSession, now: float, out: list) -> results.Result:
        self._check_session_texts(msg)
        sess = SessionState(self.new_id(), "", msg.system or None, msg.model, msg.max_input_tokens or None,
                            created_at=now, last_activity=now)
        self.sessions[sess.session_id] = sess
        if msg.save:
            out.append(self._save_session(sess, now))
        return results.SessionCreated(session_id=sess.session_id)

    def _save_session(self, sess: SessionState, now: float) -> ToPersister:
        """The session's row as it stands, resent until the persister has it."""
        sess.saved = True
        op = m.SaveSession(sess.session_id, sess.title, sess.system, sess.max_input_tokens, now, sess.model,
                           sess.settings())
        return ToPersister(self.persisted.save_session(op, now))

    def _on_configure(self, msg: m.ConfigureSession, now: float, out: list) -> results.Result:
        """Takes effect from the next prompt (a reply under way keeps its frozen prompt), and is saved at once
        with the session's row: it outlives the session's leaving memory and a restart of the coordinator."""
        sess = self._session(msg.session_id)
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
        out.append(self._save_session(sess, now))
        return self._settings(sess)

    def _settings(self, sess: SessionState) -> results.SessionSettings:
        return results.SessionSettings(session_id=sess.session_id, system=sess.system,
                                       max_input_tokens=self._budget(sess),
                                       model=sess.model or self.settings.default_model, params=dict(sess.params),
                                       stream=sess.stream, continue_style=sess.continue_style)

    def _on_send(self, msg: m.Send, now: float, out: list) -> results.Result:
        sess = self._session(msg.session_id)
        self._check_text("the request id", msg.client_request_id)
        if msg.client_request_id in sess.request_ids:
            return self._request_result(sess, msg.client_request_id)  # a retry never starts a second generation
        if sess.active_generation is not None:
            raise RequestRefused(f"a reply is already streaming in session {sess.session_id}; cancel it first")
        if not msg.text.strip():
            raise RequestRefused("empty message")
        self._check_text("the message", msg.text)
        self._check_text("the model name", msg.model)
        prompt = self._assemble(sess, sess.history, msg.text, msg.model)
        if not sess.title:
            sess.title = " ".join(msg.text.split())[:60]
        user = sessions.user_record(self.new_ordered_id(), sess.session_id, msg.text, now)
        prompt = with_user(prompt, user.message_id)
        sess.history.append(user)
        self.message_sessions[user.message_id] = sess.session_id
        out.append(ToPersister(self.persisted.create(self._create_op(sess, user, now), now)))
        return self._start_generation(sess, prompt, now, out, msg.client_request_id, supersedes=[])

    def _on_regenerate(self, msg: m.Regenerate, now: float, out: list) -> results.Result:
        sess = self._session(msg.session_id)
        self._check_text("the request id", msg.client_request_id)
        if msg.client_request_id in sess.request_ids:
            return self._request_result(sess, msg.client_request_id)
        last_user = sess.last_user_index()
        if last_user is None:
            raise RequestRefused("nothing to regenerate: the session has no message yet")
        active = self.active.get(sess.active_generation or "")
        if active is not None:
            self._finalize(active, "cancelled", now, out)
        # validate before touching anything: a prompt that no longer fits leaves the history as it was
        prompt = with_user(self._assemble(sess, sess.history[:last_user], sess.history[last_user].content, None),
                           sess.history[last_user].message_id)
        replaced = [r for r in sess.history[last_user + 1:] if r.role == "assistant" and not r.superseded]
        for record in replaced:
            record.superseded = True
        return self._start_generation(sess, prompt, now, out, msg.client_request_id,
                                      supersedes=[r.message_id for r in replaced])

    def _on_continue(self, msg: m.Continue, now: float, out: list) -> results.Result:
        """The session's last reply goes on where it was cut: the same message, offsets continuing from its
        length, by a new generation whose frozen prompt ends with the reply so far (in the session's style)."""
        sess = self._session(msg.session_id)
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
        if record.generation_id in self.finalizing or record.message_id in self.persisted.states:
            raise RequestRefused("the last reply is still being saved; continue it in a moment")
        if not record.content:
            raise RequestRefused("the last reply has no answer text to continue (it was cut before its answer "
                                 "began); regenerate it")
        style, why = self._continue_style(sess)
        if style == "none":
            raise RequestRefused(f"this server cannot continue a reply ({why}); if it can, set "
                                 "CHATTER_CONTINUE_STYLE=vllm, prefill or prefix (or /config continue_style=...)")
        base = dataclasses.replace(original_of(package_of(sess.history, record, self.count_tokens), self.count_tokens),
                                   max_input_tokens=self._budget(sess, record.model))
        try:
            prompt = continuation(base, record.content, style, self.count_tokens, record.message_id)
        except PromptTooLarge as exc:
            raise RequestRefused(f"cannot continue: {exc}") from None
        return self._continue_message(sess, record, prompt, style, now, out, msg.client_request_id)

    def _continue_message(self, sess: SessionState, record, prompt: PromptPackage, style: str, now: float,
                          out: list, client_request_id: str) -> results.ReplyStarted:
        """The reply streams again, as a new generation of the same message, from its stored texts."""
        gen_id = self.new_ordered_id()
        stats = record.stats or {}
        gen = GenerationState(gen_id, sess.session_id, record.message_id, prompt, record, queued_at=now,
                              segment_from=len(record.content), tokens_before=stats.get("tokens") or 0)
        gen.tokens = gen.tokens_before
        gen.segments = [dict(seg) for seg in stats.get("segments") or ()] or [
            {"from": 0, "tokens": gen.tokens_before, "tokens_source": stats.get("tokens_source", "estimated"),
             "prompt_hash": record.prompt_hash}]
        gen.segments[-1]["ended"] = "length" if record.status == "completed" else record.status
        for text, stored in ((gen.answer, record.content), (gen.thinking, record.reasoning)):
            text.parts[:] = [stored] if stored else []
            text.length = text.client_len = len(stored)
        record.generation_id, record.status, record.error = gen_id, move(record.status, Status.QUEUED), None
        gen.stream = sess.stream
        self._set_prompt(gen, prompt, style)
        self.active[gen_id] = gen
        sess.active_generation = gen_id
        self._touch(sess, now)
        sess.request_ids[client_request_id] = record.message_id
        reopen = m.Reopen(record.message_id, gen_id, "", "", m.ContinuedPrompt(None, prompt.prompt_hash, None, prompt.ref),
                          len(record.content), len(record.reasoning))  # the persister reads the texts from the row
        out.append(ToPersister(self.persisted.reopen(reopen, len(record.content), len(record.reasoning), now)))
        out.append(ToClients(sess.session_id, started(sess.session_id, gen_id, record.message_id, prompt)))
        self._dispatch(gen, now, out)
        out.append(Log("generation_continues", {"session_id": sess.session_id, "generation_id": gen_id,
                                                "message_id": record.message_id, "from": len(record.content),
                                                "style": style}))
        return self._request_result(sess, client_request_id)

    def _continue_style(self, sess: SessionState | None = None) -> tuple[str, str]:
        """How a reply is continued, and why: the session's own, else CHATTER_CONTINUE_STYLE, else (auto) from
        what the live generators' servers say they are in /v1/models (``owned_by``), all alike."""
        if sess is not None and sess.continue_style:
            return sess.continue_style, "this session's setting (/config continue_style)"
        if self.settings.continue_style != "auto":
            return self.settings.continue_style, "CHATTER_CONTINUE_STYLE"
        # a generator that has not asked its server yet (just started) tells nothing; one that did tells until
        # another says otherwise, also once it is gone (its replies are continued on the one restarted)
        servers = {g.server for g in self.generators.values() if g.server}
        if len(servers) > 1:
            return "none", f"auto: the generators' servers differ ({', '.join(sorted(servers))})"
        if not servers and not self.last_server:
            if self.generators:
                return "none", "auto: the server does not say what it is (/v1/models owned_by)"
            return "none", "auto: no generator is connected to tell what its server is"
        server = servers.pop() if servers else self.last_server
        style = SERVER_STYLES.get(server, "none")
        return style, f"auto: the server says it is {server!r} (/v1/models owned_by)"

    def _assemble(self, sess: SessionState, history: list[dict], user_text: str, model: str | None) -> PromptPackage:
        model = model or sess.model or self.settings.default_model
        try:
            return assemble(sess.system, history, user_text, model, sess.params, self.count_tokens,
                            self._budget(sess, model), keep_thinking=self.settings.prompt_thinking == "keep")
        except PromptTooLarge as exc:
            raise RequestRefused(str(exc)) from None

    def _budget(self, sess: SessionState, model: str | None = None) -> int:
        """The input budget of a prompt: the session's own; else from the model's context length, as its server
        tells it (vLLM) or CHATTER_MODEL_CONTEXT says, less room for the reply (the session's max_tokens, else
        a quarter of the context); else CHATTER_MAX_INPUT_TOKENS."""
        if sess.max_input_tokens:
            return sess.max_input_tokens
        model = model or sess.model or self.settings.default_model
        # the live generators' servers first (the smallest, if they differ), and a lost generator's with it
        told = [g.contexts[model] for g in self.generators.values() if model in g.contexts]
        context = min(told) if told else self.settings.model_contexts.get(model)
        if context:
            reserve = sess.params.get("max_tokens") or context // 4
            return max(1, context - min(reserve, context - 1))
        return self.settings.max_input_tokens

    def _start_generation(self, sess: SessionState, prompt: PromptPackage, now: float, out: list,
                          client_request_id: str, supersedes: list[str]) -> results.ReplyStarted:
        """A new assistant message and its generation: persisted, announced, dispatched."""
        message_id, gen_id = self.new_ordered_id(), self.new_ordered_id()
        record = sessions.assistant_record(message_id, sess.session_id, gen_id, prompt, now, client_request_id or None)
        sess.history.append(record)
        self._touch(sess, now)
        self.message_sessions[message_id] = sess.session_id
        gen = GenerationState(gen_id, sess.session_id, message_id, prompt, record, queued_at=now)
        self.active[gen_id] = gen
        sess.active_generation = gen_id
        if client_request_id:
            sess.request_ids[client_request_id] = message_id
        create = self._create_op(sess, record, now)
        create.supersedes = supersedes or None
        out.append(ToPersister(self.persisted.create(create, now)))
        out.append(ToClients(sess.session_id, started(sess.session_id, gen_id, message_id, prompt)))
        gen.stream = sess.stream
        self._dispatch(gen, now, out)
        out.append(Log("generation_queued", {"session_id": sess.session_id, "generation_id": gen_id,
                                             "prompt_tokens": prompt.prompt_tokens,
                                             "dropped_messages": len(prompt.dropped_message_ids)}))
        return self._request_result(sess, client_request_id) if client_request_id else self._result(sess, record)

    @staticmethod
    def _job(gen: GenerationState) -> m.Job:
        p = gen.prompt
        return m.Job(gen.generation_id, p.wire_messages(), p.model, p.wire_params(), p.prompt_hash, gen.stream)

    def _create_op(self, sess: SessionState, rec: dict, now: float) -> m.CreateMessage:
        assistant = rec.role == "assistant"
        return m.CreateMessage(
            message_id=rec.message_id, session_id=sess.session_id, session_title=sess.title,
            session_system=sess.system, role=rec.role, content=rec.content,
            status="streaming" if assistant else rec.status, created_at=now, generation_id=rec.generation_id,
            prompt_hash=rec.prompt_hash, prompt_ref=rec.prompt_ref,  # the prompt by reference, never a copy
            model=rec.model, params=dict(sess.params) if assistant else None,
            client_request_id=rec.client_request_id, supersedes=None,
            session_max_input_tokens=sess.max_input_tokens,
            session_model=sess.model, session_settings=sess.settings())

    def _request_result(self, sess: SessionState, client_request_id: str) -> results.ReplyStarted:
        return self._result(sess, sess.record(sess.request_ids[client_request_id]))

    def _result(self, sess: SessionState, record: m.MessageRecord) -> results.ReplyStarted:
        return results.ReplyStarted(session_id=sess.session_id, generation_id=record.generation_id,
                                    message_id=record.message_id, prompt_hash=record.prompt_hash,
                                    dropped_message_ids=list(record.dropped_message_ids),
                                    dropped_count=record.dropped_count or len(record.dropped_message_ids))

    def _on_cancel(self, msg: m.Cancel, now: float, out: list) -> results.Result:
        sess = self._session(msg.session_id)
        gen_id = msg.generation_id or sess.active_generation
        gen = self.active.get(gen_id) if gen_id else None
        if gen is None or gen.session_id != sess.session_id:
            raise RequestRefused("nothing is streaming to cancel")
        self._finalize(gen, "cancelled", now, out, keep_len=msg.seen_len, keep_reasoning_len=msg.seen_reasoning_len)
        return results.Cancelled(generation_id=gen.generation_id, length=gen.length)

    def _on_snapshot(self, msg: m.Snapshot, now: float, out: list) -> results.Result:
        """Exactly what clients were sent of a reply: its text, offset (= length) and status; a page of it."""
        return pages.snapshot_page(self._snapshot(msg, now), msg.offset, msg.reasoning_offset)

    def _snapshot(self, msg: m.Snapshot, now: float) -> results.Snapshot:
        sess = self._session(msg.session_id)
        gen = self.active.get(msg.generation_id or sess.active_generation or "")
        if gen is not None and gen.session_id == sess.session_id:
            return results.Snapshot(generation_id=gen.generation_id, message_id=gen.message_id, status=gen.status,
                                    text=gen.text()[:gen.answer.client_len], final=False,
                                    stats=self._stats(gen, now), prompt_hash=gen.prompt.prompt_hash,
                                    user_text=sess.user_text_before(gen.message_id),
                                    reasoning=gen.thinking.text()[:gen.thinking.client_len],
                                    tool_calls=gen.tool_calls)
        if msg.generation_id:
            record = next((r for r in sess.history if r.generation_id == msg.generation_id), None)
        else:
            record = sess.last_reply()
        if record is None:
            if msg.generation_id:
                raise RequestRefused(f"no generation {msg.generation_id} in session {sess.session_id}")
            return results.Snapshot(generation_id=None, message_id=None, status=None, text="", final=True, stats={})
        return results.Snapshot(generation_id=record.generation_id, message_id=record.message_id,
                                status=record.status, text=record.content,
                                # a reply read as streaming after a restart may yet be adopted: not final
                                final=record.generation_id not in self.finalizing and record.status != "streaming",
                                stats=record.stats,
                                error=record.error, prompt_hash=record.prompt_hash, superseded=record.superseded,
                                user_text=sess.user_text_before(record.message_id), reasoning=record.reasoning,
                                tool_calls=record.tool_calls)

    def _on_status(self, msg: m.Status, now: float, out: list) -> results.Result:
        context = None
        if msg.session_id:
            sess = self._session(msg.session_id)
            model = sess.model or self.settings.default_model
            context = results.ContextUse(session_id=sess.session_id, max_input_tokens=self._budget(sess),
                                         history_tokens=sessions.context_tokens(sess, model, self.count_tokens))
        unsaved, oldest_unsaved = self.persisted.oldest_unsaved()
        style, style_why = self._continue_style(self.sessions.get(msg.session_id or ""))
        seen_ms_ago, stats = _ms_since(self.persister_seen_at, now), self.persister_stats
        return results.Status(
            generators=[results.GeneratorView(generator_id=g.generator_id, capacity_free=g.capacity_free,
                                              active=g.active, seen_ms_ago=round((now - g.last_seen) * 1000),
                                              pid=g.pid) for g in self.generators.values()],
            coordinator_pid=self.pid, persister_pid=self.persister_pid, persister=self.persister_stats,
            active_total=len(self.active),
            active=[results.ActiveGeneration(generation_id=g.generation_id, session_id=g.session_id, status=g.status,
                                             length=g.length, reasoning_length=g.thinking.length,
                                             generator_id=g.generator_id,
                                             prompt_tokens=g.prompt.prompt_tokens,
                                             max_input_tokens=g.prompt.max_input_tokens)
                    for g in itertools.islice(self.active.values(), results.ACTIVE_SHOWN)],
            counters=self.counters | {"retries": sum(g.retries for g in self.generators.values()),
                                      "persist_resends": self.persisted.resends},
            context=context, unsaved=unsaved,
            continue_style=style, continue_style_why=style_why, oldest_unsaved_ms=_ms_since(oldest_unsaved, now),
            persister_seen_ms_ago=seen_ms_ago,
            persister_connected=seen_ms_ago is not None and seen_ms_ago <= results.PERSISTER_SILENT_MS,
            database_reachable=None if stats is None else stats.failing_since is None,
            reads_failing_since=self.reads_health[0], reads_error=self.reads_health[1],
            reads_last_failed_at=self.reads_last_failure and self.reads_last_failure[0],
            reads_last_error=self.reads_last_failure and self.reads_last_failure[1])

    def _on_history(self, msg: m.History, now: float, out: list) -> results.Result:
        """A page of the session's messages, from ``msg.message_id`` (the first when None) on."""
        sess = self._session(msg.session_id)
        start = 0
        if msg.message_id is not None:
            start = next((i for i, r in enumerate(sess.history) if r.message_id == msg.message_id), -1)
            if start < 0:
                raise RequestRefused(f"message {msg.message_id} is not in session {sess.session_id}: it changed "
                                     "since the page before; read its history again")
        head = results.History(session_id=sess.session_id, title=sess.title, system=sess.system,
                               max_input_tokens=self._budget(sess), messages=[])
        views = (self._client_view(record) for record in sess.history[start:])
        try:
            return pages.history_page(head, views, msg.offset, msg.reasoning_offset)
        except pages.TooLargeToPage as exc:
            raise RequestRefused(str(exc)) from None

    def _client_view(self, record: m.MessageRecord):
        """A history record as clients see it: a streaming reply with the text they were sent of it."""
        gen = self.active.get(record.generation_id or "")
        if gen is None:
            return record.client_view()
        view = record.client_view(gen.text()[:gen.answer.client_len], gen.thinking.text()[:gen.thinking.client_len])
        view.tool_calls = gen.tool_calls
        return view

    def _on_sessions(self, msg: m.Sessions, now: float, out: list) -> results.Result:
        """A page of the most recently active sessions: the database's (read by the shell first, one more than
        the page, so that it knows if there are more) merged with the newer ones in memory."""
        limit = min(max(1, msg.limit), pages.SESSIONS_PAGE)
        before = None if msg.before is None else (msg.before, msg.before_id or "")

        def listed(row) -> bool:  # a summary, or a session in memory
            return before is None or (row.last_activity, row.session_id) < before

        merged = dict(self.stored_summaries)
        # memory is newer than the database; only its ``limit`` most recent sessions can be listed, so only
        # those are summarized (the cache holds thousands; every sessions request summarized them all)
        recent = heapq.nlargest(limit, (sess for sess in self.sessions.values()  # no message: not stored either
                                        if sess.history and listed(sess)),
                                key=lambda sess: (sess.last_activity, sess.session_id))
        for sess in recent:
            merged[sess.session_id] = sessions.summary(sess, sess.active_generation is not None)
        ordered = heapq.nlargest(limit + 1, filter(listed, merged.values()),
                                 key=lambda row: (row.last_activity, row.session_id))
        return results.SessionList(sessions=ordered[:limit],
                                   more=len(ordered) > limit or len(self.stored_summaries) > limit)

    def _on_resolve(self, msg: m.ResolveSession, now: float, out: list) -> results.Result:
        """A prefix, against the database's sessions (read by the shell first) and those only in memory."""
        prefix = msg.prefix
        if not prefix.strip():
            raise RequestRefused("a session id (or a unique prefix of one) cannot be empty")
        stored_count, stored = self.stored_matches.get(prefix, (0, []))
        matches = set(stored)
        matches.update(sid for sid, sess in self.sessions.items() if sid.startswith(prefix) and sess.history)
        count = max(stored_count, len(matches))
        if count == 1:
            return results.SessionResolved(session_id=matches.pop())
        if not matches:
            raise RequestRefused(f"unknown session {prefix}")
        some = sorted(matches)[:5]
        raise RequestRefused(f"{prefix} matches {count} sessions ({', '.join(some)}{', …' if count > len(some) else ''})"
                             "; give more of the id")

    def _on_preview(self, msg: m.Preview, now: float, out: list) -> results.Result:
        """The exact prompt of a reply: a live one's frozen prompt, else built again from the session by its
        reference and checked against its sha256; a page of it."""
        sess = self.sessions.get(self.message_sessions.get(msg.message_id, ""))
        record = sess.record(msg.message_id) if sess else None
        if record is None or record.role != "assistant" or (record.prompt_ref is None and record.prompt_messages is None):
            raise RequestRefused(f"no assistant message {msg.message_id}")
        gen = self.active.get(record.generation_id or "")
        problem = None
        if gen is not None:
            messages, dropped, preview = gen.prompt.wire_messages(), list(gen.prompt.dropped_message_ids), gen.prompt.preview
        else:
            messages, dropped, problem = rebuild(sess.history, record)
            params = sent_params(record)
            preview = record.preview or render_preview(messages, params)
            if problem is None and record.prompt_hash and prompt_hash(messages, record.model or "", params) != record.prompt_hash:
                problem = ("built again from the session, it does not match the sha256 of what was sent: a message "
                           "it was built from has changed")
        left_out = gen.prompt.thinking_left_out if gen else (record.stats or {}).get("thinking_left_out", 0)
        whole = results.Preview(message_id=msg.message_id, session_id=sess.session_id, preview=preview,
                                messages=messages, prompt_hash=record.prompt_hash, model=record.model,
                                dropped_message_ids=dropped[-DROPPED_SHOWN:], dropped_count=len(dropped),
                                thinking_left_out=left_out, exact=problem is None,
                                problem=problem)
        return pages.preview_page(whole, msg.preview_offset, msg.index, msg.offset)

    def _session(self, session_id: str) -> SessionState:
        sess = self.sessions.get(session_id)
        if sess is None:
            raise RequestRefused(f"unknown session {session_id}")
        return sess

    def _touch(self, sess: SessionState, now: float) -> None:
        """A session active now: ``sessions`` holds them least recently active (or read) first."""
        sess.last_activity = now
        self.sessions[sess.session_id] = self.sessions.pop(sess.session_id)

    def _evict_idle_sessions(self, now: float) -> None:
        """Memory stays flat however many sessions pass through: the least recently active idle ones
        (nothing streaming or waiting for the persister) are dropped and read back when asked for. They are
        taken from the front of ``sessions`` (``_touch``), so a sweep reads the ones it drops and the busy ones
        before them, not every cached session (a sort of all 5,000 took ~0.7 ms, four times a second). A session
        with no message yet goes too once its row is durable: it reads back with its settings. One made for the
        message sent next (never saved) is only here: it is dropped once it has waited ``UNSAVED_SESSION_KEEP_S``
        for that message, so that refused sends cannot fill memory with sessions no one will use."""
        excess = len(self.sessions) - self.settings.max_cached_sessions
        if excess <= 0:
            return
        busy = {g.session_id for g in self.active.values()} | {g.session_id for g in self.finalizing.values()}
        idle = []
        for sess in self.sessions.values():
            if len(idle) == excess:
                break
            if sess.session_id in busy or sess.session_id in self.persisted.sessions:
                continue  # streaming, or its row as it stands now (``/config``) is not durable yet
            if sess.only_in_memory and now - sess.last_activity < UNSAVED_SESSION_KEEP_S:
                continue  # made for the message sent next, and stored with it: only here until then
            if any(r.message_id in self.persisted.states for r in sess.history):
                continue  # not all of it is durable yet
            idle.append(sess)
        for sess in idle:
            if sess.only_in_memory:
                self.counters["unsaved_sessions_dropped"] += 1
            del self.sessions[sess.session_id]
            for record in sess.history:
                self.message_sessions.pop(record.message_id, None)


def started(session_id: str, generation_id: str, message_id: str, prompt: PromptPackage) -> m.Started:
    """The ``started`` event of a reply (a new one, or one continued): its prompt's hash, tokens, what was left
    out, and its preview when that fits a piece (a longer one is asked for with ``chatter preview``)."""
    whole = len(prompt.preview) <= PIECE_CHARS
    return m.Started(session_id, generation_id, message_id, prompt.prompt_hash, prompt.preview if whole else "",
                     prompt.prompt_tokens, list(prompt.dropped_message_ids[-DROPPED_SHOWN:]),
                     prompt.max_input_tokens, prompt.thinking_left_out, -1 if whole else len(prompt.preview),
                     len(prompt.dropped_message_ids))


def _ms_since(then: float | None, now: float) -> int | None:
    return None if then is None else max(0, round((now - then) * 1000))
