"""Figures of two trees of the project side by side, each run from its own code: section a (the coordinator
alone, deltas/s) and section c at 50 and 1000 streams (CPU µs per token per process, disk bytes per content
byte). A change that should not move a figure (a refactor) is held to the spread of the runs of one tree.

    git worktree add /tmp/before REV
    .venv/bin/python bench/compare_trees.py /tmp/before . --rounds 2 --out bench/house.json

The trees take turns, so a machine that drifts during the runs drifts for both alike.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ONE_RUN = """
import json, os, sys
os.chdir(sys.argv[1]); sys.path.insert(0, sys.argv[1]); sys.argv = ["run.py"]
import bench.run as run
print(json.dumps({"a": run.bench_coordinator(), "c": run.bench_stack([50, 1000], 200, 20.0, 1)}))
"""


def one_run(tree: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", ONE_RUN, str(tree)], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {done.stderr[-2000:]}")
    raw = json.loads(done.stdout)
    figures = {"deltas_per_s": raw["a"]["deltas_per_s"]}
    for level in raw["c"]:
        n = level["streams"]
        figures[f"backend_us_per_token_{n}"] = level["backend_cpu_us_per_token"]
        figures[f"us_per_token_{n}"] = level["cpu_us_per_token"]
        figures[f"disk_bytes_per_content_byte_{n}"] = level["db_bytes_per_content_byte"]
        figures[f"mismatches_{n}"] = level["mismatches"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args()
    runs: dict[str, list] = {"before": [], "after": []}
    for i in range(args.rounds):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        for name in order:
            print(f"round {i + 1}: {name}", file=sys.stderr)
            runs[name].append(one_run(getattr(args, name).resolve()))
    result = {"before": str(args.before), "after": str(args.after), "runs": runs}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
