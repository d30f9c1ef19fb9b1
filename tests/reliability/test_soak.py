"""A small soak run (tests/soak.py) as CI can afford it: 3 API clients x 3 turns and 2 browser tabs x 2 turns
against one `ovchat serve` on the tiny model. The figures for the README come from the same script on the
default model; here only what must hold is checked: every request answered, no reply mixed up with another
client's, the store whole, the server and the page alive. Memory is reported, never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "soak.py"


@pytest.mark.slow
def test_a_small_soak_run_holds(tiny_irs: dict[str, Path], browser: object, tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    command = [
        sys.executable, str(SOAK), "--model", str(tiny_irs["int8"]), "--clients", "3", "--turns", "3",
        "--page-sessions", "2", "--page-turns", "2", "--max-tokens", "24", "--parallel", "2", "--time-limit", "600",
        "--json", str(report_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert report_path.exists(), done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["alone_replies_distinct"], "the questions' replies made alone are alike: a mix-up could not be seen"
    assert report["errors"] == [] and report["mixed_replies"] == [], report
    assert report["api_requests"]["answered"] == report["api_requests"]["asked"] == 9
    assert report["page_turns_done"] == 4
    assert report["store"] == {"integrity": "ok", "chats": 2, "turns": 4, "problems": []}
    assert report["alive_after"] == {"server": True, "page": True}
    assert report["memory"]["server"]["samples"] > 0 and report["memory"]["server"]["peak_mb"] > 0
    assert done.returncode == 0, done.stdout[-3000:]
    assert "mixed replies" in done.stdout  # the table was printed
