"""export_ir.py as a user runs it: bad input gets one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_export_ir(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "export_ir.py"), *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("export_ir.py: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def write_gguf(path: Path, architecture: str, tensor_type: str, file_type: str | None = None) -> Path:
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

    writer = GGUFWriter(str(path), architecture)
    if file_type is not None:
        writer.add_file_type(LlamaFileType[file_type])
    quant = GGMLQuantizationType[tensor_type]
    if quant is GGMLQuantizationType.F32:
        writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    else:
        # Raw bytes of the right size for a 4 x 32 tensor of that quantization type.
        from gguf.constants import GGML_QUANT_SIZES

        block, type_size = GGML_QUANT_SIZES[quant]
        raw = np.zeros((4, 32 // block * type_size), dtype=np.uint8)
        writer.add_tensor("token_embd.weight", raw, raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_missing_path(tmp_path: Path) -> None:
    assert_one_line_error(run_export_ir(str(tmp_path / "no-such-model")), "does not exist")


def test_folder_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    assert_one_line_error(run_export_ir(str(folder)), "neither a Hugging Face checkpoint", "config.json")


def test_file_that_is_not_a_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"this is not a gguf file at all")
    assert_one_line_error(run_export_ir(str(fake)), "not a readable GGUF file")


def test_gguf_of_an_unsupported_architecture(tmp_path: Path) -> None:
    gguf = write_gguf(tmp_path / "odd.gguf", "rwkv7", "F32")
    assert_one_line_error(run_export_ir(str(gguf)), "architecture 'rwkv7' is not supported")


def test_gguf_of_an_unsupported_quant_type(tmp_path: Path) -> None:
    gguf = write_gguf(tmp_path / "q81.gguf", "llama", "Q8_1")
    assert_one_line_error(run_export_ir(str(gguf)), "quantization type Q8_1 is not supported")


def test_keeping_the_blocks_of_a_gguf_type_the_reader_refuses(tmp_path: Path) -> None:
    gguf = write_gguf(tmp_path / "k-quants.gguf", "llama", "Q4_K", file_type="MOSTLY_Q4_K_M")
    assert_one_line_error(
        run_export_ir(str(gguf), "--weight-format", "gguf"),
        "GGUF quantization type Q4_K_M is not supported; --weight-format int8 or int4 dequantizes it instead",
    )


def test_keeping_the_blocks_of_a_checkpoint(tiny_checkpoint: Path) -> None:
    assert_one_line_error(
        run_export_ir(str(tiny_checkpoint), "--weight-format", "gguf"), "keeps a GGUF file's own quantized blocks"
    )


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--weight-format", "int3"], "invalid choice: 'int3'"),
        (["--weight-format", "int4", "--ratio", "1.5"], "--ratio must be in (0, 1]"),
        (["--weight-format", "int4", "--group-size", "0"], "--group-size must be a positive integer or -1"),
        (["--weight-format", "int8", "--group-size", "64"], "--group-size applies only to --weight-format int4"),
        (["--weight-format", "fp16", "--sym"], "--sym applies only to int8 and int4"),
        (["--group-size", "many"], "invalid int value: 'many'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_invalid_flags(flags: list[str], fragment: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run_export_ir(str(tiny_checkpoint), "-o", str(tmp_path / "out"), *flags)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out").exists()


def test_export_then_refuse_to_overwrite_then_force(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-int4"
    first = run_export_ir(str(tiny_checkpoint), "-o", str(out), "--weight-format", "int4")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(out)
    for step in ("load", "convert", "compress", "save", "check"):
        assert f"✓ {step}" in first.stderr
    assert json.loads((out / "ovchat.json").read_text())["weight_format"] == "int4"

    again = run_export_ir(str(tiny_checkpoint), "-o", str(out), "--weight-format", "int4")
    assert_one_line_error(again, "already exists; pass --force")

    forced = run_export_ir(str(tiny_checkpoint), "-o", str(out), "--weight-format", "int8", "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "ovchat.json").read_text())["weight_format"] == "int8"


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    result = run_export_ir(str(tmp_path / "no-such-model"), "--verbose")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("export_ir.py: error: ")
