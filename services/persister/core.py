"""The persister's rules, pure: which persist operations apply, what they write, and what is acked. No
database, no clock, no socket: the shell (``shell.py``) reads what the core asks for, carries the write
plan out through ``store.write`` in one transaction, and sends the acks once it commits.

- An ack means applied: a message gets an ack only once its row exists, so a create that was lost
  (a failed transaction) is resent by the coordinator until it is applied.
- Appends are idempotent by offset: text applies only where it continues the stored length, so the
  coordinator's resends are harmless. A reply has two texts, its answer and its thinking, each with its own
  offsets, its own rows in the chunk log and its own column at finalize; an ack carries both lengths. The durable text of streaming messages is kept here, so appends
  and finalizes never read the database back.
- The chunk log may be cut only before the first row of every streaming message, so all of them are
  known (``load``) before anything is planned.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from protocol import messages as m
from protocol.lifecycle import Status, fresh_at, move

# The chunk log is two tables in turn (``store.CHUNK_LOG``): rows go into the current one; the other is emptied
# whole once no streaming message has rows in it, and becomes the current one when this one holds this many rows
# (CHATTER_CHUNK_LOG_ROWS).
ROTATE_ROWS = 4096
FINALIZED_KEPT = 100_000  # recently finalized messages remembered; older ones are looked up again

# ---------------------------------------------------------------- the write plan: what ``store.write`` does, in order


@dataclass(slots=True)
class UpsertSession:
    """Create the session if new; its settings as of this message, or of its ``SaveSession``."""

    op: m.CreateMessage | m.SaveSession


@dataclass(slots=True)
class Supersede:
    message_ids: list[str]


@dataclass(slots=True)
class InsertMessage:
    op: m.CreateMessage  # its position is the session's message count at insert


@dataclass(slots=True)
class InsertChunks:
    rows: list[tuple]  # (chunk id, message id, offset, text, thinking)
    table: int = 0  # which of the log's two tables


@dataclass(slots=True)
class WriteFinal:
    message_id: str
    status: str
    content: str
    stats: dict
    error: str | None
    content_hash: str | None
    reasoning: str = ""
    prompt: m.ContinuedPrompt | None = None  # a reply continued after a fault: its last segment's prompt
    tool_calls: list | None = None  # the tools it called


@dataclass(slots=True)
class WriteToolCalls:
    """A streaming reply's tool calls as they stand (a checkpoint)."""

    message_id: str
    tool_calls: list


@dataclass(slots=True)
class ReopenRow:
    """A finalized reply streams again (continued): its status, generation and prompt columns."""

    op: m.Reopen


@dataclass(slots=True)
class ClearLog:
    """Empty the log's table number ``table``: no streaming message has rows in it."""

    table: int


@dataclass(slots=True)
class PurgeRows:
    """Delete sessions, their messages and the chunk log's appends of them (``store.purge_sessions``), or a branch's
    messages (``store.purge_messages``); the shell fills in what it found, and answers ``SessionsPurged`` once the
    transaction commits."""

    op: m.PurgeSessions | m.PurgeMessages
    found: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SaveUserRow:
    op: m.SaveUser


@dataclass
class Plan:
    writes: list = field(default_factory=list)
    # message id -> (durable length, finalized, the thinking's durable length)
    acks: dict[str, tuple[int, bool, int]] = field(default_factory=dict)
    answers: list[m.Message] = field(default_factory=list)  # other answers for the coordinator
    reply_text_bytes: int = 0  # reply text this plan writes: checkpoint appends plus final contents
    interrupted: int = 0


class NotInMemory(Exception):
    """A streaming message that memory does not hold: memory is behind the database. The transaction fails
    (nothing is acked, the coordinator resends) and the next batch reloads."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """What the database says of a message that memory did not know."""

    message_id: str
    streaming: bool
    length: int
    reasoning_length: int = 0


@dataclass(slots=True)
class OpenMessage:
    """A streaming message's durable texts as parts, and their lengths, indexed by ``Append.thinking``:
    [0] the answer, [1] the thinking."""

    parts: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))
    lengths: list[int] = field(default_factory=lambda: [0, 0])

    def text(self, thinking: bool) -> str:
        return "".join(self.parts[thinking])


# what takes every held append with it, in order (a user's save: rare, and with no message of its own)
RELEASE_ALL = (m.InterruptOrphans, m.PurgeSessions, m.PurgeMessages, m.SaveUser)
NOT_OF_A_MESSAGE = (m.InterruptOrphans, m.SaveSession, m.PurgeSessions, m.PurgeMessages, m.SaveUser)


class AppendHold:
    """Checkpoint appends wait, up to ``hold_s``, for the next commit that something else needs: every commit
    rewrites whole pages, and at 20 tok/s most commits carried only a few appends (docs/PERFORMANCE.md, "Disk
    bytes: appends wait for a commit"). Everything else goes at once: a create, a reopen, a finalize (whose
    final event waits on its ack) takes its own message's held appends with it, in order, and an
    ``InterruptOrphans`` takes them all (it ends streaming messages, which must first have their text)."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.held: list[m.Append] = []
        self.held_since: float | None = None  # when the oldest held append arrived

    def due_in(self, now: float) -> float | None:
        """Seconds until the held appends must be committed; None when none are held."""
        return None if self.held_since is None else max(0.0, self.held_since + self.hold_s - now)

    def take(self, ops: list[m.Message], now: float) -> list[m.Message]:
        """What to commit now, in an order that keeps each message's operations in arrival order; the rest is
        held. An empty ``ops`` releases the held appends once their time has come."""
        due = self.held_since is not None and now - self.held_since >= self.hold_s
        # an InterruptOrphans ends streaming messages, which must first have their text; a PurgeSessions deletes
        # them, after which no append of theirs may follow
        if due or self.hold_s <= 0 or any(type(op) in RELEASE_ALL for op in ops):
            out, self.held, self.held_since = self.held + ops, [], None
            return out
        pulled = {op.message_id for op in ops if type(op) is not m.Append and type(op) is not m.SaveSession}
        out = [op for op in self.held if op.message_id in pulled]
        self.held = [op for op in self.held if op.message_id not in pulled]
        for op in ops:
            if type(op) is m.Append and op.message_id not in pulled:
                self.held.append(op)
            else:
                out.append(op)
        if not self.held:
            self.held_since = None
        elif self.held_since is None:
            self.held_since = now
        return out

    def release(self) -> list[m.Message]:
        """Everything held, now (the persister stops)."""
        out, self.held, self.held_since = self.held, [], None
        return out


class PersisterCore:
    def __init__(self, rotate_rows: int = ROTATE_ROWS) -> None:
        self.rotate_rows = rotate_rows
        self.open: dict[str, OpenMessage] = {}  # streaming message id -> its durable texts
        self.finalized: dict[str, tuple[int, int]] = {}  # message id -> final lengths (answer, thinking)
        self.first_chunk: dict[str, int] = {}  # streaming message id -> id of its first row in the chunk log
        self.next_chunk_id = 1
        self.table = 0  # the log's table that rows go into
        self.table_from = 1  # no row of that table has a smaller id
        self.other_has_rows = False  # the other table (all of whose ids are below ``table_from``)
        self.loaded = False

    # ------------------------------------------------------------ what the shell reads for the core

    def load(self, streaming_ids, chunks: dict[str, tuple[int, list[str], list[str]]],
             log_ids: list[tuple[int, int] | None]) -> None:
        """Every streaming message, its checkpointed texts (first chunk id, the answer's parts, the thinking's)
        and the first and last row id of each of the log's tables (None: empty): at start, and after a failed
        transaction. Rows go on into the table that holds the last one."""
        for message_id in streaming_ids:
            self.open[message_id] = OpenMessage()
        for message_id, (first_id, answer, thinking) in chunks.items():
            self.open[message_id] = OpenMessage((answer, thinking), [sum(map(len, answer)), sum(map(len, thinking))])
            self.first_chunk[message_id] = first_id
        tables = [(ids[1], number, ids[0]) for number, ids in enumerate(log_ids) if ids]  # (last, number, first)
        last, self.table, self.table_from = max(tables) if tables else (0, 0, 1)
        self.next_chunk_id = last + 1
        self.other_has_rows = len(tables) == 2
        self.loaded = True

    def unknown(self, ops: list[m.Message]) -> set[str]:
        """Message ids the batch touches that memory does not hold: the shell looks them up (``take_stored``)."""
        ids = {op.message_id for op in ops if not isinstance(op, NOT_OF_A_MESSAGE)}
        return {i for i in ids if i not in self.open and i not in self.finalized}

    def take_stored(self, found: list[StoredMessage]) -> None:
        """What the database holds of ids that ``unknown`` named; an id it lacks has no row yet."""
        for row in found:
            if row.streaming:  # ``load`` read every streaming one, and this process is the only writer
                raise NotInMemory(f"streaming message {row.message_id} is not in memory")
            self._remember_final(row.message_id, (row.length, row.reasoning_length))

    def forget_messages(self, message_ids: list[str]) -> None:
        """Messages deleted (their sessions purged): nothing of them is held, and the log may be cut past them."""
        for message_id in message_ids:
            self.open.pop(message_id, None)
            self.finalized.pop(message_id, None)
            self.first_chunk.pop(message_id, None)

    def drop_memory(self) -> None:
        """After a failed transaction nothing in memory can be trusted: reload before the next batch."""
        self.open.clear()
        self.finalized.clear()
        self.first_chunk.clear()
        self.loaded = False

    # ------------------------------------------------------------ the plan

    def plan(self, ops: list[m.Message]) -> Plan:
        """What ``ops`` write and ack, in order. Memory moves on as if the plan committed: if it does not,
        the shell calls ``forget``."""
        plan = Plan()
        chunks: list[tuple[int, str, int, str]] = []
        for op in ops:
            if isinstance(op, m.Append):
                self._append(op, plan, chunks)
                continue
            if chunks:  # keep order: chunks before what follows them
                self._flush_chunks(plan, chunks)
                chunks = []
            if isinstance(op, m.CreateMessage):
                self._create(op, plan)
            elif isinstance(op, m.Finalize):
                self._finalize(op, plan)
            elif isinstance(op, m.InterruptOrphans):
                self._interrupt_orphans(op, plan)
            elif isinstance(op, m.Reopen):
                self._reopen(op, plan)
            elif isinstance(op, m.SaveToolCalls):
                if op.message_id in self.open:  # a finalized one has its final calls: a late checkpoint is not
                    plan.writes.append(WriteToolCalls(op.message_id, op.tool_calls))
            elif isinstance(op, m.SaveSession):
                plan.writes.append(UpsertSession(op))
                plan.answers.append(m.SessionSaved(op.session_id, op.created_at))
            elif isinstance(op, (m.PurgeSessions, m.PurgeMessages)):
                plan.writes.append(PurgeRows(op))
            elif isinstance(op, m.SaveUser):
                plan.writes.append(SaveUserRow(op))
                plan.answers.append(m.UserSaved(op.op_id))  # answered by the shell, with what it found
        if chunks:
            self._flush_chunks(plan, chunks)
        self._turn_the_log(plan)
        return plan

    def _turn_the_log(self, plan: Plan) -> None:
        """Empty the other table once every streaming message's rows are in the current one; then, once the
        current one holds ``rotate_rows``, rows go into the emptied one."""
        if self.other_has_rows and min(self.first_chunk.values(), default=self.next_chunk_id) >= self.table_from:
            plan.writes.append(ClearLog(1 - self.table))
            self.other_has_rows = False
        if not self.other_has_rows and self.next_chunk_id - self.table_from >= self.rotate_rows:
            self.table, self.table_from, self.other_has_rows = 1 - self.table, self.next_chunk_id, True

    def mark_error(self, message_id: str, reason: str) -> Plan:
        """A streaming message whose operation could not be stored ends as ``error``, keeping its text."""
        plan = Plan()
        if message_id in self.open:
            self._write_final(message_id, Status.ERROR, self.open[message_id], None, {}, reason, None, plan)
        return plan

    def _exists(self, message_id: str) -> bool:
        return message_id in self.open or message_id in self.finalized

    def _append(self, op: m.Append, plan: Plan, chunks: list) -> None:
        if not self._exists(op.message_id):
            return  # its create has not been applied: no ack, so the coordinator resends the create
        stored = self.open.get(op.message_id)
        if stored is not None:
            length = stored.lengths[op.thinking]
            fresh = fresh_at(length, op.offset, op.text)  # a resend may overlap the stored text
            if fresh:
                chunks.append((self.next_chunk_id, op.message_id, length, fresh, op.thinking))
                self.first_chunk.setdefault(op.message_id, self.next_chunk_id)
                self.next_chunk_id += 1
                stored.parts[op.thinking].append(fresh)
                stored.lengths[op.thinking] = length + len(fresh)
        plan.acks[op.message_id] = self._ack(op.message_id)

    def _flush_chunks(self, plan: Plan, chunks: list) -> None:
        plan.writes.append(InsertChunks(chunks, self.table))
        plan.reply_text_bytes += sum(len(row[3].encode()) for row in chunks)

    def _create(self, op: m.CreateMessage, plan: Plan) -> None:
        plan.writes.append(UpsertSession(op))
        if op.supersedes:
            plan.writes.append(Supersede(list(op.supersedes)))
        if not self._exists(op.message_id):  # else a resent create: the row is there already
            plan.writes.append(InsertMessage(op))
            if op.status == Status.STREAMING:
                self.open[op.message_id] = OpenMessage()
            else:
                self._remember_final(op.message_id, (len(op.content), len(op.copied.reasoning) if op.copied else 0))
        plan.acks[op.message_id] = self._ack(op.message_id)

    def _finalize(self, op: m.Finalize, plan: Plan) -> None:
        if not self._exists(op.message_id):
            return
        stored = self.open.get(op.message_id)
        if stored is None:
            plan.acks[op.message_id] = self._ack(op.message_id)
        elif stored.lengths[0] < op.length or stored.lengths[1] < op.reasoning_length:
            plan.acks[op.message_id] = self._ack(op.message_id)  # wait for the resent appends
        else:  # a cancel may keep less than was checkpointed; a streaming row ends only in a final status
            self._write_final(op.message_id, move(Status.STREAMING, op.status), stored, (op.length, op.reasoning_length), op.stats,
                              op.error, op.content_hash, plan, op.prompt, op.tool_calls)
            plan.acks[op.message_id] = self._ack(op.message_id)

    def _reopen(self, op: m.Reopen, plan: Plan) -> None:
        """A finalized reply is continued: it streams again from its stored texts, which go first into the chunk
        log (a streaming message's durable text is its chunks, after a restart too). Its stored lengths must be
        the coordinator's; else the reopen is refused. A resend of an applied reopen is acked as it stands."""
        if op.message_id in self.open:
            plan.acks[op.message_id] = self._ack(op.message_id)
            return
        stored = self.finalized.get(op.message_id)
        if stored is None:
            return  # no such row (``learn`` found none): nothing to ack
        if stored != (len(op.content), len(op.reasoning)):
            plan.answers.append(m.PersistRejected(op.message_id, f"the reply to continue has {stored[0]} characters "
                                                  f"stored where the coordinator has {len(op.content)}"))
            return
        plan.writes.append(ReopenRow(op))
        chunks = []
        for text, thinking in ((op.content, False), (op.reasoning, True)):
            if text:
                chunks.append((self.next_chunk_id, op.message_id, 0, text, thinking))
                self.first_chunk.setdefault(op.message_id, self.next_chunk_id)
                self.next_chunk_id += 1
        if chunks:
            self._flush_chunks(plan, chunks)
        del self.finalized[op.message_id]
        self.open[op.message_id] = OpenMessage(([op.content] if op.content else [], [op.reasoning] if op.reasoning
                                                else []), [len(op.content), len(op.reasoning)])
        plan.acks[op.message_id] = self._ack(op.message_id)

    def _interrupt_orphans(self, op: m.InterruptOrphans, plan: Plan) -> None:
        """Every streaming message without a live generation becomes ``interrupted``, keeping the text that
        reached us. Only the coordinator knows which are live, so it sends the list."""
        live = set(op.live_message_ids)
        orphans = [message_id for message_id in self.open if message_id not in live]
        for message_id in orphans:
            self._write_final(message_id, Status.INTERRUPTED, self.open[message_id], None, {},
                              f"interrupted: {op.reason}", None, plan)
        plan.answers.append(m.OrphansInterrupted(len(orphans), op.sweep))
        plan.interrupted += len(orphans)

    def _write_final(self, message_id: str, status: str, stored: OpenMessage, lengths: tuple[int, int] | None,
                     stats: dict, error: str | None, content_hash: str | None, plan: Plan,
                     prompt: m.ContinuedPrompt | None = None, tool_calls: list | None = None) -> None:
        """The message's final row from its durable texts, cut to ``lengths`` (answer, thinking) if given."""
        text, reasoning = stored.text(False), stored.text(True)
        if lengths is not None:
            text, reasoning = text[:lengths[0]], reasoning[:lengths[1]]
        plan.writes.append(WriteFinal(message_id, status, text, stats, error, content_hash, reasoning, prompt,
                                      tool_calls))
        plan.reply_text_bytes += len(text.encode()) + len(reasoning.encode())
        self.first_chunk.pop(message_id, None)  # its rows in the chunk log may now be cut
        self._remember_final(message_id, (len(text), len(reasoning)))

    def _ack(self, message_id: str) -> tuple[int, bool, int]:
        if message_id in self.finalized:
            length, reasoning_length = self.finalized[message_id]
            return length, True, reasoning_length
        lengths = self.open[message_id].lengths
        return lengths[0], False, lengths[1]

    def _remember_final(self, message_id: str, lengths: tuple[int, int]) -> None:
        self.open.pop(message_id, None)
        self.finalized[message_id] = lengths
        if len(self.finalized) > FINALIZED_KEPT:
            for key in list(self.finalized)[: FINALIZED_KEPT // 2]:
                del self.finalized[key]
