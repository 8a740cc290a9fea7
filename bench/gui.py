"""``bench/gui.py``: the window's cost, offscreen: a 2,000-token reply at 200 tok/s in ``chatter gui``'s window
against a private stack; the GUI thread's CPU per token (``time.thread_time`` of the thread that runs Qt and
every slot) and the repaints a second. Section i of ``bench/RESULTS.md`` (``python bench/run.py --only i``)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.spawn import LocalStack  # noqa: E402


def bench_gui(tokens: int = 2000, tps: float = 200.0) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from clients.gui import Window

    workdir = Path(tempfile.mkdtemp(prefix="chatter-bench-i-"))
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(workdir))  # not the user's window size
    stack = LocalStack(workdir)
    try:
        stack.start()
        os.environ["CHATTER_RUN_DIR"] = str(stack.run_dir)
        app = QApplication.instance() or QApplication([])
        window = Window()
        window.show()
        window.ask("new", None)
        _pump(app, lambda: window.session_id)
        cpu0, wall0, repaints0 = time.thread_time(), time.monotonic(), window.repaints
        window.send(f"bench the window [[mock tokens={tokens} tps={tps:g}]]")
        _pump(app, lambda: window.last_outcome, timeout=tokens / tps + 60)
        cpu, wall = time.thread_time() - cpu0, time.monotonic() - wall0
        repaints = window.repaints - repaints0
        outcome = window.last_outcome
        window.close()
        return {"tokens": tokens, "tps": tps, "status": outcome["status"], "seconds": round(wall, 2),
                "gui_thread_cpu_us_per_token": round(cpu / tokens * 1e6, 1),
                "gui_thread_cpu_share": round(cpu / wall, 3), "repaints": repaints,
                "repaints_per_s": round(repaints / wall, 1)}
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _pump(app, predicate, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        app.processEvents()
        time.sleep(0.002)
    if not predicate():
        raise TimeoutError("the window never got there")


if __name__ == "__main__":
    print(json.dumps(bench_gui(), indent=2), flush=True)
    os._exit(0)  # as chatter gui does: leave before the interpreter finalizes Qt's objects
