"""Synthetic models (ovchat/bench/synthetic.py): random weights in public checkpoints' shapes, in every format.

The "tiny" (Qwen2's layout) size is built once per session (conftest.py's synthetic_home), "tiny-llama" once
here; the named sizes are checked on paper only (their configs and parameter counts), never built here
(qwen2.5-0.5b takes minutes).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ovchat.bench.synthetic import (
    FORMATS,
    NEEDS,
    RECORD,
    SYNTHETIC_SIZES,
    SyntheticModel,
    build_synthetic,
    hf_config,
    permute_for_llama_cpp,
)
from ovchat.errors import OvchatError
from ovchat.export.gguf_blocks import _unpermute_rows
from ovchat.export.pipeline import TOKENIZER_PROBES
from ovchat.paths import HOME_ENV

# The model cards' parameter counts, typed in independently of the configs.
PUBLIC_PARAMETERS = {"smollm2-135m": 135e6, "qwen2.5-0.5b": 494e6, "qwen2.5-1.5b": 1.54e9, "llama3.2-1b": 1.24e9}
# Token ids of ordinary words, read at once: every position past the first shows whether the rotary
# embedding pairs the rows the way the weights were written for.
PROMPT_IDS = list(range(1000, 1032))
# ||logits - reference|| / ||reference|| over all positions. Q8_0 blocks against the f16 checkpoint measured
# 0.03; with the Q and K rows in the wrong order, 1.09.
SAME_MODEL = 0.2
OTHER_MODEL = 0.5


def build(name: str, root: Path, formats: tuple[str, ...]) -> SyntheticModel:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOME_ENV, str(root / "home"))
        return build_synthetic(name, root, formats)


@pytest.fixture(scope="module")
def tiny(synthetic_home: Path) -> SyntheticModel:
    """The tiny Qwen2-layout model in every format, built once per session (conftest.py; test_sizes.py
    measures the same build)."""
    return build("tiny", synthetic_home / "synthetic", FORMATS)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> SyntheticModel:
    """The tiny Llama-layout model as a checkpoint, a Q8_0 GGUF and that GGUF's kept-blocks IR."""
    return build("tiny-llama", tmp_path_factory.mktemp("synthetic"), ("checkpoint", "ir-gguf-Q8_0"))


def relative_error(values: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(values - reference) / np.linalg.norm(reference))


def ir_logits(ir_xml: Path, ids: list[int]) -> np.ndarray:
    """The IR's logits for ``ids`` read at once, in f32."""
    import openvino as ov

    compiled = ov.Core().compile_model(ir_xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    count = len(ids)
    result = compiled.create_infer_request().infer(
        {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, count), dtype=np.int64),
            "position_ids": np.arange(count, dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32),
        }
    )
    return result["logits"][0]


def checkpoint_logits(checkpoint: Path, ids: list[int]) -> np.ndarray:
    """transformers' logits for ``ids`` from the f16 checkpoint, computed in f32: the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def gguf_fields(path: Path) -> tuple[Any, dict[str, Any]]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    skipped = ("tokenizer.ggml.merges", "tokenizer.ggml.token_type")
    return reader, {key: field.contents() for key, field in reader.fields.items() if key not in skipped}


# --- the named configs, on paper ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SYNTHETIC_SIZES))
def test_named_config_is_consistent(name: str) -> None:
    config = SYNTHETIC_SIZES[name]
    assert config.problems() == []
    assert config.num_heads % config.num_kv_heads == 0
    assert config.num_heads * config.head_dim == config.hidden_size
    assert config.vocab_size >= 49152  # the tokenizer's own tokens fit


@pytest.mark.parametrize("name", sorted(PUBLIC_PARAMETERS))
def test_named_config_has_the_public_parameter_count(name: str) -> None:
    config = SYNTHETIC_SIZES[name]
    assert config.parameter_count == pytest.approx(PUBLIC_PARAMETERS[name], rel=0.01)
    assert config.public_parameters == pytest.approx(PUBLIC_PARAMETERS[name], rel=0.001)


@pytest.mark.parametrize("name", sorted(SYNTHETIC_SIZES))
def test_named_config_is_what_transformers_builds(name: str) -> None:
    """transformers' own model for the written config.json (on the meta device: no memory) has exactly the
    weights the builder writes, by name and shape."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = SYNTHETIC_SIZES[name]
    loaded = AutoConfig.for_model(**hf_config(config))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(loaded)
    weights = {key: tuple(value.shape) for key, value in model.named_parameters()}  # a tied matrix once
    assert weights == {spec.hf_name: spec.shape for spec in config.tensors()}
    assert sum(int(np.prod(shape)) for shape in weights.values()) == config.parameter_count


def test_the_smollm2_size_has_the_default_models_own_shapes() -> None:
    """smollm2-135m against the GGUF the default model ships as (read, not built): every tensor by name and
    shape, and the fields llama.cpp reads. No output.weight: the embeddings are tied."""
    from gguf import GGUFReader

    from ovchat.export.sources import resolve_source

    config = SYNTHETIC_SIZES["smollm2-135m"]
    reader = GGUFReader(resolve_source(None).path)
    # GGUF lists a shape innermost first, (in_features, out_features); transformers the other way round.
    shapes = {tensor.name: tuple(int(size) for size in reversed(tensor.shape)) for tensor in reader.tensors}
    assert shapes == {spec.gguf_name: spec.shape for spec in config.tensors()}
    assert sum(int(tensor.n_elements) for tensor in reader.tensors) == config.parameter_count

    def field(key: str) -> Any:
        return reader.fields[key].contents()

    assert field("general.architecture") == config.architecture
    assert len(field("tokenizer.ggml.tokens")) == config.vocab_size  # the tokenizer's own: nothing is padded
    assert field("llama.context_length") == config.max_position_embeddings
    assert field("llama.attention.head_count") == config.num_heads
    assert field("llama.attention.head_count_kv") == config.num_kv_heads
    assert field("llama.rope.freq_base") == config.rope_theta
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(config.rms_norm_eps)


def test_inconsistent_config_is_described() -> None:
    from dataclasses import replace

    broken = replace(SYNTHETIC_SIZES["tiny"], num_kv_heads=3, hidden_size=72)
    assert any("kv heads" in problem for problem in broken.problems())
    assert any("multiple of 32" in problem for problem in broken.problems())


def test_permutation_matches_the_readers_inverse() -> None:
    """The row order written for llama.cpp is the one gguf_blocks undoes (as openvino-genai's reader does)."""
    rows = np.arange(4 * 16 * 3, dtype=np.float32).reshape(4 * 16, 3)
    permuted = permute_for_llama_cpp(rows, heads=4)
    assert not np.array_equal(permuted, rows)
    np.testing.assert_array_equal(_unpermute_rows(permuted, 4), rows)


def test_unknown_size_or_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OvchatError, match="no synthetic size 'huge'"):
        build_synthetic("huge", tmp_path)
    with pytest.raises(OvchatError, match="unknown synthetic format ir-fp16"):
        build_synthetic("tiny", tmp_path, ["ir-fp16"])
    assert not (tmp_path / "tiny").exists()


def test_folder_built_from_another_config_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / RECORD).write_text(json.dumps({"build_version": 1, "seed": 0, "config": {"hidden_size": 32}}))
    with pytest.raises(OvchatError, match="built from another config of 'tiny'; remove it"):
        build_synthetic("tiny", tmp_path, ["gguf-Q8_0"])
    assert sorted(path.name for path in folder.iterdir()) == [RECORD]


# --- the tiny builds ---------------------------------------------------------------------------------------


def test_build_writes_each_format_once(tiny: SyntheticModel) -> None:
    assert set(tiny.paths) == set(FORMATS)
    assert all(path.exists() for path in tiny.paths.values())
    assert sorted(tiny.ggufs) == ["Q4_0", "Q8_0"]
    assert sorted(tiny.irs) == ["gguf-Q4_0", "gguf-Q8_0", "int4", "int8"]
    assert tiny.parameters == tiny.config.parameter_count
    assert not [path for path in tiny.folder.iterdir() if ".partial" in path.name]
    record = json.loads((tiny.folder / RECORD).read_text())
    assert sorted(record["builds"]) == sorted(FORMATS)
    steps: list[str] = []
    again = build_synthetic("tiny", tiny.folder.parent, ["ir-gguf-Q8_0"], progress=lambda step, *_: steps.append(step))
    assert steps == []  # it was there, and so was the GGUF it is made from
    assert again.paths == {key: tiny.paths[key] for key in ("gguf-Q8_0", "ir-gguf-Q8_0")}


def test_interrupted_gguf_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ovchat.bench import synthetic

    calls = 0
    quantize = synthetic._quantize

    def failing(values: np.ndarray, kind: Any) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return quantize(values, kind)

    monkeypatch.setattr(synthetic, "_quantize", failing)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_gguf(SYNTHETIC_SIZES["tiny"], tmp_path / "tiny-Q8_0.gguf", "Q8_0")
    assert list(tmp_path.iterdir()) == []


def test_abandoned_staging_is_removed(tiny: SyntheticModel) -> None:
    """What a killed build left (its process is gone) goes; what a running build is writing stays."""
    abandoned = tiny.folder / ".tiny-Q4_0.gguf.partial-pid99999999"  # above Linux's largest pid
    running = tiny.folder / f".tiny-Q4_0.gguf.partial-pid{os.getpid()}"
    abandoned.write_bytes(b"half")
    running.write_bytes(b"half")
    try:
        build_synthetic("tiny", tiny.folder.parent, ["gguf-Q4_0"])
        assert not abandoned.exists()
        assert running.exists()
    finally:
        running.unlink()


def test_formats_bring_what_they_are_made_from() -> None:
    assert set(FORMATS) == {
        "checkpoint",
        "gguf-Q8_0",
        "gguf-Q4_0",
        "ir-gguf-Q8_0",
        "ir-gguf-Q4_0",
        "ir-int8",
        "ir-int4",
    }
    assert NEEDS == {
        "ir-gguf-Q8_0": "gguf-Q8_0",
        "ir-gguf-Q4_0": "gguf-Q4_0",
        "ir-int8": "checkpoint",
        "ir-int4": "checkpoint",
    }


def test_checkpoint_has_the_named_shapes(tiny: SyntheticModel) -> None:
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    config, checkpoint = tiny.config, tiny.checkpoint
    assert checkpoint is not None
    loaded = AutoConfig.from_pretrained(checkpoint)
    assert (loaded.model_type, loaded.vocab_size, loaded.hidden_size, loaded.intermediate_size) == (
        "qwen2",
        config.vocab_size,
        config.hidden_size,
        config.intermediate_size,
    )
    assert (loaded.num_hidden_layers, loaded.num_attention_heads, loaded.num_key_value_heads) == (
        config.num_layers,
        config.num_heads,
        config.num_kv_heads,
    )
    assert loaded.tie_word_embeddings
    assert len(AutoTokenizer.from_pretrained(checkpoint)) == config.vocab_size
    with safe_open(checkpoint / "model.safetensors", framework="numpy") as weights:
        shapes = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118
        assert {weights.get_slice(name).get_dtype() for name in shapes} == {"F16"}
    assert shapes == {spec.hf_name: spec.shape for spec in config.tensors()}
    assert shapes["model.layers.0.self_attn.q_proj.bias"] == (config.num_heads * config.head_dim,)
    assert sum(int(np.prod(shape)) for shape in shapes.values()) == tiny.parameters


@pytest.mark.parametrize("tensor_type", ["Q8_0", "Q4_0"])
def test_gguf_has_the_named_shapes(tiny: SyntheticModel, tensor_type: str) -> None:
    from gguf import GGMLQuantizationType

    config = tiny.config
    reader, fields = gguf_fields(tiny.ggufs[tensor_type])
    assert fields["general.architecture"] == "qwen2"
    assert fields["general.file_type"] == {"Q8_0": 7, "Q4_0": 2}[tensor_type]
    assert (fields["qwen2.embedding_length"], fields["qwen2.feed_forward_length"], fields["qwen2.block_count"]) == (
        config.hidden_size,
        config.intermediate_size,
        config.num_layers,
    )
    assert (fields["qwen2.attention.head_count"], fields["qwen2.attention.head_count_kv"]) == (
        config.num_heads,
        config.num_kv_heads,
    )
    # llama.cpp needs one token per embedding row: the tokenizer's 49,152 and unused padding up to the size.
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == fields["qwen2.vocab_size"] == config.vocab_size
    assert tokens[-1] == f"[PAD{config.vocab_size - 1}]"
    assert fields["tokenizer.ggml.pre"] == "qwen2"
    assert "<|im_start|>" in fields["tokenizer.chat_template"]
    specs = {spec.gguf_name: spec for spec in config.tensors()}
    assert [tensor.name for tensor in reader.tensors] == list(specs)
    assert "output.weight" not in specs  # tied: llama.cpp reuses token_embd
    for tensor in reader.tensors:
        spec = specs[tensor.name]
        assert tuple(int(n) for n in reversed(tensor.shape)) == spec.shape  # GGUF lists ne0 (columns) first
        expected = GGMLQuantizationType[tensor_type] if spec.is_matrix else GGMLQuantizationType.F32
        assert tensor.tensor_type == expected, tensor.name


def test_irs_export_and_answer(tiny: SyntheticModel) -> None:
    for kind, folder in tiny.irs.items():
        manifest = json.loads((folder / "ovchat.json").read_text())
        assert manifest["smoke"]["new_tokens"] >= 1, kind
        assert manifest["weight_format"] == ("gguf" if kind.startswith("gguf-") else kind)
        config = json.loads((folder / "config.json").read_text())
        assert (config["vocab_size"], config["num_hidden_layers"]) == (tiny.config.vocab_size, tiny.config.num_layers)


@pytest.mark.parametrize("model", ["tiny", "tiny_llama"])
def test_kept_blocks_ir_computes_the_checkpoint(model: str, request: pytest.FixtureRequest) -> None:
    """The Q8_0 GGUF, read by openvino-genai's GGUF reader, gives the f16 checkpoint's logits (to Q8_0's
    rounding): the weights, q/k/v biases and, for Llama, the Q and K rows' order all arrived."""
    built: SyntheticModel = request.getfixturevalue(model)
    assert built.checkpoint is not None
    reference = checkpoint_logits(built.checkpoint, PROMPT_IDS)
    logits = ir_logits(built.irs["gguf-Q8_0"] / "openvino_model.xml", PROMPT_IDS)
    assert relative_error(logits, reference) < SAME_MODEL


def test_wrong_qk_row_order_would_show(tiny_llama: SyntheticModel, tmp_path: Path) -> None:
    """The check above can fail: the same GGUF with its Q and K rows left in transformers' order reads back
    as another model (position 0, where the rotary embedding is the identity, still agrees)."""
    from gguf import GGUFReader

    from ovchat.export.gguf_blocks import convert_keeping_blocks

    config = tiny_llama.config
    unpermuted = tmp_path / "unpermuted.gguf"
    shutil.copyfile(tiny_llama.ggufs["Q8_0"], unpermuted)
    reader = GGUFReader(unpermuted, "r+")
    for tensor in reader.tensors:
        if ".attn_q." in tensor.name or ".attn_k." in tensor.name:
            heads = config.num_heads if ".attn_q." in tensor.name else config.num_kv_heads
            # Q8_0 blocks run along a row, so whole rows of blocks move back unchanged.
            tensor.data[...] = _unpermute_rows(np.array(tensor.data), heads)
    del reader
    convert_keeping_blocks(unpermuted, tmp_path / "ir")
    logits = ir_logits(tmp_path / "ir" / "openvino_model.xml", PROMPT_IDS)
    assert tiny_llama.checkpoint is not None
    reference = checkpoint_logits(tiny_llama.checkpoint, PROMPT_IDS)
    assert relative_error(logits, reference) > OTHER_MODEL
    assert relative_error(logits[0], reference[0]) < SAME_MODEL


@pytest.mark.parametrize("model", ["tiny", "tiny_llama"])
def test_llama_cpp_reads_the_gguf(model: str, request: pytest.FixtureRequest) -> None:
    """llama.cpp takes the GGUF: its tokenizer gives the checkpoint tokenizer's ids, and its logits are the
    checkpoint's (an independent reading of the Q and K row order)."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (the bench's llama.cpp rows need it; CI has none)"
    )
    from transformers import AutoTokenizer

    built: SyntheticModel = request.getfixturevalue(model)
    assert built.checkpoint is not None
    llama = llama_cpp.Llama(str(built.ggufs["Q8_0"]), n_ctx=64, logits_all=True, verbose=False)
    assert llama.n_vocab() == built.config.vocab_size
    tokenizer = AutoTokenizer.from_pretrained(built.checkpoint)
    for text in TOKENIZER_PROBES:
        assert llama.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text)["input_ids"], text
    llama.eval(PROMPT_IDS)
    logits = np.array(llama.scores[: len(PROMPT_IDS)])
    assert relative_error(logits, checkpoint_logits(built.checkpoint, PROMPT_IDS)) < SAME_MODEL
