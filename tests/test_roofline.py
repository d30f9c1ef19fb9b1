"""The decode roofline (ovchat/bench/roofline.py): its arithmetic on hand-computed cases, the bytes a token
reads from a tiny GGUF (against sizes computed here from the shapes), from hand-built IRs and from the tiny
IR exports, and a bandwidth measurement small enough for a test (no speed is asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from gguf_files import FFN, HEAD_DIM, HIDDEN, KV_HEADS, LAYER_WEIGHTS, LAYERS, write_tiny_llama_gguf

from ovchat.bench.roofline import (
    GB,
    AttentionShape,
    Bandwidth,
    TokenBytes,
    bytes_per_token_compiled,
    bytes_per_token_gguf,
    bytes_per_token_ir,
    describe,
    fraction_of_roofline,
    kv_cache_bytes,
    measure_bandwidth,
    roofline_tokens_per_second,
)


def bandwidth(read_gb_s: float, copy_gb_s: float = 1.0) -> Bandwidth:
    return Bandwidth(threads=1, array_mb=512.0, repeats=1, copy_gb_s=copy_gb_s, read_gb_s=read_gb_s)


def token_bytes(weights: int, embedding: int = 0, kv_cache: int = 0) -> TokenBytes:
    return TokenBytes(weights, embedding, kv_cache, context_tokens=0, kv_precision="f16", tied_embeddings=False)


# --- arithmetic ---------------------------------------------------------------------------------------------


def test_the_roofline_is_bandwidth_over_bytes_per_token() -> None:
    # 20 GB/s over 100 MB a token: 200 tokens a second at best.
    assert roofline_tokens_per_second(20.0, 100_000_000) == pytest.approx(200.0)
    # With a measurement, the read kernel's figure is the bandwidth (not copy's).
    assert roofline_tokens_per_second(bandwidth(20.0, copy_gb_s=5.0), token_bytes(90_000_000, 0, 10_000_000)) == (
        pytest.approx(200.0)
    )
    assert fraction_of_roofline(50.0, 20.0, 100_000_000) == pytest.approx(0.25)
    assert fraction_of_roofline(None, 20.0, 100_000_000) is None
    with pytest.raises(ValueError):
        roofline_tokens_per_second(20.0, 0)


def test_the_kv_cache_is_keys_and_values_of_every_earlier_token_in_every_layer() -> None:
    shape = AttentionShape(layers=2, kv_heads=3, key_dim=16, value_dim=16)
    # f16: 2 layers x 3 heads x (16 + 16) values x 2 bytes x 10 tokens.
    assert kv_cache_bytes(shape, 10, "f16") == 2 * 3 * 32 * 2 * 10 == 3840
    # OpenVINO's u8: a byte a value; keys add an f32 scale and zero point per channel per 32-token block,
    # values one pair per token (as the CPU plugin shapes its PagedAttention cache).
    assert kv_cache_bytes(shape, 32, "u8") == 2 * 3 * ((32 * 16 + 8 * 16) + 32 * (16 + 8))
    assert kv_cache_bytes(shape, 32, "u4") == 2 * 3 * ((32 * 8 + 8 * 16) + 32 * (8 + 8))
    # llama.cpp's q8_0: 34 bytes per 32 values, scales inside.
    assert kv_cache_bytes(shape, 10, "q8_0") == 2 * 3 * 34 * 10
    assert kv_cache_bytes(shape, 0, "f16") == 0
    with pytest.raises(ValueError, match="unknown KV cache precision"):
        kv_cache_bytes(shape, 10, "f8")


def test_describe_holds_every_figure_of_the_row() -> None:
    row = describe(bandwidth(20.0, copy_gb_s=15.0), token_bytes(80_000_000, 1_000, 19_999_000), measured_tps=150.0)
    assert row["bandwidth"]["kernel"] == "read"
    assert row["bandwidth"]["gb_s"] == 20.0
    assert row["bandwidth"]["copy_gb_s"] == 15.0
    assert row["bytes_per_token"]["total"] == 100_000_000
    assert row["bytes_per_token"]["embedding"] == 1_000
    assert row["roofline_tok_s"] == pytest.approx(200.0)
    assert row["decode_tok_s"] == 150.0
    assert row["fraction_of_roofline"] == pytest.approx(0.75)
    json.dumps(row)  # the bench writes it as JSON
    assert describe(bandwidth(20.0), token_bytes(100))["fraction_of_roofline"] is None


# --- GGUF ---------------------------------------------------------------------------------------------------


def quantized_bytes(tensor_type: str, rows: int, columns: int) -> int:
    """A matrix's size from its shape: rows of ``columns`` values in the type's blocks."""
    from gguf import GGMLQuantizationType
    from gguf.constants import GGML_QUANT_SIZES

    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[tensor_type]]
    return rows * (columns // block_size) * type_size


def test_a_gguf_token_reads_every_matrix_one_embedding_row_and_the_f16_cache(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    written = write_tiny_llama_gguf(path, "Q8_0")
    vocab = next(weight.raw.shape[0] for weight in written if weight.name == "token_embd.weight")
    layers = LAYERS * sum(quantized_bytes("Q8_0", rows, columns) for _, rows, columns in LAYER_WEIGHTS)
    output = quantized_bytes("Q8_0", vocab, HIDDEN)
    norms = (2 * LAYERS + 1) * HIDDEN * 4  # f32 vectors
    one_row = quantized_bytes("Q8_0", 1, HIDDEN)
    assert FFN % 32 == 0 and HIDDEN % 32 == 0  # whole Q8_0 blocks in every row

    counted = bytes_per_token_gguf(path, context_tokens=100)

    assert counted.weights == layers + output + norms
    assert counted.embedding == one_row
    assert counted.tied_embeddings is False
    assert counted.kv_precision == "f16"
    assert counted.kv_cache == LAYERS * KV_HEADS * (HEAD_DIM + HEAD_DIM) * 2 * 100
    assert counted.total == layers + output + norms + one_row + counted.kv_cache


def test_a_gguf_without_an_output_matrix_reads_its_embeddings_whole(tmp_path: Path) -> None:
    """Tied embeddings: token_embd is also the lm_head, read whole for every token."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    vocab, hidden = 96, 64
    path = tmp_path / "tied.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(hidden)
    writer.add_head_count(4)
    writer.add_head_count_kv(1)
    rng = np.random.default_rng(0)
    for name, rows in (("token_embd.weight", vocab), ("blk.0.attn_q.weight", hidden)):
        raw = quantize(rng.normal(size=(rows, hidden)).astype(np.float32), GGMLQuantizationType.Q4_0)
        writer.add_tensor(name, raw, raw_dtype=GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    counted = bytes_per_token_gguf(path, context_tokens=8, kv_precision="q8_0")

    assert counted.tied_embeddings is True
    assert counted.embedding == 0
    assert counted.weights == quantized_bytes("Q4_0", vocab, hidden) + quantized_bytes("Q4_0", hidden, hidden)
    assert counted.kv_cache == round(1 * 1 * (16 + 16) * 34 / 32 * 8)


# --- IR -----------------------------------------------------------------------------------------------------


def save_hand_built_ir(folder: Path, tied: bool) -> dict[str, int]:
    """A one-matrix "LLM" as NNCF compresses int8 weights: u8 Constant -> Convert -> Subtract(u8 zero point)
    -> Multiply(f16 scale) -> Convert(f32), for a token embedding Gather and a lm_head MatMul, the same
    Constants behind both when ``tied``. Returns the byte sizes it was built with."""
    import openvino as ov
    import openvino.opset13 as ops

    vocab, hidden = 50, 8

    def compressed() -> tuple[ov.Node, list[int]]:
        weight = ops.constant(np.ones((vocab, hidden), dtype=np.uint8))
        zero_point = ops.constant(np.full((vocab, 1), 128, dtype=np.uint8))
        scale = ops.constant(np.ones((vocab, 1), dtype=np.float16))
        centered = ops.subtract(ops.convert(weight, "f16"), ops.convert(zero_point, "f16"))
        return ops.convert(ops.multiply(centered, scale), "f32"), [vocab * hidden, vocab, 2 * vocab]

    ids = ops.parameter([1, 1], np.int64, name="input_ids")
    table, table_sizes = compressed()
    hidden_states = ops.gather(table, ids, 0)
    head, head_sizes = (table, table_sizes) if tied else compressed()
    logits = ops.matmul(hidden_states, head, transpose_a=False, transpose_b=True)
    folder.mkdir()
    ov.save_model(ov.Model([logits], [ids], "hand-built"), folder / "openvino_model.xml", compress_to_fp16=False)
    config = {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_size": hidden}
    (folder / "config.json").write_text(json.dumps(config))
    return {"table": sum(table_sizes), "head": sum(head_sizes), "row": sum(size // vocab for size in table_sizes)}


@pytest.mark.parametrize("tied", [False, True])
def test_an_ir_token_reads_the_constants_behind_its_matmuls(tmp_path: Path, tied: bool) -> None:
    sizes = save_hand_built_ir(tmp_path / "ir", tied)

    counted = bytes_per_token_ir(tmp_path / "ir", context_tokens=10, kv_precision="f16")

    assert counted.tied_embeddings is tied
    # The lm_head's weight, zero point and scale, once; a separate table adds one row of each.
    assert counted.weights == sizes["head"]
    assert counted.embedding == (0 if tied else sizes["row"])
    # 2 layers x 1 KV head x (4 + 4) values of a head of 8 / 2 x 2 bytes x 10 tokens.
    assert counted.kv_cache == 2 * 1 * 8 * 2 * 10


def checkpoint_matrix_values(checkpoint: Path) -> tuple[int, int]:
    """The values of the tiny checkpoint's linear layers (the lm_head too) and of one embedding row."""
    from safetensors import safe_open

    linear = row = 0
    with safe_open(str(next(checkpoint.glob("*.safetensors"))), framework="numpy") as weights:
        for name in weights.keys():  # noqa: SIM118 (safe_open is no dict)
            shape = weights.get_slice(name).get_shape()
            if name.endswith("embed_tokens.weight"):
                row = shape[1]
            elif len(shape) == 2:
                linear += shape[0] * shape[1]
    return linear, row


def test_the_tiny_irs_count_their_weights_by_format(tiny_irs: dict[str, Path], tiny_checkpoint: Path) -> None:
    counted = {fmt: bytes_per_token_ir(folder, context_tokens=64) for fmt, folder in tiny_irs.items()}
    linear, row = checkpoint_matrix_values(tiny_checkpoint)
    assert linear and row

    # f16: two bytes for every value of every linear layer, and one row of the (untied) embeddings.
    assert counted["fp16"].tied_embeddings is False
    assert counted["fp16"].weights == 2 * linear
    assert counted["fp16"].embedding == 2 * row
    # int8: a byte a value plus per-row scales and zero points; int4 packs two values a byte.
    int8_ratio = counted["int8"].weights / counted["fp16"].weights
    int4_ratio = counted["int4"].weights / counted["int8"].weights
    assert 0.5 <= int8_ratio < 0.6, int8_ratio
    assert int4_ratio < 1.0, int4_ratio
    assert 0 < counted["int8"].embedding < counted["fp16"].embedding
    # The KV cache depends on the model's shape and the precision, not on the weights' format.
    assert len({tokens.kv_cache for tokens in counted.values()}) == 1
    assert all(tokens.kv_precision == "u8" for tokens in counted.values())


def test_compiled_weights_are_at_least_the_irs(tiny_irs: dict[str, Path]) -> None:
    """The plugin keeps compressed weights compressed but may widen their scales (f16 to f32): never fewer
    bytes than the IR holds; the embedding row and the KV cache are the IR's count, the cache at the
    precision the model was compiled with (ovchat's choice by CPU, else the plugin's u8)."""
    from ovchat.engine.runtime import compile_properties

    kv_precision = compile_properties("CPU", use_cache_dir=False).get("KV_CACHE_PRECISION", "u8")
    for fmt, folder in tiny_irs.items():
        from_ir = bytes_per_token_ir(folder, context_tokens=64, kv_precision=kv_precision)
        compiled = bytes_per_token_compiled(folder, context_tokens=64)
        assert from_ir.weights <= compiled.weights < 2.5 * from_ir.weights, fmt
        assert (compiled.embedding, compiled.kv_cache) == (from_ir.embedding, from_ir.kv_cache), fmt


# --- bandwidth ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_a_small_bandwidth_measurement_gives_finite_positive_figures(threads: int) -> None:
    measured = measure_bandwidth(threads, megabytes=4, repeats=2)
    assert measured.threads == threads
    assert measured.array_mb == pytest.approx(4.0, rel=0.01)
    for gb_s in (measured.copy_gb_s, measured.read_gb_s, measured.roofline_gb_s):
        assert math.isfinite(gb_s) and gb_s > 0
    assert roofline_tokens_per_second(measured, token_bytes(int(GB))) == pytest.approx(measured.read_gb_s)


def test_bandwidth_needs_a_thread_and_a_round() -> None:
    with pytest.raises(ValueError):
        measure_bandwidth(0, megabytes=1)
    with pytest.raises(ValueError):
        measure_bandwidth(1, megabytes=1, repeats=0)
