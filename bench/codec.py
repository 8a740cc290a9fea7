"""The codec's cost per frame, on the frames of the hot path: a 16-delta batch decoded (gen-events), a
stream delta built and encoded (stream), an append decoded (persist). Run it to see what the numbers in
``protocol/codec.py`` come from:

    .venv/bin/python bench/codec.py
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol import codec, messages as m  # noqa: E402

ID = "01a2336e9acff188d84e95f473e2a994"


def per_call_us(fn, n: int = 100_000) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - start) / n * 1e6, 2)


def main() -> None:
    batch = m.GenDeltaBatch([[ID, seq, " token", 1, 1764625000.123] for seq in range(16)]).encode()
    append = m.Append(ID, 10, "x" * 200).encode()
    results = {
        "decode GenDeltaBatch of 16, µs": per_call_us(lambda: codec.decode(batch, m.GEN_EVENTS + (m.Bundle,))),
        "build + encode StreamDelta, µs": per_call_us(
            lambda: m.StreamDelta(ID, ID, 100, " token token", 12, 1764625000.1).encode()),
        "decode Append, µs": per_call_us(lambda: codec.decode(append, m.PERSIST_OPS + (m.Bundle,))),
    }
    print(json.dumps(results, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
