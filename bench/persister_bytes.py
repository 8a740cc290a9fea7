"""Disk bytes the persister writes per content byte, without the rest of the stack.

Drives the persister's real core and writes (real SQLite, WAL mode, the real schema) with the load pattern of
``--total`` replies of ``--tokens`` tokens at ``--tps``, ``--streams`` of them at once: a user message
and a streaming assistant message per reply, an append per checkpoint interval, then a finalize. The
batches are committed every ``--commit-ms`` of simulated time, as the persister's group commit does.
Bytes come from this process's own I/O accounting (``/proc/self/io``), as in ``chatter loadtest``.
``--frames`` turns SQLite's automatic checkpoints off and counts the write-ahead log's frames by the table or
index that owns each page at the end (SQLite's ``dbstat``): which of them the bytes are. Freed pages (the chunk
log's front, once cut) count as "free".

    python bench/persister_bytes.py --streams 1000 --total 4000 --commit-ms 100
    python bench/persister_bytes.py --streams 1000 --total 1000 --commit-ms 50 --frames
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import struct
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from protocol import messages as m  # noqa: E402
from services import store  # noqa: E402
from services.coordinator.machine import new_ordered_id  # noqa: E402
from services.persister.core import PersisterCore  # noqa: E402
from services.persister.shell import write_plan  # noqa: E402
from tools.dbmeter import written_bytes  # noqa: E402

WORDS = ("the ", "stream ", "token ", "café ", "🙂", "数据 ", "reply ")


def wal_frames(db, path: str) -> tuple[int, collections.Counter]:
    """The page size, and the write-ahead log's frames by the table or index that owns each frame's page now."""
    with open(path, "rb") as wal:
        data = wal.read()
    page_size = struct.unpack(">I", data[8:12])[0]
    owners = dict((page, name) for name, page in db.execute_sql("SELECT name, pageno FROM dbstat"))
    frames: collections.Counter = collections.Counter()
    for at in range(32, len(data) - 24 - page_size + 1, 24 + page_size):  # a 32-byte header, then frames
        frames[owners.get(struct.unpack(">I", data[at:at + 4])[0], "free")] += 1
    return page_size, frames


def run(total: int, streams: int, tokens: int, tps: float, commit_ms: float, checkpoint_ms: float,
        random_ids: bool, frames: bool = False) -> dict:
    new_id = (lambda: uuid.uuid4().hex) if random_ids else new_ordered_id
    workdir = tempfile.mkdtemp(prefix="chatter-persister-bytes-")
    db = store.open_database(f"sqlite:///{workdir}/chatter.db")
    store.migrate(db)
    if frames:
        db.execute_sql("PRAGMA wal_autocheckpoint = 0")
    persister = PersisterCore()
    persister.load([], {}, store.chunk_log_ids())
    rng = random.Random(1)
    life = tokens / tps
    starts = [i * life / streams for i in range(total)]
    active: list[dict] = []
    started = commits = content = 0
    now, step = 0.0, commit_ms / 1000
    before = written_bytes()
    try:
        while started < total or active:
            batch: list = []
            while started < total and starts[started] <= now:
                session_id, message_id = uuid.uuid4().hex, new_id()
                batch.append(m.CreateMessage(new_id(), session_id, "t", None, "user", "hello there", "completed", now))
                batch.append(m.CreateMessage(message_id, session_id, "t", None, "assistant", "", "streaming", now,
                                             new_id(), [{"role": "user", "content": "hello there"}], "h" * 64,
                                             "[user]\nhello there", "mock-1", {}))
                active.append({"start": starts[started], "id": message_id, "length": 0, "sent": 0,
                               "due_at": starts[started] + checkpoint_ms / 1000})
                started += 1
            still = []
            for reply in active:
                if now >= reply["due_at"]:
                    due = min(tokens, int((now - reply["start"]) * tps))
                    if due > reply["sent"]:
                        text = "".join(rng.choice(WORDS) for _ in range(due - reply["sent"]))
                        batch.append(m.Append(reply["id"], reply["length"], text))
                        reply["length"] += len(text)
                        reply["sent"] = due
                        content += len(text.encode())
                    reply["due_at"] = now + checkpoint_ms / 1000
                    if reply["sent"] >= tokens:
                        batch.append(m.Finalize(reply["id"], "completed", reply["length"], "h" * 64, {}))
                        continue
                still.append(reply)
            active = still
            if batch:
                with db.atomic():  # what the persister's shell does with a batch, without its sockets
                    write_plan(db, persister.plan(batch).writes)
                commits += 1
            now += step
        disk = written_bytes() - before
        owners = wal_frames(db, f"{workdir}/chatter.db-wal") if frames else None
    finally:
        db.close()
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"total": total, "streams": streams, "commit_ms": commit_ms, "random_ids": random_ids,
              "commits": commits, "content_bytes": content, "disk_bytes": disk,
              "disk_bytes_per_content_byte": round(disk / content, 1)}
    if owners is not None:  # each owner's frames as bytes per content byte (a frame is a whole page)
        page_size, counts = owners
        result["wal_bytes_per_content_byte"] = {name: round(count * page_size / content, 1)
                                                for name, count in counts.most_common()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=4000, help="replies in all")
    parser.add_argument("--streams", type=int, default=1000, help="replies at once")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--tps", type=float, default=20.0)
    parser.add_argument("--commit-ms", type=float, default=10.0)
    parser.add_argument("--checkpoint-ms", type=float, default=250.0)
    parser.add_argument("--random-ids", action="store_true", help="random message ids, as before they were ordered")
    parser.add_argument("--frames", action="store_true", help="no automatic checkpoints; the log's frames by owner")
    args = parser.parse_args()
    print(json.dumps(run(args.total, args.streams, args.tokens, args.tps, args.commit_ms, args.checkpoint_ms,
                         args.random_ids, args.frames)))


if __name__ == "__main__":
    main()
