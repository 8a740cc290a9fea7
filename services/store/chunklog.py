"""The chunk log: a streaming message's checkpointed text, a commit's appends packed into one row, in two tables
used in turn; its writes, its reads, and the index of its rows this process has read."""
from __future__ import annotations

import re
import typing
import zlib

import msgspec
import peewee

from protocol.lifecycle import fresh_at
from services.store.models import _CHUNK_COLUMNS, CHUNK_LOG, IS_STREAMING, STREAMING, Message
from services.store.writes import _insert_sql


def insert_chunks(db: peewee.Database, rows: list[tuple[int, str, int, str, bool]], table: int = 0) -> None:
    """Rows (id, message id, offset, text, thinking) at the chunk log's end, in its table number ``table``: one row
    of the table holds them all, packed (``_pack_entries``), under the last one's id.

    Why: an append is ~28 bytes of text (a checkpoint of one reply every 250 ms at 20 tok/s), and its own row
    was ~77 bytes with its 32-character message id; written to the log and again when the log is copied into
    the file. Measured (docs/PERFORMANCE.md, "A commit's appends in one packed row"): ``bench/persister_bytes.py``
    19.9 -> 16.0 disk bytes per content byte at 1000 streams and 20.6 -> 18.3 at 50 (packed without zlib: 19.5 and
    19.7); load tests, two pairs alternating, 13.0 / 17.2 -> 10.4 / 10.3 at 1000 streams, 9.8 / 10.4 -> 7.8 / 7.6
    at 50."""
    if rows:
        db.cursor().execute(_insert_sql(db, CHUNK_LOG[table], _CHUNK_COLUMNS),
                            (rows[-1][0], "", 0, "", False, _pack_entries(rows)))


# A packed row's first byte says its layout: 0x01, the appends as columns (message ids as 16 bytes), msgpack then
# zlib; 0x78, an earlier version's tuples. Measured: 54.7 -> 41.3 KB for a load test's log (PERFORMANCE.md, "The store's measurements").
_COLUMNS = b"\x01"
_HEX_ID = re.compile(r"[0-9a-f]{32}")
_encode_columns = msgspec.msgpack.Encoder().encode
_decode_columns = msgspec.msgpack.Decoder(
    tuple[int | list[int], list[typing.Any], list[int], list[str], list[int]]).decode  # str or bytes (no union)
_decode_tuples = msgspec.msgpack.Decoder(list[tuple[int, str, int, str, bool]]).decode


def _pack_entries(rows: list[tuple[int, str, int, str, bool]]) -> bytes:
    first = rows[0][0]
    ids = first if all(row[0] == first + i for i, row in enumerate(rows)) else [row[0] for row in rows]
    keys = [bytes.fromhex(row[1]) if _HEX_ID.fullmatch(row[1]) else row[1] for row in rows]
    thinking = [i for i, row in enumerate(rows) if row[4]]
    return _COLUMNS + zlib.compress(
        _encode_columns((ids, keys, [row[2] for row in rows], [row[3] for row in rows], thinking)), 1)


def _unpack_entries(packed: bytes) -> list[tuple[int, str, int, str, bool]]:
    packed = bytes(packed)
    if not packed.startswith(_COLUMNS):
        return _decode_tuples(zlib.decompress(packed))
    ids, keys, offsets, texts, thinking = _decode_columns(zlib.decompress(packed[1:]))
    if type(ids) is int:
        ids = range(ids, ids + len(keys))
    thought = set(thinking)
    return [(chunk_id, key.hex() if type(key) is bytes else key, offset, text, i in thought)
            for i, (chunk_id, key, offset, text) in enumerate(zip(ids, keys, offsets, texts, strict=True))]


def log_entries(row) -> list[tuple[int, str, int, str, bool]]:
    """The appends (id, message id, offset, text, thinking) a row of the chunk log holds (its columns in
    ``_CHUNK_COLUMNS`` order): a packed row's, or an earlier version's plain row itself."""
    chunk_id, message_id, offset, text, thinking, packed = row
    if packed is None:
        return [(chunk_id, message_id, offset, text, bool(thinking))]
    return _unpack_entries(packed)


def streaming_ids() -> list[str]:
    return [row[0] for row in Message.select(Message.id).where(IS_STREAMING).tuples().iterator()]


def streamed_texts(message_id: str) -> tuple[str, str]:
    """The answer and the thinking of a message as durable now: its columns if final, else its chunks in
    order (a scan of the chunk log, which holds only what recent and streaming messages wrote)."""
    msg = Message.get_by_id(message_id)
    if msg.status != STREAMING:
        return msg.content, msg.reasoning
    texts = _ChunkTexts()
    for by_message in _log_rows():
        for _, _, offset, text, thinking in by_message.get(message_id, ()):
            texts.add(offset, text, bool(thinking))
    return "".join(texts.parts[0]), "".join(texts.parts[1])


class _ChunkTexts:
    """A message's texts from its chunk rows in log order, each applied where its offset continues the text (as
    the persister applies appends): a reply continued after it was final has its stored text again as its first
    new rows, and rows of its first stream may still be in the log before them."""

    __slots__ = ("parts", "lengths")

    def __init__(self) -> None:
        self.parts: tuple[list[str], list[str]] = ([], [])
        self.lengths = [0, 0]

    def add(self, offset: int, text: str, thinking: bool) -> None:
        fresh = fresh_at(self.lengths[thinking], offset, text)
        if fresh:
            self.parts[thinking].append(fresh)
            self.lengths[thinking] += len(fresh)


def streaming_chunks() -> dict[str, tuple[int, list[str], list[str]]]:
    """Every streaming message's checkpointed texts, in one scan of the log: message id -> (its first
    chunk id, its answer's parts in order, its thinking's). A message with no chunk yet is absent."""
    found: dict[str, tuple[int, _ChunkTexts]] = {}
    streaming = set(streaming_ids())
    for by_message in _log_rows():
        for message_id in streaming.intersection(by_message):
            for chunk_id, _, offset, text, thinking in by_message[message_id]:
                if message_id not in found:
                    found[message_id] = (chunk_id, _ChunkTexts())
                found[message_id][1].add(offset, text, bool(thinking))
    return {message_id: (first, texts.parts[0], texts.parts[1]) for message_id, (first, texts) in found.items()}


# The log's rows this process has read, (table, row id) -> appends by message id: a row changes only when a deletion
# takes appends out of it (then the index is emptied), so a read unpacks only the rows it has not seen (4.4-6.1 -> 0.9-1.5 ms a call; PERFORMANCE.md, "The store's measurements").
_LOG_INDEX: dict[tuple[str, int], dict[str, list]] = {}


def forget_log_index() -> None:
    """Read the log's rows again from now on: a deletion rewrote some under their ids (``deletion.purge_log_entries``)."""
    _LOG_INDEX.clear()


def _log_rows() -> list[dict[str, list]]:
    """The chunk log's rows in id order, each as its appends (id, message id, offset, text, thinking) by message id;
    the rows not read before are read and unpacked now, and those no longer in the log are forgotten."""
    index, present = _LOG_INDEX, []
    for table in CHUNK_LOG:
        name = table._meta.table_name
        ids = [row_id for (row_id,) in table.select(table.id).tuples()]
        missing = [row_id for row_id in ids if (name, row_id) not in index]
        for start in range(0, len(missing), 500):
            for row in _log_query(table).where(table.id.in_(missing[start:start + 500])):
                by_message: dict[str, list] = {}
                for entry in log_entries(row):
                    by_message.setdefault(entry[1], []).append(entry)
                index[(name, row[0])] = by_message
        present += [(row_id, name) for row_id in ids]
    present.sort()
    if len(index) > len(present):  # rows emptied since (the one dict kept: others hold it by name)
        kept = {(name, row_id): index[(name, row_id)] for row_id, name in present}
        index.clear()
        index.update(kept)
    return [index[(name, row_id)] for row_id, name in present]


def _log_query(table):
    """The rows of one of the log's tables, their columns in ``_CHUNK_COLUMNS`` order, as ``log_entries`` takes them."""
    return table.select(*(getattr(table, f.name) for f in table._meta.sorted_fields)).tuples()


def clear_chunks(db: peewee.Database, table: int) -> None:
    """Empty the chunk log's table number ``table``: a DELETE without a condition, which frees its pages without
    visiting its rows. On SQLite its freed pages are not zeroed first (``secure_delete``, on in Debian's
    build, is turned off for this statement alone): they are the log's, whose text the finished replies'
    rows hold, and zeroing them wrote every one of them once more (12.0 against 6.6 bytes per byte logged)."""
    sqlite = isinstance(db, peewee.SqliteDatabase)
    secure = db.execute_sql("PRAGMA secure_delete").fetchone()[0] if sqlite else None
    if sqlite:
        db.execute_sql("PRAGMA secure_delete = 0")
    try:
        db.execute_sql(f'DELETE FROM "{CHUNK_LOG[table]._meta.table_name}"')
    finally:
        if sqlite:
            db.execute_sql(f"PRAGMA secure_delete = {int(secure)}")


def chunk_log_ids() -> list[tuple[int, int] | None]:
    """Each of the log's tables' first and last append id, or None where it is empty (a packed row's id is its last
    append's)."""
    out = []
    for table in CHUNK_LOG:
        first_row, last = table.select(peewee.fn.MIN(table.id), peewee.fn.MAX(table.id)).tuples().get()
        if last is None:
            out.append(None)
            continue
        row = _log_query(table).where(table.id == first_row).get()
        out.append((log_entries(row)[0][0], last))
    return out
