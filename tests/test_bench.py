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

from ovchat.bench.quality import perplexity, text_windows
from ovchat.bench.report import format_table, median, ratio
from ovchat.bench.runners import decode_rate
from ovchat.bench.scaling import parse_lengths, scaling_labels, scaling_lengths
from ovchat.bench.speed import parse_variant, plan_bench, source_checkpoint, streaming_overhead, summarize
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
    followup = [
        {"prompt_tokens": 1040, "new_tokens": 8, "ttft_s": ttft * (2 + i), "decode_tok_s": None} for i in range(count)
    ]
    return {"short": short, "long": long, "followup": followup}


def test_median_and_ratio_ignore_missing_values() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([None, None]) is None
    assert ratio(150.0, 100.0) == 1.5
    assert ratio(1.0, None) is None and ratio(None, 1.0) is None and ratio(1.0, 0.0) is None
    assert decode_rate(65, 1.0) == 64.0
    assert decode_rate(1, 1.0) is None and decode_rate(10, 0.0) is None
    costs = [
        {"streamed_s_per_token": s, "bare_s_per_token": b} for s, b in ((0.0103, 0.01), (0.5, 0.011), (0.0104, 0.009))
    ]
    assert streaming_overhead(costs) == pytest.approx(0.0104 / 0.01 - 1)  # medians of each, then the ratio


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
    assert ovchat["ttft_s"]["followup"] == pytest.approx(0.15)  # median of 0.05 x (2, 3, 4)
    assert ovchat["ratio_vs_llamacpp"]["ttft_s"]["followup"] == pytest.approx(0.5)
    assert ovchat["ratio_vs_llamacpp"]["load_s"] == {"cold": 2.0, "warm": 2.0}
    assert ovchat["ratio_vs_llamacpp"]["peak_rss_mb"] == 3.0
    assert engines["llamacpp"]["ratio_vs_llamacpp"]["decode_tok_s"] == 1.0
    row = dict(zip(["engine", "decode"], format_table({"engines": engines})[0][:2], strict=True))
    assert row == {"engine": "ovchat", "decode": "119.0 (1.20x)"}


def test_without_llamacpp_every_ratio_is_empty() -> None:
    engines = summarize({"ovchat": fake_runs(0.05, 120.0)}, {"ovchat": {"load_s": {"cold": 2.0}, "peak_rss_mb": 9.0}})
    ratios = engines["ovchat"]["ratio_vs_llamacpp"]
    assert ratios["decode_tok_s"] is None and ratios["ttft_s"] == {"short": None, "long": None, "followup": None}
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
         "--variant", "kvf32:KV_CACHE_PRECISION=f32", "--json", str(report_path), "--plot", str(chart)],
        capture_output=True, text=True, env=os.environ.copy(), timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert set(report["engines"]) == {"ovchat", "optimum", "genai", "pytorch", "ovchat:kvf32"}
    assert report["settings"]["variants"] == {"ovchat:kvf32": {"KV_CACHE_PRECISION": "f32"}}
    assert "llamacpp" in report["skipped"] and "skipped llamacpp" in result.stderr
    for name, figures in report["engines"].items():
        assert set(figures) >= REPORT_KEYS, name
        assert figures["decode_tok_s"] > 0 and figures["ttft_s"]["short"] > 0 and figures["ttft_s"]["long"] > 0
        assert figures["load_s"]["cold"] > 0 and figures["load_s"]["warm"] > 0 and figures["peak_rss_mb"] > 0
        assert len(figures["runs"]["short"]) == 2  # --quick: two interleaved rounds
        assert len(figures["load_s"]["warm_runs"]) == 2 and min(figures["load_s"]["warm_runs"]) > 0
        assert figures["prompt_tokens"] == report["engines"]["ovchat"]["prompt_tokens"], name  # the same prompts
        assert figures["prompt_tokens"]["long"] > figures["prompt_tokens"]["short"]
        assert figures["prompt_tokens"]["followup"] > figures["prompt_tokens"]["long"]  # the same chat, one turn on
        assert figures["ttft_s"]["followup"] > 0
    assert "decode tok/s" in result.stdout and "ovchat" in result.stdout
    overhead = report["engines"]["ovchat"]["streaming_overhead"]
    assert isinstance(overhead, float) and overhead > -1 and "streaming costs" in result.stdout
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_variants_parse_into_labelled_ovchat_rows(tiny_irs: dict[str, Path]) -> None:
    assert parse_variant("bf16:INFERENCE_PRECISION_HINT=bf16") == ("ovchat:bf16", {"INFERENCE_PRECISION_HINT": "bf16"})
    assert parse_variant("x:A=1, B = 2") == ("ovchat:x", {"A": "1", "B": "2"})
    for bad in ("bf16", "bf16:", "bf16:KEY", "bf16:=1", ":A=1", "a b:A=1"):
        with pytest.raises(OvchatError, match="--variant"):
            parse_variant(bad)
    plan = plan_bench(
        tiny_irs["int8"], ["ovchat"], quick=True, threads=1, checkpoint_dir=source_checkpoint,
        variants=["u8:KV_CACHE_PRECISION=u8"],
    )  # fmt: skip
    assert plan.engines == ("ovchat", "ovchat:u8")
    assert plan.variants == {"ovchat:u8": {"KV_CACHE_PRECISION": "u8"}}


def test_scaling_lengths_leave_room_for_the_reply_and_labels_name_each_ir(tmp_path: Path) -> None:
    assert scaling_lengths(8192, quick=False, new_tokens=32) == [128, 256, 512, 1024, 2048, 4096]
    assert scaling_lengths(8192, quick=True, new_tokens=32) == [128, 1024, 4096]
    assert scaling_lengths(512, quick=False, new_tokens=32) == [128, 256]  # 512 + 32 + template > 512
    assert scaling_lengths(128, quick=False, new_tokens=32) == []
    assert scaling_lengths(2048, quick=False, new_tokens=32, asked=[64, 1024, 4096]) == [64, 1024]

    int8, int4 = tmp_path / "m-int8", tmp_path / "m-int4"
    labels = scaling_labels([int8, int4], with_llamacpp=True)
    assert labels == {
        "ovchat m-int8": ("ovchat", int8, {}),
        "ovchat m-int4": ("ovchat", int4, {}),
        "llamacpp": ("llamacpp", int8, {}),
    }
    with_variant = scaling_labels([int8], with_llamacpp=False, variants={"ovchat:pa": {"ATTENTION_BACKEND": "PA"}})
    assert with_variant == {
        "ovchat m-int8": ("ovchat", int8, {}),
        "ovchat:pa m-int8": ("ovchat", int8, {"ATTENTION_BACKEND": "PA"}),
    }
    with pytest.raises(OvchatError, match="given twice"):
        scaling_labels([int8, int8], with_llamacpp=False)


def test_perplexity_of_uniform_logits_is_the_vocabulary_size_and_of_certain_ones_is_one() -> None:
    import torch

    vocabulary = 50
    ids = [(7 * i) % vocabulary for i in range(1, 41)]
    windows = text_windows(ids, 16)
    assert [len(window) for window in windows] == [16, 16, 8]
    assert text_windows(ids[:17], 16) == [ids[:16]]  # a 1-token tail predicts nothing
    value, scored = perplexity(lambda window: torch.zeros(len(window), vocabulary), windows)
    assert scored == 15 + 15 + 7
    assert value == pytest.approx(vocabulary)

    def certain(window: list[int]) -> torch.Tensor:
        logits = torch.full((len(window), vocabulary), -1e4)
        for position, next_id in enumerate(window[1:]):
            logits[position, next_id] = 1e4
        return logits

    assert perplexity(certain, windows)[0] == pytest.approx(1.0)


def test_scaling_and_quality_commands_on_the_tiny_irs(tiny_irs: dict[str, Path], tmp_path: Path) -> None:
    irs = [str(tiny_irs["int8"]), str(tiny_irs["int4"])]
    scaling_json, scaling_png = tmp_path / "scaling.json", tmp_path / "scaling.png"
    command = [sys.executable, "-m", "ovchat.cli", "bench", "--scaling", "--quick", "-m", irs[0], "-m", irs[1]]
    result = subprocess.run(
        [*command, "--json", str(scaling_json), "--plot", str(scaling_png)],
        capture_output=True, text=True, env=os.environ.copy(), timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(scaling_json.read_text())
    assert set(report["engines"]) == {f"ovchat {Path(ir).name}" for ir in irs}  # no GGUF: llama.cpp skipped
    assert report["settings"]["lengths"] == [128]  # --quick on a 512-token context
    for points in report["engines"].values():
        (point,) = points
        assert 128 <= point["prompt_tokens"] <= 128 + 64
        assert point["ttft_s"] > 0 and point["decode_tok_s"] > 0 and point["rss_mb"] > 0
    assert scaling_png.read_bytes().startswith(b"\x89PNG")

    quality_json = tmp_path / "quality.json"
    command = [sys.executable, "-m", "ovchat.cli", "bench", "--quality", "-m", str(tiny_irs["fp16"]), "-m", irs[1]]
    result = subprocess.run(
        [*command, "--json", str(quality_json)],
        capture_output=True, text=True, env=os.environ.copy(), timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    models = json.loads(quality_json.read_text())["models"]
    assert list(models) == ["pytorch fp32", tiny_irs["fp16"].name, tiny_irs["int4"].name]
    assert models[tiny_irs["int4"].name]["weights"].startswith("int4")
    # fp16 weights through OpenVINO read the text almost exactly as the fp32 checkpoint does.
    assert models[tiny_irs["fp16"].name]["ratio_vs_fp32"] == pytest.approx(1.0, abs=0.01)
    assert all(row["perplexity"] > 1 for row in models.values())
    assert "perplexity" in result.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--variant", "nokeys"], "--variant 'nokeys'"),
        (["--quality", "--variant", "a:B=1"], "--variant applies to the speed benches"),
        (["--scaling", "--quality"], "not allowed with argument"),
    ],
)
def test_bench_flag_errors_are_one_line(tiny_irs: dict[str, Path], flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ovchat.cli", "bench", "-m", str(tiny_irs["int8"]), *flags],
        capture_output=True, text=True, env=os.environ.copy(), timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_several_models_need_scaling_or_quality(tiny_irs: dict[str, Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ovchat.cli", "bench", "-m", str(tiny_irs["int8"]), "-m", str(tiny_irs["int4"])],
        capture_output=True, text=True, env=os.environ.copy(), timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "give one --model" in result.stderr


def test_asked_lengths_are_parsed_or_refused_in_one_line() -> None:
    assert parse_lengths("1024,64,64") == [64, 1024]
    for text, why in (("64,many", "whole numbers"), ("8", "at least 16")):
        with pytest.raises(OvchatError, match=why):
            parse_lengths(text)
