"""The export that keeps a GGUF's own blocks (--weight-format gguf) keeps every tensor type's weights: for a
tiny random llama written in each type openvino-genai's reader maps (Q4_0, Q4_1, Q8_0, F16), every weight
of the IR, decompressed, is gguf-py's dequantization of the file's blocks, with Q and K rows back in
transformers' order, and stays stored in the blocks' own integers (or f16) rather than dequantized.

The IR's constants carry no names, so weights are matched by shape and values; every GGUF weight must
find its IR weight and every IR weight its GGUF weight."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf_files import HEADS, KV_HEADS, GgufWeight, write_tiny_llama_gguf

from ovchat.errors import OvchatError
from ovchat.export import KEEP_GGUF_BLOCKS, ExportOptions, export_model
from ovchat.model_folder import IR_XML, read_manifest
from ovchat.paths import HOME_ENV

# The element type each tensor type's weight values keep in the IR: the blocks' 4- or 8-bit integers
# (with f16 scales beside them), or the file's own f16 values.
STORED_AS = {"Q4_0": "u4", "Q4_1": "u4", "Q8_0": "u8", "F16": "f16"}
# What a weight's decompression subgraph may hold: Constant -> Convert -> [Subtract zero point] ->
# Multiply scale -> [Reshape] -> Convert. A subgraph with a Parameter or a ReadValue is not a weight.
DECOMPRESSION_OPS = frozenset({"Constant", "Convert", "Subtract", "Multiply", "Reshape"})
TYPES = ["Q4_0", "Q4_1", "Q8_0", "F16"]


@dataclass(frozen=True)
class KeptExport:
    tensor_type: str
    weights: list[GgufWeight]  # as written to the GGUF
    ir: Path


@dataclass(frozen=True)
class IrWeight:
    values: np.ndarray  # decompressed, (out_features, in_features) like the GGUF's numpy rows
    stored_as: str  # element type of the constant that holds the weight's values


@pytest.fixture(scope="module", params=TYPES)
def kept_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> KeptExport:
    """The tiny llama written in one tensor type and exported once, keeping its blocks."""
    tensor_type = request.param
    root = tmp_path_factory.mktemp(f"kept-{tensor_type}")
    weights = write_tiny_llama_gguf(root / f"tiny-{tensor_type}.gguf", tensor_type)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOME_ENV, str(root / "home"))
        options = ExportOptions(weight_format=KEEP_GGUF_BLOCKS)
        result = export_model(str(root / f"tiny-{tensor_type}.gguf"), root / "ir", options)
    return KeptExport(tensor_type, weights, result.path)


def _subgraph(output: Any) -> Iterator[Any]:
    """The nodes ``output`` is computed from, itself included."""
    node = output.get_node()
    yield node
    for source in node.input_values():
        yield from _subgraph(source)


def ir_weights(xml: Path) -> list[IrWeight]:
    """Each weight a MatMul or the embedding Gather reads, decompressed on the CPU as it runs it."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(xml)
    sources: dict[str, tuple[Any, bool]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul":
            source, transposed = op.input_value(1), bool(op.get_attributes()["transpose_b"])
        elif op.get_type_name() == "Gather":
            source, transposed = op.input_value(0), True  # rows are the vocabulary, like the GGUF's
        else:
            continue
        if all(node.get_type_name() in DECOMPRESSION_OPS for node in _subgraph(source)):
            # A tied lm_head reads the embedding's subgraph: one weight, however many readers.
            sources[source.get_node().get_name()] = (source, transposed)
    weights = []
    for source, transposed in sources.values():
        # A model of just the weight's subgraph. The IR types (q - z)*d as f16; with f32 inference
        # precision the CPU plugin computes it in f32 (Q8_0's 19-bit products come out exact), as it
        # decompresses weights when it runs the model in f32.
        compiled = core.compile_model(ov.Model([source], [], "weight"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        values = np.asarray(compiled({})[0], dtype=np.float32)
        largest = max(
            (node for node in _subgraph(source) if node.get_type_name() == "Constant"),
            key=lambda node: int(np.prod(node.get_output_shape(0))),
        )
        stored_as = largest.get_element_type().get_type_name()
        weights.append(IrWeight(values if transposed else values.T, stored_as))
    return weights


def hf_row_order(rows: np.ndarray, heads: int) -> np.ndarray:
    """Q or K rows in transformers' order. llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute)
    writes GGUF row i = transformers row ``order[i]``, interleaving each head's two rotary halves; the
    reader undoes that, so the reference does too."""
    count = rows.shape[0]
    order = np.arange(count).reshape(heads, 2, count // heads // 2).swapaxes(1, 2).reshape(count)
    restored = np.empty_like(rows)
    restored[order] = rows
    return restored


def reference(weight: GgufWeight) -> tuple[np.ndarray, np.ndarray | float]:
    """gguf-py's dequantization of the weight's blocks in transformers' row order, and how far each IR
    value may honestly be from it."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    values = dequantize(weight.raw, GGMLQuantizationType[weight.tensor_type]).astype(np.float32)
    tolerance: np.ndarray | float = 0.0
    if weight.tensor_type == "Q4_1":
        # A Q4_1 block is w = d*q + m; the IR holds (q - z)*d with z = -m/d rounded to f16 (the form the
        # CPU runs as compressed weights). f16 keeps 11 significant bits, so z moves by at most |z|*2^-11
        # (2^-24 more as -m/d is first an f32; 2^-25 absolute below f16's normal range), and w by |d| times
        # that: |m|*(2^-11 + 2^-24) or |d|*2^-25. The rest is f32 rounding, 2^-24 of |w| each: gguf-py's
        # d*q + m once, the IR's q - z and its product once each.
        # (openvino-genai's own 4-bit z, round(-m/d), moves w by up to d/2: ~100x this bound.)
        blocks = weight.raw.reshape(weight.raw.shape[0], -1, 20)  # f16 d, f16 m, 16 bytes of q
        scale = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)[..., 0]
        minimum = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)[..., 0]
        per_block = np.abs(minimum) * (2.0**-11 + 2.0**-24) + np.abs(scale) * 2.0**-25
        tolerance = np.repeat(per_block, 32, axis=-1) + np.abs(values) * 2.0**-22
    # Q4_0 (z = 8, from the exact f16 product -8d), Q8_0 (z = 128) and F16 are exact: (q - z)*d has at
    # most 5 + 11 bits (Q4_0) or 8 + 11 bits (Q8_0) of significand, which f32 holds on both sides, and
    # f16 widens to f32 exactly.
    heads = HEADS if ".attn_q." in weight.name else KV_HEADS if ".attn_k." in weight.name else None
    if heads is not None:
        values = hf_row_order(values, heads)
        if isinstance(tolerance, np.ndarray):
            tolerance = hf_row_order(tolerance, heads)
    return values, tolerance


@pytest.fixture(scope="module")
def decompressed(kept_export: KeptExport) -> list[IrWeight]:
    return ir_weights(kept_export.ir / IR_XML)


def test_every_weight_is_the_ggufs_dequantized_blocks(kept_export: KeptExport, decompressed: list[IrWeight]) -> None:
    unmatched = decompressed
    assert len(unmatched) == len(kept_export.weights)  # 2 layers x 7 projections, embedding, lm_head
    missing = []
    for weight in kept_export.weights:
        expected, tolerance = reference(weight)
        candidates = [ir for ir in unmatched if ir.values.shape == expected.shape]
        found = next((ir for ir in candidates if np.all(np.abs(ir.values - expected) <= tolerance)), None)
        if found is None:
            closest = min((float(np.abs(ir.values - expected).max()) for ir in candidates), default=None)
            missing.append(f"{weight.name} {expected.shape}: closest IR weight's max |difference| {closest}")
        else:
            unmatched = [ir for ir in unmatched if ir is not found]
    assert not missing, f"{kept_export.tensor_type} weights not in the IR: {missing}"
    assert not unmatched


def test_the_weights_stay_in_the_blocks_own_form(kept_export: KeptExport, decompressed: list[IrWeight]) -> None:
    """Kept, not dequantized: the IR holds the blocks' integers (or f16 values), as the GGUF does."""
    stored = {weight.stored_as for weight in decompressed}
    assert stored == {STORED_AS[kept_export.tensor_type]}


def test_the_manifest_names_the_source_type(kept_export: KeptExport) -> None:
    manifest = read_manifest(kept_export.ir)
    assert manifest is not None
    assert (manifest["route"], manifest["source"]["quantization"]) == ("gguf-blocks", kept_export.tensor_type)
    assert manifest["quantization"] is None  # nothing was quantized again
    assert manifest["smoke"]["new_tokens"] >= 1


@pytest.mark.parametrize("announce_file_type", [True, False], ids=["ALL_F32 file", "F32 matrices"])
def test_f32_weights_are_refused_before_the_export(tmp_path: Path, announce_file_type: bool) -> None:
    """openvino-genai 2026.4 reads F32 vectors (the norms) but has no F32 case for weights ("Unsupported
    quantization type" from its weight builder, after the model was half built): the plan refuses F32
    weights by the file's type, or by the tensors' own types when the file does not say, and writes nothing."""
    gguf = tmp_path / "tiny-F32.gguf"
    write_tiny_llama_gguf(gguf, "F32", announce_file_type=announce_file_type)
    expected = "ALL_F32 is not supported" if announce_file_type else "F32 is not supported"
    with pytest.raises(OvchatError, match=expected):
        export_model(str(gguf), tmp_path / "ir", ExportOptions(weight_format=KEEP_GGUF_BLOCKS))
    assert not (tmp_path / "ir").exists()
