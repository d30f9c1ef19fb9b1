"""The GGUF export that keeps the file's own quantized blocks (--weight-format gguf), on the real default
model: llama.cpp's perplexity, the GGUF's size, the manifest; the metadata mapping against what transformers
writes. (llama.cpp's token ids and the end of turn, for both routes, are in test_default_model.py; the
one-line refusals in test_export_cli.py; every kept block type on a tiny GGUF in test_gguf_quant_types.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovchat.model_folder import IR_BIN, read_json, read_manifest

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data"
# Perplexity of llama.cpp on the default GGUF, measured once; "_source" says with which command.
LLAMACPP_PERPLEXITY = json.loads((DATA / "smollm2_llamacpp_perplexity.json").read_text())


def test_the_manifest_names_the_route_and_the_source_quantization(default_model_ir: Path) -> None:
    manifest = read_manifest(default_model_ir)
    assert manifest is not None
    assert (manifest["weight_format"], manifest["route"]) == ("gguf", "gguf-blocks")
    assert manifest["source"]["quantization"] == "Q4_1"
    assert manifest["quantization"] is None  # nothing was quantized again
    assert manifest["eos_token_ids"] == [2]  # <|im_end|>
    assert manifest["has_chat_template"] is True


def test_the_ir_is_about_the_size_of_the_gguf(default_model_ir: Path) -> None:
    from ovchat.model_folder import source_gguf

    gguf = source_gguf(default_model_ir)
    assert gguf is not None
    ratio = (default_model_ir / IR_BIN).stat().st_size / gguf.stat().st_size
    assert 0.9 < ratio < 1.1, ratio  # the int8 route's IR is 1.4x the file


def test_perplexity_is_llamacpps_on_the_same_gguf(default_model_ir: Path) -> None:
    """Q4_1's per-block offsets are kept exactly; openvino-genai's own reading rounds them (35.0)."""
    from transformers import AutoTokenizer

    from ovchat.bench.quality import QUALITY_TEXT, WINDOW_TOKENS, openvino_logits, perplexity, text_windows

    tokenizer = AutoTokenizer.from_pretrained(default_model_ir)
    ids = tokenizer(QUALITY_TEXT.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    value, scored = perplexity(openvino_logits(default_model_ir), text_windows(ids, WINDOW_TOKENS))
    assert scored == LLAMACPP_PERPLEXITY["scored_tokens"]
    assert value == pytest.approx(LLAMACPP_PERPLEXITY["perplexity"], rel=0.01)


def test_the_metadata_mapping_agrees_with_transformers(
    default_model_ir: Path, default_model_int8_ir: Path, tmp_path: Path
) -> None:
    """config.json, the special tokens and the template written from the GGUF without transformers match
    what the int8 route's transformers import wrote."""
    from ovchat.engine.backends.genai_tokenizer import read_chat_template, read_special_tokens
    from ovchat.export.gguf_blocks import hf_config, read_gguf_metadata, tokenizer_config
    from ovchat.model_folder import source_gguf

    gguf = source_gguf(default_model_ir)
    assert gguf is not None
    metadata, vocab, tensors = read_gguf_metadata(gguf)
    ours, theirs = hf_config(metadata, len(vocab), tensors), read_json(default_model_int8_ir / "config.json")
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "vocab_size", "tie_word_embeddings",
            "bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "architectures")  # fmt: skip
    assert {key: ours[key] for key in keys} == {key: theirs[key] for key in keys}
    assert ours["rms_norm_eps"] == pytest.approx(theirs["rms_norm_eps"])
    assert ours["rope_theta"] == theirs["rope_parameters"]["rope_theta"]
    lean = tmp_path
    (lean / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(metadata, vocab)))
    assert read_special_tokens(lean) == read_special_tokens(default_model_int8_ir)
    assert read_chat_template(lean) == read_chat_template(default_model_int8_ir)
