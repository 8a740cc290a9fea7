"""The persister's shell: drain the persist queue, carry the core's write plan out in one transaction,
commit, ack.

The rules are pure: what operations write and ack in ``core.py``, what a failed transaction leads to in
``failures.py``. This is the I/O: sockets, reads and writes through ``store``, transactions, the database
file's identity, and the totals sent to the coordinator.
"""
from __future__ import annotations

import itertools
import os
import time

import msgspec
import peewee
import zmq

from protocol import messages as m
import transport
from services import config, shell, store
from services.persister import core
from services.persister.failures import DatabaseGone, Retry
from services.persister.lock import PersisterLock

DRAIN_BATCH = 4096
STATS_EVERY_S = 0.25
HEARTBEAT_S = 1.0  # an idle persister still reports (and checks its database) this often
UNREACHABLE_LOG_S = 30.0  # a database waited for at start is logged at once, then this often


class PersisterShell:
    def __init__(self) -> None:
        self.log = shell.start("persister")
        self.settings = config.PersisterSettings.from_env()
        self.group_commit_s = self.settings.group_commit_ms / 1000
        self.url = self.settings.database_url
        self.db = self.lock = self.file_identity = None  # ``open_database``, once the database answers
        self.core = core.PersisterCore(self.settings.chunk_log_rows)
        self.hold = core.AppendHold(self.settings.append_hold_ms / 1000)
        self.retry = Retry()
        self.reply_text_bytes = 0  # reply text written: checkpoint appends plus final contents (PersisterStats)
        self.ctx = zmq.Context()
        self.ops_in = transport.open_socket(self.ctx, transport.PERSIST, bind=False)
        self.acks_out = transport.open_socket(self.ctx, transport.PERSIST_ACKS, bind=False)
        self.refusals = shell.RefusalWatch(self.log, self.acks_out, transport.PERSIST_ACKS)
        self.stopping = False
        self.bad_frames = shell.BadFrames(self.log)
        self.failed_batches = self.commits = self.ops_applied = self.ops_rejected = 0
        self.stats_sent_at, self.stats_sent_for = 0.0, -1
        self.frames_dropped = 0  # to the coordinator, while it could not be reached (see ``send``)
        self.hello_sent = False
        self.probe_failing_since: float | None = None  # an idle persister's database check, when it fails
        self.probe_error: str | None = None
        self.last_failure: tuple[float, str] | None = None  # (when, words) of the database's last failure

    # ------------------------------------------------------------ loop

    def run(self) -> None:
        shell.on_stop_signals(self.stop)
        if not self.open_database():
            self.close()
            return
        # The coordinator answers with the live messages; every other streaming one is then interrupted.
        self.say_hello()
        self.log.info("persister_ready", database=store.describe_url(self.url))
        shell.freeze_startup_heap()
        while not self.stopping:
            if self.retry.holding:  # a failed transaction's operations go first, after their backoff
                wait_s = self.retry.retry_at - time.time()
                if wait_s > 0:
                    time.sleep(min(wait_s, STATS_EVERY_S))
                    self.heartbeat(idle=False)
                    continue
                self.commit(self.retry.next_ops())
                continue
            ops = self.hold.take(self.drain(), time.monotonic())
            if ops:
                self.commit(ops)
        held = self.hold.release()
        if held and not self.retry.holding:
            self.commit(held)  # what waited for company goes before leaving (else the coordinator resends it)
        self.send_stats()
        self.close()

    def close(self) -> None:
        self.refusals.close()
        self.ops_in.close(0)
        self.acks_out.close(0)
        self.ctx.term()
        if self.db is not None:
            self.db.close()
        if self.lock is not None:
            self.lock.release()
        self.log.info("persister_stopped")

    def open_database(self) -> bool:
        """The database, its lock and its schema. A server that does not answer yet (PostgreSQL starting, or
        away) is waited for with backoff: its host and error are logged at once and then every
        ``UNREACHABLE_LOG_S``, and the totals tell the coordinator (``chatter status``: the database is away);
        operations wait in the coordinator, which resends them. A setting it cannot work with (a wrong
        password, a database that does not exist) and a second persister are one line and exit 1. Returns
        False when stopped while waiting."""
        failures, logged_at = 0, None
        while not self.stopping:
            try:
                db = store.open_database(self.url)
                self.lock = PersisterLock(db, self.url)
                self.lock.acquire()
                changes = store.migrate(db)
            except store.DatabaseUnreachable as exc:
                words = shell.plain_error(exc)
            except store.DatabaseUrlError as exc:
                raise SystemExit(f"chatter persister: {exc}") from None
            except peewee.OperationalError as exc:  # it went away again between the connection and the schema
                if not store.is_unreachable(exc):
                    raise
                store.reset_connection(db)
                words = shell.plain_error(exc)
            else:
                if changes:
                    self.log.info("schema_migrated", changes=changes)
                if failures:
                    self.log.info("database_reachable", database=store.describe_url(self.url))
                self.db, self.file_identity = db, store.file_identity(db)
                self.probe_failing_since = self.probe_error = None
                return True
            if self.lock is not None:
                self.lock.release()  # taken again with the next connection
            failures += 1
            now = time.time()
            self.probe_failing_since, self.probe_error = self.probe_failing_since or now, words
            self.last_failure = (now, words)
            if logged_at is None or now - logged_at >= UNREACHABLE_LOG_S:
                logged_at = now
                self.log.error("database_unreachable", database=store.describe_url(self.url), error=words,
                               waiting_s=round(now - self.probe_failing_since))
            self.send_stats()
            wait_until = time.monotonic() + store.backoff_s(failures)
            while not self.stopping and time.monotonic() < wait_until:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.stopping = True

    def drain(self) -> list[m.Message]:
        """The next batch: what is queued now, gathered for ``CHATTER_GROUP_COMMIT_MS`` (every commit
        rewrites whole pages, so a few ms of gathering saves most of the bytes)."""
        due_in = self.hold.due_in(time.monotonic())
        if not self.ops_in.poll(STATS_EVERY_S * 1000 if due_in is None else min(STATS_EVERY_S, due_in) * 1000):
            if not self.heartbeat(idle=True) and self.stats_sent_for != self.commits:
                self.send_stats()  # idle now: the totals of the last commits still go out
            return []
        ops: list[m.Message] = []
        deadline = time.monotonic() + self.group_commit_s
        while True:
            ops.extend(shell.take_messages(self.ops_in, DRAIN_BATCH - len(ops), m.PERSIST_OPS, "persist",
                                          self.bad_frames))
            left_ms = (deadline - time.monotonic()) * 1000
            if len(ops) >= DRAIN_BATCH or left_ms <= 0 or not self.ops_in.poll(left_ms):
                return ops

    # ------------------------------------------------------------ transactions

    def commit(self, ops: list[m.Message]) -> None:
        try:
            plan = self.transaction(lambda: self.apply(ops))
        except Exception as exc:  # nothing acked: the operations are held and tried again
            self.core.drop_memory()  # memory may be ahead of what rolled back: reload before the next batch
            self.failed_batches += 1
            reason = shell.plain_error(exc)
            self.last_failure = (time.time(), reason)
            rejected = self.retry.failed(ops, exc, reason, time.time())
            if rejected is None and store.file_identity(self.db) == self.file_identity:
                # a server that restarted: reconnect on the next try (but never reopen the path of a deleted
                # database file, which would create an empty database there)
                store.reset_connection(self.db)
            if rejected is not None:
                self.reject(rejected, reason, exc)
            else:
                self.log.error("batch_failed", error=reason, ops=len(ops), failed_batches=self.failed_batches,
                               retry_in_s=round(max(0.0, self.retry.retry_at - time.time()), 2), exc_info=exc)
            self.send_stats()
            return
        if self.retry.holding:
            self.retry.applied(ops)
            if not self.retry.holding:
                self.log.info("database_recovered", failed_batches=self.failed_batches)
        self.probe_failing_since = self.probe_error = None
        self.commits += 1
        self.ops_applied += len(ops)
        self.reply_text_bytes += plan.reply_text_bytes
        if plan.interrupted:
            self.log.info("orphans_interrupted", count=plan.interrupted)
        for emptied in (w for w in plan.writes if type(w) is core.ClearLog):  # about once per reply's lifetime
            self.log.info("chunk_log_emptied", table=store.CHUNK_LOG[emptied.table]._meta.table_name)
        purges = [w for w in plan.writes if type(w) is core.PurgeRows]
        for purge in purges:
            self.core.forget_messages(purge.message_ids)
            plan.answers.append(m.SessionsPurged(purge.op.op_id, purge.found))
            if type(purge.op) is m.PurgeMessages:
                self.log.info("branch_deleted", session_id=purge.op.session_id, messages=len(purge.found))
            else:
                self.log.info("sessions_deleted", asked=len(purge.op.session_ids), deleted=len(purge.found),
                              messages=len(purge.message_ids))
        if purges:
            self.scrub()
        replies = [m.PersistAck(message_id, length, finalized, reasoning_length).encode()
                   for message_id, (length, finalized, reasoning_length) in plan.acks.items()]
        replies += [answer.encode() for answer in plan.answers]
        for frame in m.bundle(replies):  # one send per commit, not one per message (py-spy: 18% of this process)
            self.send(frame)
        if time.monotonic() - self.stats_sent_at > STATS_EVERY_S:
            self.send_stats()

    def scrub(self) -> None:
        """After a deletion: SQLite's free pages zeroed and its log emptied into the file, so that the deleted text
        is in neither (``store.scrub_free_pages``). A scrub that fails is logged, and the deletion still answered: its
        rows are gone, and the next deletion scrubs again."""
        try:
            pages = store.scrub_free_pages(self.db)
            self.log.info("free_pages_scrubbed", pages=pages)
        except Exception as exc:
            self.log.error("scrub_failed", error=shell.plain_error(exc))

    def apply(self, ops: list[m.Message]) -> core.Plan:
        """The core's plan for ``ops``, written (inside the caller's transaction)."""
        self.ensure_loaded()
        ops = [self.with_stored_texts(op) if type(op) is m.Reopen and op.length >= 0 else op for op in ops]
        unknown = self.core.unknown(ops)
        if unknown:
            self.core.take_stored([core.StoredMessage(*row) for row in store.stored_messages(unknown)])
        plan = self.core.plan(ops)
        self.write(plan.writes)
        return plan

    @staticmethod
    def with_stored_texts(op: m.Reopen) -> m.Reopen:
        """A reopen that names its texts by length: those the row holds, cut to the lengths (the core refuses it
        when the row's lengths differ)."""
        content, reasoning = store.final_texts(op.message_id)
        if (len(content), len(reasoning)) != (op.length, op.reasoning_length):
            content, reasoning = "?" * op.length, "?" * op.reasoning_length  # refused by its lengths, never written
        return msgspec.structs.replace(op, content=content, reasoning=reasoning)

    def ensure_loaded(self) -> None:
        if not self.core.loaded:  # one scan of the chunk log: at start and after a failed transaction
            self.core.load(store.streaming_ids(), store.streaming_chunks(), store.chunk_log_ids())

    def write(self, writes: list) -> None:
        write_plan(self.db, writes)

    def transaction(self, work):
        """``work()`` in one transaction, committed only while the database file is still the one opened.
        A failure rolls back and raises the first error: after a full disk SQLite has already rolled back,
        and the rollback's own complaint ("no transaction is active") would hide the real words; a server
        that dropped the connection leaves peewee's transaction stack empty, and its complaint would too."""
        first: BaseException | None = None
        # connect first: peewee's connect() clears its transaction stack, so opening a connection inside the
        # block (after ``reset_connection``) would pull the transaction out from under us
        self.db.connect(reuse_if_open=True)
        self.lock.held_by_this_connection()  # a new connection takes the lock again before it writes
        try:
            with self.db.manual_commit():
                self.db.begin()
                try:
                    result = work()
                    self.check_database_file()
                    self.db.commit()
                except BaseException as exc:
                    first = exc
                    try:
                        self.db.rollback()
                    except Exception:
                        pass
                    raise
        except BaseException as exc:
            if first is not None and exc is not first:
                raise first from None
            raise
        return result

    def heartbeat(self, *, idle: bool) -> bool:
        """Once a second, the totals, so that the coordinator knows this persister is there; an idle one also
        checks its database (``probe``), the hello if it did not go out, and a refused handshake. Returns
        whether it was time."""
        if time.monotonic() - self.stats_sent_at <= HEARTBEAT_S:
            return False
        if idle:
            if not self.hello_sent:  # the coordinator must hear that this persister started
                self.say_hello()
            self.refusals.check()
            self.probe()
        self.send_stats()
        return True

    def probe(self) -> None:
        """An idle persister's check that its database is there (one round trip), so that ``chatter status``
        tells of a database that went away before any reply needs it."""
        try:
            self.check_database_file()
            store.ping(self.db)
            self.lock.held_by_this_connection()
        except Exception as exc:
            reason = shell.plain_error(exc)
            if self.probe_failing_since is None:
                self.probe_failing_since = time.time()
                self.log.error("database_unreachable", error=reason)
            self.probe_error = reason
            self.last_failure = (time.time(), reason)
            if not isinstance(exc, DatabaseGone):
                store.reset_connection(self.db)
            return
        if self.probe_failing_since is not None:
            self.log.info("database_reachable")
        self.probe_failing_since = self.probe_error = None

    def check_database_file(self) -> None:
        """A database file deleted or replaced while open takes every later commit with it, silently."""
        if self.file_identity is not None and store.file_identity(self.db) != self.file_identity:
            raise DatabaseGone(f"the database file {self.db.database} was deleted or replaced while the persister "
                               "ran; nothing is acked until the persister is restarted, which opens it anew")

    def reject(self, op: m.Message, reason: str, exc: Exception) -> None:
        """An operation that fails alone, deterministically: dropped, and its reply ends as error."""
        self.ops_rejected += 1
        if type(op) is m.SaveSession:  # no reply to end: the coordinator only stops resending it
            self.log.error("operation_rejected", op="SaveSession", session_id=op.session_id, error=reason,
                           ops_rejected=self.ops_rejected, exc_info=exc)
            self.send(m.PersistRejected(op.session_id, reason).encode())
            return
        message_id = getattr(op, "message_id", None)
        self.log.error("operation_rejected", op=type(op).__name__, message_id=message_id, error=reason,
                       ops_rejected=self.ops_rejected, exc_info=exc)
        if message_id is None:
            return
        def mark_error() -> None:
            self.ensure_loaded()
            self.write(self.core.mark_error(message_id, f"could not be stored: {reason}").writes)

        try:
            self.transaction(mark_error)
        except Exception as mark_exc:
            self.core.drop_memory()
            self.log.warning("mark_error_failed", message_id=message_id, error=shell.plain_error(mark_exc))
        self.send(m.PersistRejected(message_id, reason).encode())

    def say_hello(self) -> None:
        self.hello_sent = self.send(m.PersisterHello(time.time(), os.getpid()).encode())

    def send(self, frame: bytes) -> bool:
        """To the coordinator, never blocking: with no connection to it (it is down, or refused this
        persister's key) a PUSH socket would block, and the persister could not even stop. What is dropped
        is resent: the coordinator resends every operation not acked, and the acks follow them."""
        if transport.offer(self.acks_out, frame):
            return True
        self.frames_dropped += 1
        return False

    def send_stats(self) -> None:
        self.stats_sent_at, self.stats_sent_for = time.monotonic(), self.commits
        self.send(m.PersisterStats(os.getpid(), self.commits, self.ops_applied, self.reply_text_bytes,
                                   self.failed_batches, self.ops_rejected,
                                   self.retry.failing_since or self.probe_failing_since,
                                   self.retry.last_error or self.probe_error, self.frames_dropped,
                                   *(self.last_failure or (None, None))).encode())


# How each step of a write plan is carried out, in plan order; a run of these two goes in one
# ``store.create_messages`` (its sessions first: a message needs only its session's row and count)
CREATES = (core.UpsertSession, core.InsertMessage)
WRITES = {
    core.Supersede: lambda db, w: store.supersede(w.message_ids),
    core.InsertChunks: lambda db, w: store.insert_chunks(db, w.rows, w.table),
    core.WriteFinal: lambda db, w: store.write_final(w.message_id, w.status, w.content, w.stats, w.error,
                                                    w.content_hash, w.reasoning, w.prompt, w.tool_calls),
    core.WriteToolCalls: lambda db, w: store.write_tool_calls(w.message_id, w.tool_calls),
    core.ReopenRow: lambda db, w: store.reopen_message(w.op),
    core.ClearLog: lambda db, w: store.clear_chunks(db, w.table),
    core.PurgeRows: lambda db, w: _purge(db, w),
    core.SaveUserRow: lambda db, w: store.save_user(w.op),
}


def _purge(db, w: core.PurgeRows) -> None:
    if type(w.op) is m.PurgeMessages:
        w.found = w.message_ids = store.purge_messages(db, w.op.session_id, w.op.message_ids, w.op.active_leaf)
    else:
        w.found, w.message_ids = store.purge_sessions(db, w.op.session_ids)


def write_plan(db, writes: list) -> None:
    """A write plan's steps carried out, in order, inside the caller's transaction."""
    for creates, run in itertools.groupby(writes, lambda item: type(item) in CREATES):
        if creates:  # a run of new messages and their sessions: a few statements, not four per message
            run = list(run)
            store.create_messages(db, [w.op for w in run if type(w) is core.UpsertSession],
                                  [w.op for w in run if type(w) is core.InsertMessage])
            continue
        for item in run:
            WRITES[type(item)](db, item)


def main() -> None:
    shell.main("persister", PersisterShell)
