"""A small load test through the real CLI, spawning its own real stack."""
from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from tests.integration.stack import wait_until
from tools.spawn import REPO


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_small_loadtest_has_no_mismatches_and_right_statuses(tmp_path, database, postgres_server):
    out = tmp_path / "report.json"
    png = tmp_path / "plot.png"
    url = ["--database-url", postgres_server().new_database("loadtest")] if database == "postgresql" else []
    done = subprocess.run([sys.executable, "-m", "clients.cli", "loadtest", "--spawn", "--streams", "10",
                           "--count", "20", "--tokens", "60", "--tps", "150", "--cancel-frac", "0.4",
                           "--json", "--out", str(out), "--plot", str(png), *url],
                          cwd=REPO, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    assert report == json.loads(out.read_text())
    assert report["count"] == 20 and report["mismatches"] == 0 and report["errors"] == 0
    assert report["completed"] + report["cancelled"] == 20 and report["cancelled"] >= 1
    for key in ("ttft_ms", "delivery_latency_ms", "cancel_latency_ms"):
        assert set(report[key]) >= {"p50", "p95", "p99"}
    assert report["delivery_latency_ms"]["n"] > 0 and report["ttft_ms"]["n"] == 20
    # every token of a completed reply has its way from the mock to the client; a cancelled one's rest has not
    assert report["completed"] * 60 <= report["upstream_to_client_ms"]["n"] <= 20 * 60
    assert report["upstream_to_client_ms"]["p50"] > 0
    for key in ("tokens_per_s", "backend_cpu_us_per_token", "db_bytes_per_content_byte", "late_deltas_dropped"):
        assert key in report
    assert {"coordinator", "persister", "generator"} <= set(report["cpu_us_per_token"]) <= set(report["rss_mb"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # append-only checkpoints: every reply byte is written once as a checkpoint and once in its final
    # row (a cancelled reply may have checkpointed a little more than it keeps). Rewriting the growing
    # text at each checkpoint would make this about the number of checkpoints per reply (~10 here).
    assert report["db_commits"] > 0
    assert 1.9 <= report["db_text_bytes_per_content_byte"] <= 2.3, report["db_text_bytes_per_content_byte"]
    if database == "sqlite":
        assert report["db_server"] is None
        assert report["db_bytes_source"] == "persister process (SQLite) + the log's last copy"
        # the log's rest copied into the file at the end, counted: the run's bytes whatever the log's size
        assert report["db_sqlite"]["checkpointed"] and report["db_sqlite"]["wal_copy_bytes"] > 0
    else:  # the server's own writes: every reply byte is in the WAL at least once (its checkpoint row)
        server = report["db_server"]
        assert report["db_bytes_source"].startswith("postgresql server")
        assert server["wal_bytes"] > report["content_bytes"] and server["wal_bytes_per_content_byte"] > 1
        assert report["db_bytes_written"] == server["wal_bytes"] + server["data_page_bytes"]
        assert server["checkpointed"] and server["data_page_bytes"] > 0
        assert server["processes"] >= 3 and server["cpu_s"] > 0  # its backend worked for the persister


@pytest.mark.parametrize("field", ["reasoning", "think_tags"])
def test_a_loadtest_of_thinking_replies_has_no_mismatch_in_either_text(tmp_path, field):
    """200 streams that think before they answer, some cancelled: both texts of every reply equal the mock's,
    in the client and in the database."""
    done = subprocess.run([sys.executable, "-m", "clients.cli", "loadtest", "--spawn", "--streams", "200",
                           "--tokens", "20", "--reasoning-tokens", "30", "--reasoning-field", field, "--tps", "60",
                           "--cancel-frac", "0.2", "--json"], cwd=REPO, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    assert report["count"] == 200 and report["mismatches"] == 0 and report["errors"] == 0, report["mismatch_details"]
    assert report["completed"] + report["cancelled"] == 200 and report["cancelled"] >= 1
    assert report["reasoning_bytes"] > report["content_bytes"] / 2  # 30 tokens of thinking to 20 of answer


def test_a_loadtest_with_markdown_replies_verifies_them_like_the_rest():
    """--markdown-frac: a share of the replies are the mock's Markdown document (fenced code, a table, lists),
    checked against it in the client and the database; some cancelled."""
    from tools.verify import wants_markdown
    assert 3 <= sum(wants_markdown(1, i, 0.4) for i in range(20)) <= 17  # the run below holds both kinds
    done = subprocess.run([sys.executable, "-m", "clients.cli", "loadtest", "--spawn", "--streams", "10",
                           "--count", "20", "--tokens", "30", "--tps", "400", "--markdown-frac", "0.4",
                           "--cancel-frac", "0.3", "--json"], cwd=REPO, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    assert (report["count"], report["mismatches"], report["errors"]) == (20, 0, 0), report["mismatch_details"]
    assert report["completed"] + report["cancelled"] == 20


def test_a_loadtest_run_in_process_settles_its_callers_collector_for_the_run_only():
    """``run_loadtest`` settles the heap of the process it runs in (its collector's pauses were counted as
    delivery latency), and gives the caller its collector back as it was."""
    from tools.loadtest import LoadSpec, run_loadtest
    before = gc.get_threshold(), gc.get_freeze_count()
    report = run_loadtest(LoadSpec(streams=3, tokens=5, tps=100), spawn=True)
    assert report["mismatches"] == 0 and report["completed"] == 3
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_a_postgresql_restart_during_a_loadtest_is_a_gap_in_its_meter_not_a_crash(tmp_path, postgres_server):
    """The server restarts mid-run: the meter reconnects, marks the gap, and the report is printed; every reply is
    still whole."""
    server = postgres_server()
    url = server.new_database("meter")
    out = tmp_path / "report.json"
    run = subprocess.Popen([sys.executable, "-m", "clients.cli", "loadtest", "--spawn", "--streams", "10",
                            "--count", "30", "--tokens", "200", "--tps", "100", "--json", "--out", str(out),
                            "--database-url", url], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _replies_stored(url) > 0, timeout=120, what="the load test's first replies")
        server.restart("fast")  # the meter began before the first reply: this restart is inside its run
        stdout, stderr = run.communicate(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0 and b"Traceback" not in stderr, stderr.decode()[-3000:]
    report = json.loads(stdout)
    assert report["count"] == 30 and report["mismatches"] == 0 and report["errors"] == 0
    gap = report["db_server"]["gap"]
    assert gap and ("restarted" in gap or "lost" in gap), gap
    assert report["db_server"]["wal_bytes"] > 0  # WAL positions go on across a restart


def _replies_stored(url: str) -> int:
    import psycopg
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM message").fetchone()[0]
    except psycopg.Error:  # no tables yet, or the server restarting
        return 0
