"""A long conversation's storage: database bytes per byte of conversation text as one session grows to 200
turns of ~1,000-character messages and ~1,000-character replies, on SQLite, through a real stack.

A reply that kept a copy of its prompt (and its preview) made a session's storage grow with the square of its
length; a prompt stored by reference keeps the ratio flat. Prints one JSON object; ``bench/run.py`` (section j)
runs it. ``--repo DIR`` measures another checkout of Chatter with this same script (the figures before a change).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS = ("actor", "stream", "offset", "queue", "café", "naïve", "数据", "🙂", "reply", "token", "durable", "socket")
MARKS = (25, 50, 100, 150, 200)


def user_text(turn: int, chars: int) -> str:
    """~``chars`` characters of deterministic words, asking the mock for a reply of about as many."""
    rng = random.Random(turn)
    directive = " [[mock tokens=215 tps=100000 ttft_ms=1]]"
    out = [f"turn {turn}:"]
    while sum(len(w) + 1 for w in out) < chars - len(directive):
        out.append(rng.choice(WORDS))
    return " ".join(out) + directive


def database_bytes(path: Path) -> int:
    """The bytes the database holds: its pages in use once the write-ahead log is copied into it."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, free, size = (conn.execute(f"PRAGMA {name}").fetchone()[0]
                             for name in ("page_count", "freelist_count", "page_size"))
        return (pages - free) * size
    finally:
        conn.close()


def run(turns: int = 200, chars: int = 1000) -> dict:
    from clients.api import Client
    from tools.spawn import LocalStack

    work = Path(tempfile.mkdtemp(prefix="chatter-conversation-"))
    stack = LocalStack(work, CHATTER_MAX_INPUT_TOKENS="2000000", CHATTER_RPC_TIMEOUT_MS="30000")
    stack.start()
    text_bytes, rows = 0, []
    try:
        with Client(rpc_timeout_ms=30_000, run_dir=str(stack.run_dir)) as client:
            session_id = client.new_session(max_input_tokens=2_000_000)
            client.subscribe(session_id)
            for turn in range(1, turns + 1):
                text = user_text(turn, chars)
                started = client.send(session_id, text, f"turn-{turn}")
                view = client.follow(session_id, started.generation_id)
                if view.status != "completed":
                    raise SystemExit(f"turn {turn} ended {view.status}: {view.final}")
                text_bytes += len(text.encode()) + len(view.text.encode())
                if turn in MARKS or turn == turns:
                    db = database_bytes(stack.db_path)
                    rows.append({"turns": turn, "conversation_bytes": text_bytes, "database_bytes": db,
                                 "database_bytes_per_text_byte": round(db / text_bytes, 2)})
                    print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    first, last = rows[0], rows[-1]
    return {"turns": turns, "chars_per_message": chars, "by_turns": rows,
            "growth": round(last["database_bytes_per_text_byte"] / first["database_bytes_per_text_byte"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--repo", help="a checkout of Chatter to measure instead of this one")
    args = parser.parse_args()
    if args.repo:  # its packages first, so its services and clients are the ones that run
        sys.path.insert(0, os.path.abspath(args.repo))
        os.environ["PYTHONPATH"] = os.path.abspath(args.repo) + os.pathsep + os.environ.get("PYTHONPATH", "")
    else:
        sys.path.insert(0, str(REPO))
    print(json.dumps(run(args.turns), indent=2))


if __name__ == "__main__":
    main()
