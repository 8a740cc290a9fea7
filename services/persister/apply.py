"""How persist operations change the database: the persister's apply rules, with the durable text of
streaming messages kept in memory. The loop (``__main__``) drains, commits, acks and retries.

- An ack means applied: a message gets an ack only once its row exists, so a create that was lost
  (a failed transaction) is resent by the coordinator until it is applied.
- Appends are idempotent by offset: text is applied only where it continues the stored length, so the
  coordinator's resends are harmless.
- Rows go in with one bulk insert per batch, not per-row ORM calls (measured: ~9k row updates/s through
  the ORM against ~240k/s in bulk).
"""
from __future__ import annotations

import time

from protocol import messages as m
from services import store

TRUNCATE_EVERY_ROWS = 1024  # cut the chunk log's front in steps this big: whole pages, not a row per commit


class Persister:
    """Applies persist operations. It keeps the durable text of open (streaming) messages in memory,
    so appends and finalizes never read the database back; a restart reloads them on first touch."""

    FINALIZED_KEPT = 100_000  # recently finalized messages remembered; older ones are looked up again

    def __init__(self, log, db) -> None:
        self.log = log
        self.db = db
        self.open: dict[str, list[str]] = {}  # message id -> durable text parts
        self.open_length: dict[str, int] = {}
        self.finalized: dict[str, int] = {}  # message id -> final length
        self.reply_text_bytes = 0  # reply text written: checkpoint appends plus final contents (see PersisterStats)
        self.loaded = False  # streaming messages' text and the chunk log's position are in memory
        self.first_chunk: dict[str, int] = {}  # streaming message id -> id of its first row in the chunk log
        self.next_chunk_id = 1
        self.truncated_below = 0
        quote = db.quote[0] + "{}" + db.quote[1] if isinstance(db.quote, str) and len(db.quote) == 2 else '"{}"'
        self.insert_chunks_sql = (f"INSERT INTO {quote.format('chunk')} ({quote.format('id')}, "
                                  f"{quote.format('message_id')}, {quote.format('offset')}, {quote.format('text')}) "
                                  f"VALUES ({db.param}, {db.param}, {db.param}, {db.param})")

    def load(self) -> None:
        """Read every streaming message's durable text and the chunk log's end: one scan of the log,
        at start and after a failed transaction. The log may only be cut before the first chunk of
        every streaming message, so all of them must be known before anything is truncated."""
        for message_id in store.Message.select(store.Message.id).where(store.Message.status == store.STREAMING) \
                .tuples().iterator():
            self.open[message_id[0]] = []
            self.open_length[message_id[0]] = 0
        for message_id, (first_id, parts) in store.streaming_chunks().items():
            self.open[message_id] = parts
            self.open_length[message_id] = sum(map(len, parts))
            self.first_chunk[message_id] = first_id
        self.next_chunk_id = store.next_chunk_id()
        self.loaded = True

    def interrupt_orphans(self, reason: str, live_message_ids: list) -> list[str]:
        """Every streaming message without a live generation becomes ``interrupted``, keeping the text
        that reached us. Only the coordinator knows which are live, so it sends the list."""
        live = set(live_message_ids)
        ids = [row.id for row in store.Message.select(store.Message.id).where(store.Message.status == store.STREAMING)
               if row.id not in live]
        for message_id in ids:
            self._known(message_id)
            self._write_final(message_id, "interrupted", "".join(self.open[message_id]), {},
                              f"interrupted: {reason}", None)
        return ids

    def apply_batch(self, ops: list[m.Message]) -> tuple[dict[str, tuple[int, bool]], list[m.Message]]:
        """Apply ops in the caller's transaction; returns message id -> (durable length, finalized) to ack
        once it commits, for messages whose row exists, and other answers for the coordinator."""
        acks: dict[str, tuple[int, bool]] = {}
        answers: list[m.Message] = []
        chunks: list[tuple] = []
        now = time.time()
        if not self.loaded:
            self.load()
        for op in ops:
            if isinstance(op, m.Append):
                if not self._known(op.message_id):
                    continue  # its create has not been applied: no ack, so the coordinator resends the create
                if op.message_id in self.open:
                    length = self.open_length[op.message_id]
                    end = op.offset + len(op.text)
                    if op.offset <= length < end:  # continues the stored text (a resend may overlap it)
                        fresh = op.text[length - op.offset:]
                        chunks.append((self.next_chunk_id, op.message_id, length, fresh))
                        self.first_chunk.setdefault(op.message_id, self.next_chunk_id)
                        self.next_chunk_id += 1
                        self.open[op.message_id].append(fresh)
                        self.open_length[op.message_id] = end
                acks[op.message_id] = self._ack(op.message_id)
                continue
            if chunks:  # keep order: chunks before a finalize that follows them
                self._insert_chunks(chunks)
                chunks = []
            if isinstance(op, m.CreateMessage):
                self._create(op, now)
                acks[op.message_id] = self._ack(op.message_id)
            elif isinstance(op, m.Finalize):
                if self._known(op.message_id):
                    acks[op.message_id] = self._finalize(op)
            elif isinstance(op, m.InterruptOrphans):
                ids = self.interrupt_orphans(op.reason, op.live_message_ids)
                answers.append(m.OrphansInterrupted(len(ids)))
                if ids:
                    self.log.info("orphans_interrupted", count=len(ids), reason=op.reason)
        if chunks:
            self._insert_chunks(chunks)
        self._truncate_log()
        return acks, answers

    def mark_error(self, message_id: str, reason: str) -> None:
        """A message whose operation could not be stored ends as ``error``, keeping the text it has."""
        if not self.loaded:
            self.load()
        if self._known(message_id) and message_id in self.open:
            self._write_final(message_id, "error", "".join(self.open[message_id]), {}, reason, None)

    def _truncate_log(self) -> None:
        """Cut the chunk log's front once enough of it belongs to finalized messages only."""
        keep_from = min(self.first_chunk.values(), default=self.next_chunk_id)
        if keep_from - self.truncated_below >= TRUNCATE_EVERY_ROWS:
            store.truncate_chunks(keep_from)
            self.truncated_below = keep_from

    def forget(self) -> None:
        """After a failed transaction nothing in memory can be trusted: reload before the next batch."""
        self.open.clear()
        self.open_length.clear()
        self.finalized.clear()
        self.first_chunk.clear()
        self.loaded = False

    def _insert_chunks(self, rows: list[tuple]) -> None:
        # one executemany: peewee's per-row query building was the persister's top cost (py-spy)
        self.db.cursor().executemany(self.insert_chunks_sql, rows)
        self.reply_text_bytes += sum(len(row[3].encode()) for row in rows)

    def _known(self, message_id: str) -> bool:
        """Load a message's state on first touch; False if it does not exist (its create is still to come)."""
        if message_id in self.open or message_id in self.finalized:
            return True
        msg = store.Message.get_or_none(store.Message.id == message_id)
        if msg is None:
            return False
        if msg.status == store.STREAMING:
            # ``load`` read every streaming message and this process is the only writer, so memory is
            # behind the database: fail the batch (nothing is acked, the coordinator resends), reload, go on
            raise RuntimeError(f"streaming message {message_id} is not in memory")
        self._remember_final(message_id, msg.length)
        return True

    def _ack(self, message_id: str) -> tuple[int, bool]:
        if message_id in self.finalized:
            return self.finalized[message_id], True
        return self.open_length.get(message_id, 0), False

    def _remember_final(self, message_id: str, length: int) -> None:
        self.open.pop(message_id, None)
        self.open_length.pop(message_id, None)
        self.finalized[message_id] = length
        if len(self.finalized) > self.FINALIZED_KEPT:
            for key in list(self.finalized)[: self.FINALIZED_KEPT // 2]:
                del self.finalized[key]

    def _create(self, op: m.CreateMessage, now: float) -> None:
        store.Session.insert(id=op.session_id, title=op.session_title, system=op.session_system,
                             created_at=op.created_at, updated_at=now).on_conflict_ignore().execute()
        # the session's settings as of this message: a /system change is persisted with the next message
        store.Session.update(updated_at=now, title=op.session_title, system=op.session_system,
                             max_input_tokens=op.session_max_input_tokens).where(
            store.Session.id == op.session_id).execute()
        if op.supersedes:
            store.Message.update(superseded=True).where(store.Message.id.in_(op.supersedes)).execute()
        if self._known(op.message_id):
            return  # a resent create: the row is there already
        position = store.Message.select().where(store.Message.session == op.session_id).count()
        store.Message.insert(
            id=op.message_id, session=op.session_id, position=position, role=op.role, content=op.content,
            length=len(op.content), status=op.status, generation_id=op.generation_id,
            prompt_messages=op.prompt_messages, prompt_hash=op.prompt_hash, preview=op.preview, model=op.model,
            params=op.params, client_request_id=op.client_request_id, dropped_message_ids=op.dropped_message_ids,
            created_at=op.created_at, updated_at=now,
        ).execute()
        if op.status == store.STREAMING:
            self.open[op.message_id] = []
            self.open_length[op.message_id] = 0
        else:
            self._remember_final(op.message_id, len(op.content))

    def _finalize(self, op: m.Finalize) -> tuple[int, bool]:
        if op.message_id in self.finalized:
            return self.finalized[op.message_id], True
        if self.open_length[op.message_id] < op.length:
            return self.open_length[op.message_id], False  # text is missing: wait for the resent appends
        text = "".join(self.open[op.message_id])[:op.length]  # a cancel may keep less than was checkpointed
        self._write_final(op.message_id, op.status, text, op.stats, op.error, op.content_hash)
        return op.length, True

    def _write_final(self, message_id: str, status: str, text: str, stats: dict, error: str | None,
                     content_hash: str | None) -> None:
        store.Message.update(content=text, length=len(text), status=status, stats=stats, error=error,
                             content_hash=content_hash, updated_at=time.time()).where(
            store.Message.id == message_id).execute()
        self.first_chunk.pop(message_id, None)  # its rows in the chunk log may now be cut
        self.reply_text_bytes += len(text.encode())
        self._remember_final(message_id, len(text))
