"""``ovchat bench --synthetic``: the run on the tiny synthetic model (built once per session in conftest.py),
its ratios and table, and the command's refusals. No figure is checked against a speed: only that every row
was measured, and that the roofline's bytes follow the weight formats."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ovchat.bench.sizes import EQUAL_BITS, IR_ENGINES, add_ratios, format_synthetic_table, public_sizes, run_synthetic
from ovchat.paths import HOME_ENV


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
    assert public_sizes() == ["qwen2.5-0.5b", "qwen2.5-1.5b", "llama3.2-1b"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--synthetic", "gpt-5"], "--synthetic 'gpt-5': choose one of qwen2.5-0.5b"),
        (["--synthetic", "qwen2.5-0.5b", "--model", "x"], "--synthetic builds its own models"),
        (["--synthetic", "qwen2.5-0.5b", "--scaling"], "not allowed with argument"),
    ],
)
def test_the_command_refuses_in_one_line(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ovchat.cli", "bench", *flags], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
