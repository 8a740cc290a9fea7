"""``chatter chaos`` in the suite: SIGKILL of each process twice over 50 streams, each restarted by chaos's own
supervisor, and every reply accounted for against the mock's text, in the client and in the database."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tools.spawn import REPO


def test_two_kills_of_each_process_lose_nothing_and_double_nothing(tmp_path):
    """With a chunk log that turns to its other table every 64 rows, so that kills land around its turns."""
    out = tmp_path / "chaos.json"
    done = subprocess.run([sys.executable, "-m", "clients.cli", "chaos", "--spawn", "--streams", "50", "--trials", "6",
                           "--kill", "generator,persister,coordinator", "--seed", "7", "--json", "--out", str(out)],
                          cwd=REPO, capture_output=True, timeout=600,
                          env=os.environ | {"CHATTER_CHUNK_LOG_ROWS": "64", "CHATTER_CHAOS_KEEP": "1",
                                            "TMPDIR": str(tmp_path)})
    report = json.loads(done.stdout)
    assert report == json.loads(out.read_text())
    assert done.returncode == 0, (report.get("details"), done.stderr.decode()[-2000:])
    assert report["trials"] == 6 and {k: v["trials"] for k, v in report["by_kind"].items()} == {
        "generator": 2, "persister": 2, "coordinator": 2}
    for key in ("lost_acked_chars", "mismatches", "duplicates", "non_terminal", "interrupted"):
        assert report[key] == 0, (key, report["details"])
    assert report["errors_without_a_generator_kill"] == 0, report["details"]  # errors: replies whose upstream died
    assert report["completed"] > 0 and report["streams"] >= 50
    assert report["recovery_ms"]["unrecovered"] == 0 and report["recovery_ms"]["max"] is not None
    assert all(trial["affected"] > 0 for trial in report["trial_log"])  # every kill landed mid-stream
    emptied = [line for log in tmp_path.glob("chatter-chaos-*/persister*.log")
               for line in log.read_text().splitlines() if "chunk_log_emptied" in line]
    assert {"table='chunk'", "table='chunk_b'"} <= {word for line in emptied for word in line.split()}, emptied[:5]



def test_generator_kills_end_completed_not_error_by_the_continue_style_the_mock_declares(tmp_path):
    """The replies whose generator is killed go on from their text on the restarted one: the mock chaos spawns
    says it is vLLM, as make run's does, so CHATTER_CONTINUE_STYLE=auto (the default) continues them and none
    ends as error. A 10 s reply may see all three kills: the limit lets it go on after each."""
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if k not in ("CHATTER_CONTINUE_STYLE", "CHATTER_MOCK_SERVER")}
    done = subprocess.run([sys.executable, "-m", "clients.cli", "chaos", "--spawn", "--streams", "30", "--trials", "3",
                           "--kill", "generator", "--seed", "11", "--json", "--out", str(out)],
                          cwd=REPO, capture_output=True, timeout=600,
                          env=env | {"CHATTER_AUTO_CONTINUE": "3", "CHATTER_CHAOS_KEEP": "1", "TMPDIR": str(tmp_path)})
    report = json.loads(done.stdout)
    # where a reply was not continued, its coordinator's log says why
    declined = [line for log in tmp_path.glob("chatter-chaos-*/coordinator.log")
                for line in log.read_text().splitlines() if "generation_not_continued" in line][:5]
    assert done.returncode == 0, (report.get("details"), done.stderr.decode()[-2000:])
    assert report["trials"] == 3 and all(trial["affected"] > 0 for trial in report["trial_log"])
    for key in ("errors", "lost_acked_chars", "mismatches", "duplicates", "non_terminal", "interrupted"):
        assert report[key] == 0, (key, report["details"], declined)
    assert report["completed"] > 0
    assert report["continued"] > 0 and report["by_kind"]["generator"]["continued"] == report["continued"]
