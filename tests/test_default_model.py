"""Integration on the real default model, SmolLM2-135M-Instruct, exported from its GGUF file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovchat.export.sources import DEFAULT_GGUF_SHA256

pytestmark = pytest.mark.slow

# Token ids taken once from llama.cpp on the same GGUF file; "_source" says how.
LLAMACPP_IDS = json.loads((Path(__file__).parent / "data" / "smollm2_llamacpp_token_ids.json").read_text())["ids"]


def test_manifest_records_the_gguf_source(default_model_ir: Path) -> None:
    manifest = json.loads((default_model_ir / "ovchat.json").read_text())
    assert manifest["name"] == "SmolLM2-135M-Instruct"
    assert manifest["source"]["kind"] == "gguf"
    assert manifest["source"]["source_sha256"] == DEFAULT_GGUF_SHA256
    # The chat's default export keeps the GGUF's blocks: the one route without torch.
    assert (manifest["weight_format"], manifest["route"]) == ("gguf", "gguf-blocks")
    assert manifest["eos_token_ids"] == [2]  # <|im_end|>, the ChatML end of turn


def test_the_int8_route_records_its_compression(default_model_int8_ir: Path) -> None:
    manifest = json.loads((default_model_int8_ir / "ovchat.json").read_text())
    assert (manifest["weight_format"], manifest["route"]) == ("int8", "optimum")
    assert manifest["source"]["quantization"] == "Q4_1"
    assert manifest["quantization"]["bits"] == 8
    assert manifest["eos_token_ids"] == [2]


@pytest.fixture(params=["gguf", "int8"])
def exported(request: pytest.FixtureRequest) -> Path:
    """The default model by each route: its GGUF blocks kept, and dequantized and compressed to int8."""
    return request.getfixturevalue("default_model_ir" if request.param == "gguf" else "default_model_int8_ir")


@pytest.mark.parametrize("text", list(LLAMACPP_IDS))
def test_exported_tokenizers_match_llamacpp(text: str, exported: Path) -> None:
    import openvino as ov
    import openvino_tokenizers  # noqa: F401
    from transformers import AutoTokenizer

    expected = LLAMACPP_IDS[text]
    hf_tokenizer = AutoTokenizer.from_pretrained(exported)
    assert hf_tokenizer(text)["input_ids"] == expected
    ov_tokenizer = ov.Core().compile_model(exported / "openvino_tokenizer.xml", "CPU")
    assert ov_tokenizer([text])["input_ids"][0].tolist() == expected
    ov_detokenizer = ov.Core().compile_model(exported / "openvino_detokenizer.xml", "CPU")
    assert str(ov_detokenizer([expected])["string_output"][0]) == text.replace("<|im_start|>", "")
    assert hf_tokenizer.decode(expected) == text


def test_special_tokens_are_the_gguf_ones(exported: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    assert tokenizer("hi")["input_ids"] == [6004]  # add_bos is false in the GGUF
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_smoke_chat_reply_ends_at_end_of_turn(exported: Path) -> None:
    from ovchat.engine import Engine
    from ovchat.settings import GenerationSettings

    engine = Engine.load(exported)
    reply = engine.generate(
        [{"role": "user", "content": "What is the capital of France?"}],
        GenerationSettings(max_new_tokens=128, temperature=0.0),
    )
    assert reply.stats.finish_reason == "eos"
    assert "Paris" in reply.text
    assert "<|im_end|>" not in reply.text and "\ufffd" not in reply.text
    assert reply.stats.new_tokens < 128
