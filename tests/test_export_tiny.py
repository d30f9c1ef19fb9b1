"""Export of a tiny random Llama (built in a fixture) to every weight format, checked against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ovchat.export import ExportOptions, export_model
from ovchat.model_folder import IR_XML, MANIFEST

PROMPTS = ["Hello there! How are", "def add(a, b):", "OpenVINO runs"]
NEW_TOKENS = 8
# The weight element types each format must leave in the IR.
WEIGHT_TYPES = {"fp16": {"f16"}, "int8": {"u8"}, "int4": {"u4"}}


def ir_linear_weights(xml: Path) -> dict[str, np.ndarray]:
    """The IR's weights as the model computes with them (decompressed), keyed by PyTorch module name."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(xml)
    weights = {}
    for op in model.get_ops():
        name = op.get_friendly_name()
        if "aten::linear/MatMul" in name:
            source = op.input_value(1)
        elif "aten::embedding/Gather" in name:
            source = op.input_value(0)
        else:
            continue
        # A model of just the weight's decompression subgraph (constants, convert, scale).
        compiled = core.compile_model(ov.Model([source], [], "weight"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        weights[name.split("/")[0].removeprefix("__module.")] = np.asarray(compiled({})[0], dtype=np.float32)
    return weights


def constant_types(xml: Path) -> set[str]:
    import openvino as ov

    model = ov.Core().read_model(xml)
    return {op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"}


@pytest.mark.parametrize("weight_format", ["fp16", "int8", "int4"])
def test_ir_greedy_tokens_equal_pytorch_with_the_same_weights(
    weight_format: str, tiny_irs: dict[str, Path], tiny_checkpoint: Path
) -> None:
    import torch
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ir = tiny_irs[weight_format]
    assert WEIGHT_TYPES[weight_format] <= constant_types(ir / IR_XML), "weights were not compressed"

    # PyTorch gets the IR's own rounded/quantized weights, so any difference in tokens is
    # a conversion error, not quantization noise.
    reference = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    weights = ir_linear_weights(ir / IR_XML)
    assert len(weights) == 16  # embedding, 2 layers x 7 projections, lm_head
    with torch.no_grad():
        for module_name, array in weights.items():
            module = reference.get_submodule(module_name)
            tensor = torch.from_numpy(array)
            if tensor.shape != module.weight.shape:
                tensor = tensor.T
            module.weight.copy_(tensor)

    tokenizer = AutoTokenizer.from_pretrained(ir)
    ov_model = OVModelForCausalLM.from_pretrained(ir, ov_config={"INFERENCE_PRECISION_HINT": "f32"})
    for prompt in PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt")
        expected = reference.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        actual = ov_model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        assert actual.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS
        assert actual.tolist() == expected.tolist(), prompt


@pytest.mark.parametrize("weight_format", ["fp16", "int8", "int4"])
def test_export_folder_has_tokenizers_generation_config_and_manifest(
    weight_format: str, tiny_irs: dict[str, Path], tiny_checkpoint: Path
) -> None:
    ir = tiny_irs[weight_format]
    for name in (
        "openvino_model.xml",
        "openvino_model.bin",
        "openvino_tokenizer.xml",
        "openvino_detokenizer.xml",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "generation_config.json",
    ):
        assert (ir / name).is_file(), name
    tokenizer_config = json.loads((ir / "tokenizer_config.json").read_text())
    has_template = "chat_template" in tokenizer_config or (ir / "chat_template.jinja").is_file()
    assert has_template
    generation = json.loads((ir / "generation_config.json").read_text())
    vocab = json.loads((ir / "tokenizer.json").read_text())["added_tokens"]
    im_end = next(token["id"] for token in vocab if token["content"] == "<|im_end|>")
    assert im_end in np.atleast_1d(generation["eos_token_id"]).tolist()

    manifest = json.loads((ir / MANIFEST).read_text())
    assert manifest["weight_format"] == weight_format
    assert manifest["source"] == {"kind": "checkpoint", "location": str(tiny_checkpoint)}
    assert set(manifest["step_seconds"]) >= {"load", "convert", "save", "check"}
    assert ("compress" in manifest["step_seconds"]) == (weight_format != "fp16")
    assert manifest["sizes"]["ir_bin_bytes"] == (ir / "openvino_model.bin").stat().st_size
    assert manifest["smoke"]["new_tokens"] >= 1
    assert manifest["versions"]["openvino"].startswith("2026.")
    assert not list(ir.parent.glob(".*partial*")), "staging folder left behind"


def test_int4_is_smaller_than_int8_smaller_than_fp16(tiny_irs: dict[str, Path]) -> None:
    sizes = {fmt: (path / "openvino_model.bin").stat().st_size for fmt, path in tiny_irs.items()}
    assert sizes["int4"] < sizes["int8"] < sizes["fp16"]


def test_int4_options_reach_the_manifest(tiny_checkpoint: Path, tmp_path: Path) -> None:
    options = ExportOptions(weight_format="int4", group_size=32, ratio=0.5, sym=True)
    result = export_model(str(tiny_checkpoint), tmp_path / "int4-custom", options)
    quantization = result.manifest["quantization"]
    assert (quantization["bits"], quantization["group_size"], quantization["ratio"], quantization["sym"]) == (
        4,
        32,
        0.5,
        True,
    )
    assert "i4" in constant_types(result.path / IR_XML)  # symmetric int4 is signed


def test_default_output_goes_under_the_data_folder(tiny_checkpoint: Path, isolated_data_home: Path) -> None:
    result = export_model(str(tiny_checkpoint), None, ExportOptions(weight_format="int8"))
    assert result.path == isolated_data_home / "models" / "tiny-llama-int8"
    assert (result.path / MANIFEST).is_file()


def test_a_failing_step_leaves_nothing_behind(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ovchat.export.pipeline

    def broken_compress(*args: object) -> None:
        raise RuntimeError("simulated failure while compressing")

    monkeypatch.setattr(ovchat.export.pipeline, "_compress", broken_compress)
    with pytest.raises(RuntimeError, match="simulated failure"):
        export_model(str(tiny_checkpoint), tmp_path / "out", ExportOptions(weight_format="int8"))
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_and_a_failed_force_keeps_the_old_export(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ovchat.export.pipeline
    from ovchat.errors import OvchatError

    target = tmp_path / "out"
    first = export_model(str(tiny_checkpoint), target, ExportOptions(weight_format="fp16"))
    with pytest.raises(OvchatError, match="already exists; pass --force"):
        export_model(str(tiny_checkpoint), target, ExportOptions(weight_format="int8"))

    monkeypatch.setattr(ovchat.export.pipeline, "smoke_reply", lambda ir: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        export_model(str(tiny_checkpoint), target, ExportOptions(weight_format="int8"), force=True)
    assert json.loads((target / MANIFEST).read_text())["created"] == first.manifest["created"]
    monkeypatch.undo()

    replaced = export_model(str(tiny_checkpoint), target, ExportOptions(weight_format="int8"), force=True)
    assert json.loads((target / MANIFEST).read_text())["weight_format"] == "int8"
    assert replaced.path == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
