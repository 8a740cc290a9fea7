"""k. Search at scale: a SQLite database of 50,000 sessions and 1,000,000 messages (the store's own schema and
index, filled in bulk), then searched through a real coordinator and persister (``chatter search``'s rpc, the
reader thread, the index) with kinds of query in turn: a common word, a rare word, a phrase, a prefix, and a
word in one session. Prints one JSON object: build time, text and index bytes, and p50 / p99 latency per kind.

    .venv/bin/python bench/search.py [--sessions 50000] [--messages 1000000] [--queries 200]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services import store  # noqa: E402
from services.mock_llm.script import VOCABULARY  # noqa: E402
from tools.report import percentiles  # noqa: E402
from tools.spawn import LocalStack  # noqa: E402

WORDS = [w for w in VOCABULARY if w.strip() and w.strip().isalpha()]
RARE = [f"rare{i:05d}" for i in range(2000)]  # each in about one message in 500


def text_of(rng: random.Random, words: int) -> str:
    out = [rng.choice(WORDS) for _ in range(words)]
    if rng.random() < 0.002:
        out[rng.randrange(words)] = rng.choice(RARE)
    return " ".join(out)


def build(path: Path, sessions: int, messages: int, seed: int = 7) -> dict:
    """The database, filled through the store's schema (its triggers index every message as it goes in)."""
    db = store.open_database(f"sqlite:///{path}")
    store.migrate(db)
    rng = random.Random(seed)
    per = max(1, messages // sessions)
    started = time.perf_counter()
    session_rows, message_rows = [], []
    with db.atomic():
        for s in range(sessions):
            sid = f"{s:032x}"
            session_rows.append((sid, text_of(rng, 4), None, None, float(s), float(s), None, None, False))
            for p in range(per):
                role = "user" if p % 2 == 0 else "assistant"
                content = text_of(rng, 12 if role == "user" else 40)
                message_rows.append((f"{s:016x}{p:016x}", sid, p, role, content, "", len(content), "completed",
                                     float(s)))
            if len(message_rows) >= 20_000:
                _flush(db, session_rows, message_rows)
    _flush(db, session_rows, message_rows)
    built_s = time.perf_counter() - started
    text_bytes = db.execute_sql("SELECT SUM(LENGTH(CAST(content AS BLOB))) FROM message").fetchone()[0]
    try:
        index_bytes = db.execute_sql("SELECT SUM(pgsize) FROM dbstat WHERE name LIKE 'message_fts%'").fetchone()[0]
    except Exception:  # a build without the dbstat table: the file's growth with the index stands in
        index_bytes = None
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return {"sessions": sessions, "messages": sessions * per, "build_s": round(built_s, 1),
            "text_bytes": text_bytes, "index_bytes": index_bytes,
            "index_per_text_byte": round(index_bytes / text_bytes, 3) if index_bytes else None,
            "file_bytes": path.stat().st_size}


def _flush(db, sessions: list, messages: list) -> None:
    if sessions:
        db.cursor().executemany('INSERT INTO session (id, title, system, max_input_tokens, created_at, updated_at, '
                                'model, settings, title_set) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)', sessions)
    if messages:
        db.cursor().executemany('INSERT INTO message (id, session_id, position, role, content, reasoning, length, '
                                'status, created_at, updated_at, superseded) '
                                'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)', [(*row, row[-1]) for row in messages])
    sessions.clear()
    messages.clear()


def measure(path: Path, sessions: int, queries: int, seed: int = 11) -> dict:
    """Each kind of query ``queries`` times through a real coordinator and persister on the database."""
    workdir = Path(tempfile.mkdtemp(prefix="chatter-bench-k-"))
    stack = LocalStack(workdir, CHATTER_DATABASE_URL=f"sqlite:///{path}")
    rng = random.Random(seed)
    kinds = {
        "common word": lambda: rng.choice(WORDS),
        "rare word": lambda: rng.choice(RARE),
        "phrase": lambda: f'"{rng.choice(WORDS)} {rng.choice(WORDS)}"',
        "prefix": lambda: rng.choice(WORDS)[:3] + "*",
        "two words": lambda: f"{rng.choice(WORDS)} {rng.choice(RARE)}",
    }
    out = {}
    try:
        stack.start("persister", "coordinator")
        with stack.client(rpc_timeout_ms=60_000) as client:
            client.search("warm")  # the reader's connection, the index's first pages
            for kind, query in kinds.items():
                samples, hits = [], 0
                for _ in range(queries):
                    q = query()
                    started = time.perf_counter()
                    hits += len(client.search(q, limit=20))
                    samples.append((time.perf_counter() - started) * 1000)
                p = percentiles(samples)
                out[kind] = {"p50_ms": round(p["p50"], 2), "p99_ms": round(p["p99"], 2),
                             "hits_per_query": round(hits / queries, 1)}
            samples = []
            for _ in range(queries):
                sid = f"{rng.randrange(sessions):032x}"
                started = time.perf_counter()
                client.search(rng.choice(WORDS), session_id=sid)
                samples.append((time.perf_counter() - started) * 1000)
            p = percentiles(samples)
            out["a word in one session"] = {"p50_ms": round(p["p50"], 2), "p99_ms": round(p["p99"], 2)}
    finally:
        stack.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatter-search-") as tmp:
        path = Path(tmp) / "search.db"
        result = build(path, args.sessions, args.messages)
        result["latency"] = measure(path, args.sessions, args.queries)
        result["queries_each"] = args.queries
    print(json.dumps(result))


if __name__ == "__main__":
    main()
