"""The CPU and wall time of the coordinator's database reads (``services/store.py``), on a private
PostgreSQL server with some stored sessions: what the reader thread costs the coordinator's process, where
it holds the GIL that the loop needs.

    .venv/bin/python bench/reads.py [--sessions 300] [--calls 300]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services import store  # noqa: E402
from tools.loadtest import LoadSpec, run_loadtest  # noqa: E402
from tools.pgserver import PostgresServer  # noqa: E402
from tools.spawn import LocalStack  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    server = PostgresServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="chatter-bench-reads-"))
    try:
        url = server.new_database("reads")
        with LocalStack(workdir, CHATTER_DATABASE_URL=url) as stack:  # stores the sessions, then stops
            run_loadtest(LoadSpec(streams=50, count=args.sessions, tokens=5, tps=1000.0), spawn=False, stack=stack)
        db = store.open_database(url)
        ids = [row["session_id"] for row in store.list_sessions(100)]
        reads = {"list_sessions(100)": lambda i: store.list_sessions(100),
                 "load_session": lambda i: store.load_session(ids[i % len(ids)]),
                 "sessions_with_prefix": lambda i: store.sessions_with_prefix(ids[i % len(ids)][:10])}
        for name, read in reads.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(args.calls):
                read(i)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(f"{name}: {cpu * 1e6 / args.calls:.0f} µs CPU, {wall * 1e6 / args.calls:.0f} µs wall per call")
        db.close()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
