"""ovchat bench: its statistics and report shape, and a real run of the engines on the tiny model.

No timing is asserted anywhere: the figures are whatever the machine gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovchat.bench import format_table, median, plan_bench, ratio, source_checkpoint, summarize
from ovchat.bench_engines import decode_rate
from ovchat.errors import OvchatError

REPORT_KEYS = {"ttft_s", "decode_tok_s", "load_s", "peak_rss_mb", "ratio_vs_llamacpp"}


def fake_runs(ttft: float, rate: float, count: int = 3) -> dict[str, list[dict]]:
    short = [
        {"prompt_tokens": 30, "new_tokens": 64, "ttft_s": ttft * (1 + i / 10), "decode_tok_s": rate - i}
        for i in range(count)
    ]
    long = [
        {"prompt_tokens": 1000, "new_tokens": 8, "ttft_s": ttft * 10 + i, "decode_tok_s": None} for i in range(count)
    ]
    return {"short": short, "long": long}


def test_median_and_ratio_ignore_missing_values() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None, None]) is None
    assert ratio(150.0, 100.0) == 1.5
    assert ratio(1.0, None) is None and ratio(None, 1.0) is None and ratio(1.0, 0.0) is None
    assert decode_rate(65, 1.0) == 64.0
    assert decode_rate(1, 1.0) is None and decode_rate(10, 0.0) is None


def test_summary_gives_medians_and_ratios_to_llamacpp() -> None:
    samples = {"ovchat": fake_runs(0.05, 120.0), "llamacpp": fake_runs(0.1, 100.0)}
    extra = {
        "ovchat": {"load_s": {"cold": 2.0, "warm": 0.5}, "peak_rss_mb": 900.0},
        "llamacpp": {"load_s": {"cold": 1.0, "warm": 0.25}, "peak_rss_mb": 300.0},
    }
    engines = summarize(samples, extra)
    ovchat = engines["ovchat"]
    assert set(ovchat) >= REPORT_KEYS
    assert ovchat["decode_tok_s"] == 119.0  # median of 120, 119, 118
    assert ovchat["ttft_s"]["short"] == pytest.approx(0.055)
    assert ovchat["ratio_vs_llamacpp"]["decode_tok_s"] == pytest.approx(119.0 / 99.0)
    assert ovchat["ratio_vs_llamacpp"]["ttft_s"]["short"] == pytest.approx(0.5)
    assert ovchat["ratio_vs_llamacpp"]["load_s"] == {"cold": 2.0, "warm": 2.0}
    assert ovchat["ratio_vs_llamacpp"]["peak_rss_mb"] == 3.0
    assert engines["llamacpp"]["ratio_vs_llamacpp"]["decode_tok_s"] == 1.0
    row = dict(zip(["engine", "decode"], format_table({"engines": engines})[0][:2], strict=True))
    assert row == {"engine": "ovchat", "decode": "119.0 (1.20x)"}


def test_without_llamacpp_every_ratio_is_empty() -> None:
    engines = summarize({"ovchat": fake_runs(0.05, 120.0)}, {"ovchat": {"load_s": {"cold": 2.0}, "peak_rss_mb": 9.0}})
    ratios = engines["ovchat"]["ratio_vs_llamacpp"]
    assert ratios["decode_tok_s"] is None and ratios["ttft_s"] == {"short": None, "long": None}
    assert format_table({"engines": engines})[0][1] == "119.0"


def test_plan_skips_what_cannot_run_with_a_reason(tiny_irs: dict[str, Path], tmp_path: Path) -> None:
    plan = plan_bench(tiny_irs["int8"], None, quick=True, threads=2, checkpoint_dir=source_checkpoint)
    assert "llamacpp" not in plan.engines and "GGUF" in plan.notes["llamacpp"]
    assert plan.checkpoint is not None and (plan.checkpoint / "config.json").is_file()  # the tiny model's source
    assert plan.engines == ("ovchat", "optimum", "genai", "pytorch")
    assert (plan.rounds, plan.new_tokens) == (2, 64)
    with pytest.raises(OvchatError, match="unknown engine 'vllm'"):
        plan_bench(tiny_irs["int8"], ["vllm"], quick=True, threads=2, checkpoint_dir=source_checkpoint)
    with pytest.raises(OvchatError, match="is not an exported model folder"):
        plan_bench(tmp_path, None, quick=True, threads=2, checkpoint_dir=source_checkpoint)


def test_bench_command_on_the_tiny_model_writes_json_and_a_chart(tiny_irs: dict[str, Path], tmp_path: Path) -> None:
    report_path, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    result = subprocess.run(
        [sys.executable, "-m", "ovchat.cli", "bench", "--model", str(tiny_irs["int8"]), "--quick",
         "--json", str(report_path), "--plot", str(chart)],
        capture_output=True, text=True, env=os.environ.copy(), timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert set(report["engines"]) == {"ovchat", "optimum", "genai", "pytorch"}
    assert "llamacpp" in report["skipped"] and "skipped llamacpp" in result.stderr
    for name, figures in report["engines"].items():
        assert set(figures) >= REPORT_KEYS, name
        assert figures["decode_tok_s"] > 0 and figures["ttft_s"]["short"] > 0 and figures["ttft_s"]["long"] > 0
        assert figures["load_s"]["cold"] > 0 and figures["load_s"]["warm"] > 0 and figures["peak_rss_mb"] > 0
        assert len(figures["runs"]["short"]) == 2  # --quick: two interleaved rounds
        assert figures["prompt_tokens"]["long"] > figures["prompt_tokens"]["short"]
    assert "decode tok/s" in result.stdout and "ovchat" in result.stdout
    assert chart.read_bytes().startswith(b"\x89PNG")
