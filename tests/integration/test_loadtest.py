"""A small load test through the real CLI, spawning its own real stack."""
from __future__ import annotations

import json
import subprocess
import sys

from tools.spawn import REPO


def test_small_loadtest_has_no_mismatches_and_right_statuses(tmp_path):
    out = tmp_path / "report.json"
    png = tmp_path / "plot.png"
    done = subprocess.run([sys.executable, "-m", "clients.cli", "loadtest", "--spawn", "--streams", "10",
                           "--count", "20", "--tokens", "60", "--tps", "150", "--cancel-frac", "0.4",
                           "--json", "--out", str(out), "--plot", str(png)],
                          cwd=REPO, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    assert report == json.loads(out.read_text())
    assert report["count"] == 20 and report["mismatches"] == 0 and report["errors"] == 0
    assert report["completed"] + report["cancelled"] == 20 and report["cancelled"] >= 1
    for key in ("ttft_ms", "delivery_latency_ms", "cancel_latency_ms"):
        assert set(report[key]) >= {"p50", "p95", "p99"}
    assert report["delivery_latency_ms"]["n"] > 0 and report["ttft_ms"]["n"] == 20
    for key in ("tokens_per_s", "backend_cpu_us_per_token", "db_bytes_per_content_byte", "late_deltas_dropped"):
        assert key in report
    assert {"coordinator", "persister", "generator"} <= set(report["cpu_us_per_token"]) <= set(report["rss_mb"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # append-only checkpoints: every reply byte is written once as a checkpoint and once in its final
    # row (a cancelled reply may have checkpointed a little more than it keeps). Rewriting the growing
    # text at each checkpoint would make this about the number of checkpoints per reply (~10 here).
    assert report["db_commits"] > 0
    assert 1.9 <= report["db_text_bytes_per_content_byte"] <= 2.3, report["db_text_bytes_per_content_byte"]
