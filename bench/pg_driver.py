"""Which PostgreSQL driver the persister uses, by measurement: chunk-log rows inserted per second with
``executemany``, 200 rows a commit (the persister's shape), against a private local server.

    .venv/bin/python bench/pg_driver.py     # needs psycopg2-binary installed too, for the comparison

Measured here (2 cores, PostgreSQL 15): psycopg 3 57,919 rows/s, psycopg2 6,837 rows/s. psycopg 3 pipelines
executemany; psycopg2 sends one statement a row. So the declared driver is psycopg 3.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.pgserver import PostgresServer  # noqa: E402


def main() -> None:
    server = PostgresServer().start()
    try:
        drivers = {}
        import psycopg
        drivers["psycopg3"] = lambda: psycopg.connect(server.url)
        try:
            import psycopg2
            drivers["psycopg2"] = lambda: psycopg2.connect(server.url)
        except ImportError:
            pass
        rows = [(i, f"m{i % 200:032d}", i * 5, "token text ") for i in range(1, 20001)]
        results = {}
        for name, connect in drivers.items():
            conn = connect()
            cur = conn.cursor()
            cur.execute('DROP TABLE IF EXISTS chunk; CREATE TABLE chunk (id bigint PRIMARY KEY, '
                        'message_id varchar(64), "offset" integer, text text)')
            conn.commit()
            start = time.perf_counter()
            for at in range(0, len(rows), 200):
                cur.executemany('INSERT INTO chunk (id, message_id, "offset", text) VALUES (%s, %s, %s, %s)',
                                rows[at:at + 200])
                conn.commit()
            results[name] = round(len(rows) / (time.perf_counter() - start))
            conn.close()
        print(json.dumps({"chunk rows/s, executemany, 200 a commit": results}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
