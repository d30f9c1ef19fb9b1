"""``ovchat bench --synthetic``: the run on the tiny synthetic model (built once per session in conftest.py),
its ratios and table, several sizes in one report, the chart of decode against model size, and the command's
refusals. No figure is checked against a speed: only that every row was measured, and that the roofline's bytes
follow the weight formats."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ovchat.bench import command
from ovchat.bench.report import write_json
from ovchat.bench.roofline import Bandwidth, TokenBytes, describe, describe_bandwidth
from ovchat.bench.sizes import (
    EQUAL_BITS,
    IR_ENGINES,
    add_ratios,
    combine_synthetic_reports,
    draw_synthetic_chart,
    format_synthetic_table,
    parse_sizes,
    public_sizes,
    read_synthetic_reports,
    run_synthetic,
    synthetic_reports,
)
from ovchat.cli import build_parser
from ovchat.errors import OvchatError
from ovchat.paths import HOME_ENV

# A single-size report as the runs before several sizes wrote it: read as it is.
SAVED_REPORT = Path(__file__).parent.parent / "docs" / "bench-synthetic-qwen2.5-0.5b.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_report(synthetic_home: Path) -> dict[str, Any]:
    """One quick run on the tiny model, without llama.cpp's tools (CI does not build them)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOME_ENV, str(synthetic_home))
        return run_synthetic("tiny", threads=2, quick=True, llamacpp_tools=None)


def test_every_export_is_measured_by_every_engine(tiny_report: dict[str, Any]) -> None:
    ir_keys = {key for _, keys in EQUAL_BITS for key in keys}
    assert set(tiny_report["engines"]) == {f"{engine} {key}" for key in ir_keys for engine in IR_ENGINES}
    for label, row in tiny_report["engines"].items():
        # The synthetic weights never pick an end token, so every reply runs to its full length.
        assert row["new_tokens"] == tiny_report["settings"]["new_tokens"], label
        assert row["decode_tok_s"] > 0 and row["ttft_s"] > 0, label
        fraction = row["roofline"]["fraction_of_roofline"]
        assert math.isfinite(fraction) and fraction > 0, label
    assert "llama-bench" in tiny_report["skipped"]


def test_the_roofline_bytes_follow_the_weight_bits(tiny_report: dict[str, Any]) -> None:
    def total(label: str) -> int:
        return tiny_report["engines"][label]["roofline"]["bytes_per_token"]["total"]

    assert total("ovchat gguf-Q4_0") < total("ovchat gguf-Q8_0")
    assert total("ovchat int4") < total("ovchat int8")
    # Both engines read the same compiled weights of an IR.
    assert total("ovchat int8") == total("genai int8")


def test_ratios_are_to_llama_bench_at_equal_bits() -> None:
    def row(weights: str, decode: float, ttft: float) -> dict[str, Any]:
        return {"weights": weights, "decode_tok_s": decode, "ttft_s": ttft}

    rows = {
        "ovchat gguf-Q8_0": row("gguf-Q8_0", 30.0, 2.0),
        "ovchat int4": row("int4", 45.0, 1.0),
        "llama-bench Q8_0": row("Q8_0", 20.0, 4.0),
        "llama-bench Q4_0": row("Q4_0", 50.0, 1.0),
    }
    add_ratios(rows)
    assert rows["ovchat gguf-Q8_0"]["vs_llamacpp"] == {"decode_tok_s": 1.5, "ttft_s": 0.5}
    assert rows["ovchat int4"]["vs_llamacpp"] == {"decode_tok_s": 0.9, "ttft_s": 1.0}
    assert rows["llama-bench Q4_0"]["vs_llamacpp"]["decode_tok_s"] == 1.0


def test_the_table_has_a_row_per_engine(tiny_report: dict[str, Any]) -> None:
    header, rows = format_synthetic_table(tiny_report)
    assert len(rows) == len(tiny_report["engines"]) and all(len(row) == len(header) for row in rows)
    assert all(row[7].endswith("%") for row in rows)


def test_the_test_sizes_are_not_offered() -> None:
    assert public_sizes() == ["smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b", "llama3.2-1b"]


def test_sizes_are_comma_separated_in_the_order_given() -> None:
    assert parse_sizes("qwen2.5-1.5b, smollm2-135m") == ["qwen2.5-1.5b", "smollm2-135m"]
    assert parse_sizes("qwen2.5-0.5b") == ["qwen2.5-0.5b"]
    with pytest.raises(OvchatError, match="'tiny': choose one or more of smollm2-135m"):
        parse_sizes("smollm2-135m,tiny")  # a test size is not offered


# --- several sizes: one report, one chart ------------------------------------------------------------------


def size_report(size: str, parameters: int, machine: dict[str, Any], read_gb_s: float = 30.0) -> dict[str, Any]:
    """A single-size report in run_synthetic's shape, made up: each row reads ~1 byte a parameter at 8 bits and
    ~0.56 at 4 (plus the compiled IRs' f32 scales) and decodes at 40% of that roofline."""
    bandwidth = Bandwidth(threads=machine["threads"], array_mb=512.0, repeats=5, copy_gb_s=50.0, read_gb_s=read_gb_s)
    rows: dict[str, dict[str, Any]] = {}
    for gguf_type, ir_keys in EQUAL_BITS:
        bytes_per_value = 34 / 32 if gguf_type == "Q8_0" else 18 / 32
        labels = [*((engine, key) for key in ir_keys for engine in IR_ENGINES), ("llama-bench", gguf_type)]
        for engine, weights in labels:
            extra = 1.0 if engine == "llama-bench" else 1.05
            token_bytes = TokenBytes(round(parameters * bytes_per_value * extra), 0, 10**6, 96, "f16", True)
            decode = 0.4 * read_gb_s * 1e9 / token_bytes.total
            rows[f"{engine} {weights}"] = {
                "engine": engine,
                "weights": weights,
                "decode_tok_s": decode,
                "new_tokens": 64,
                "prompt_tokens": 1024,
                "ttft_s": parameters / 1e9,
                "roofline": describe(bandwidth, token_bytes, decode),
            }
    add_ratios(rows)
    return {
        "machine": machine,
        "model": {"size": size, "checkpoint": f"(made up: {size})", "parameters": parameters, "irs": {}, "ggufs": {}},
        "settings": {"rounds": 1, "new_tokens": 64, "short_prompt_tokens": 64, "prompt_tokens": 1024},
        "bandwidth": describe_bandwidth(bandwidth),
        "engines": rows,
        "skipped": {},
        "seconds": 60.0,
    }


@pytest.fixture
def saved_report() -> dict[str, Any]:
    return json.loads(SAVED_REPORT.read_text())


def test_a_saved_single_size_report_reads_as_one_size(saved_report: dict[str, Any]) -> None:
    (report,) = read_synthetic_reports([SAVED_REPORT])
    assert report == saved_report and report["model"]["size"] == "qwen2.5-0.5b"
    with pytest.raises(OvchatError, match="not an ovchat bench --synthetic report"):
        synthetic_reports({"engines": {}})


def test_several_sizes_round_trip_through_one_report(saved_report: dict[str, Any], tmp_path: Path) -> None:
    small = size_report("smollm2-135m", 134_515_008, saved_report["machine"])
    large = size_report("qwen2.5-1.5b", 1_543_714_304, saved_report["machine"])
    combined = combine_synthetic_reports([large, saved_report, small])
    # Smallest first, each element the single-size report unchanged.
    assert combined["sizes"] == ["smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b"]
    assert combined["reports"] == [small, saved_report, large]
    path = write_json(combined, tmp_path / "sizes.json", "synthetic")
    assert read_synthetic_reports([path]) == [small, saved_report, large]
    # A combined report combines again with another, as a later session's run would.
    extra = size_report("llama3.2-1b", 1_235_814_400, saved_report["machine"])
    again = combine_synthetic_reports(read_synthetic_reports([path, write_json(extra, tmp_path / "1b.json", "x")]))
    assert again["sizes"] == ["smollm2-135m", "qwen2.5-0.5b", "llama3.2-1b", "qwen2.5-1.5b"]
    for report in again["reports"]:  # every table still formats
        header, rows = format_synthetic_table(report)
        assert rows and all(len(row) == len(header) for row in rows)


def test_reports_from_different_cpus_or_threads_are_not_mixed(saved_report: dict[str, Any], tmp_path: Path) -> None:
    other_cpu = size_report("smollm2-135m", 134_515_008, {**saved_report["machine"], "cpu": "Intel Xeon"})
    with pytest.raises(OvchatError, match=r"different CPUs \(AMD EPYC: qwen2.5-0.5b; Intel Xeon: smollm2-135m\)"):
        combine_synthetic_reports([saved_report, other_cpu])
    with pytest.raises(OvchatError, match="different CPUs"):
        draw_synthetic_chart([saved_report, other_cpu], tmp_path / "chart.png")
    assert not (tmp_path / "chart.png").exists()
    other_threads = size_report("smollm2-135m", 134_515_008, {**saved_report["machine"], "threads": 4})
    with pytest.raises(OvchatError, match="different thread counts"):
        combine_synthetic_reports([saved_report, other_threads])
    with pytest.raises(OvchatError, match=r"qwen2\.5-0\.5b is in more than one report"):
        combine_synthetic_reports([saved_report, copy.deepcopy(saved_report)])


def is_png(path: Path) -> bool:
    from matplotlib.image import imread

    return path.read_bytes().startswith(PNG_SIGNATURE) and imread(path).ndim == 3


def test_the_chart_draws_decode_against_size(tiny_report: dict[str, Any], tmp_path: Path) -> None:
    """The tiny run (no llama-bench rows) beside made-up larger sizes taken on the same machine."""
    reports = [
        tiny_report,
        size_report("smollm2-135m", 134_515_008, tiny_report["machine"]),
        size_report("qwen2.5-0.5b", 494_032_768, tiny_report["machine"], read_gb_s=29.0),
    ]
    path = tmp_path / "charts" / "sizes.png"
    draw_synthetic_chart(reports, path)
    assert is_png(path)


def bench(*flags: str) -> int:
    """``ovchat bench`` with these flags, in this process, as the command runs them (a --synthetic run is given
    no models)."""
    return command.run(build_parser().parse_args(["bench", *flags]), [])


def test_the_command_combines_saved_reports_into_one_report_and_chart(
    saved_report: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = write_json(size_report("smollm2-135m", 134_515_008, saved_report["machine"]), tmp_path / "a.json", "x")
    chart, combined = tmp_path / "sizes.png", tmp_path / "sizes.json"
    flags = ["--synthetic-report", str(SAVED_REPORT), "--synthetic-report", str(small)]
    assert bench(*flags, "--plot", str(chart), "--report", str(combined)) == 0
    assert is_png(chart)
    sizes = [report["model"]["size"] for report in read_synthetic_reports([combined])]
    assert sizes == ["smollm2-135m", "qwen2.5-0.5b"]
    printed = capsys.readouterr().out
    assert "smollm2-135m (0.13B parameters" in printed and "qwen2.5-0.5b (0.49B parameters" in printed  # a table each

    elsewhere = size_report("qwen2.5-1.5b", 1_543_714_304, {**saved_report["machine"], "cpu": "Intel Xeon"})
    flags += ["--synthetic-report", str(write_json(elsewhere, tmp_path / "b.json", "x"))]
    with pytest.raises(OvchatError, match="different CPUs"):
        bench(*flags, "--plot", str(tmp_path / "mixed.png"))
    assert not (tmp_path / "mixed.png").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--synthetic", "gpt-5"], "--synthetic 'gpt-5': choose one or more of smollm2-135m, qwen2.5-0.5b"),
        (["--synthetic", "smollm2-135m,gpt-5"], "--synthetic 'gpt-5': choose one or more of"),
        (["--synthetic", "smollm2-135m,"], "--synthetic '': choose one or more of"),
        (["--synthetic", "smollm2-135m,qwen2.5-0.5b,smollm2-135m"], "--synthetic names smollm2-135m more than once"),
        (["--synthetic", "qwen2.5-0.5b", "--model", "x"], "--synthetic needs no --model"),
        (["--synthetic", "qwen2.5-0.5b", "--scaling"], "not allowed with argument"),
        (["--synthetic", "qwen2.5-0.5b", "--synthetic-report", "x.json"], "not allowed with argument"),
    ],
)
def test_the_command_refuses_in_one_line(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ovchat.cli", "bench", *flags], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
