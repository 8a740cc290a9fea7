"""``shell.freeze_startup_heap``: what a process built before its loop is frozen out of the collector's walks, and the
collector still runs: a cycle made afterwards is freed once the young generation fills. In a child interpreter,
so the test process's own collector is left as it was."""
from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import gc, weakref
    from services import shell

    class Node:
        pass

    kept = [Node() for _ in range(1000)]  # start-up's objects: frozen, never walked again
    shell.freeze_startup_heap()
    assert gc.isenabled(), "the collector is off"
    assert gc.get_freeze_count() >= len(kept), gc.get_freeze_count()
    assert gc.get_threshold()[0] == shell.GC_YOUNG_THRESHOLD

    cycle = Node(); cycle.me = cycle  # garbage that only the collector can free
    alive = weakref.ref(cycle)
    del cycle
    assert alive() is not None  # reference counting alone does not free a cycle
    churn = [[] for _ in range(shell.GC_YOUNG_THRESHOLD + 1)]  # the young generation fills: a collection runs
    assert alive() is None, "a cycle made after freeze_startup_heap was never collected"
    print("ok")
""")


def test_a_cycle_made_after_the_heap_is_settled_is_still_collected():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
