"""Resolving what the user named, the data folder, and export options; no model needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovchat.errors import OvchatError
from ovchat.export import ExportOptions
from ovchat.export.pipeline import end_of_turn_token_ids
from ovchat.export.sources import (
    DEFAULT_GGUF_FILE,
    DEFAULT_GGUF_SHA256,
    DEFAULT_MODEL_NAME,
    SourceKind,
    resolve_source,
    sha256_file,
)
from ovchat.paths import cache_dir, data_home, models_dir


def test_data_folder_follows_the_environment(isolated_data_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data_home() == isolated_data_home
    assert models_dir() == isolated_data_home / "models"
    assert cache_dir() == isolated_data_home / "cache"
    monkeypatch.delenv("OVCHAT_HOME")
    assert data_home() == Path.home() / ".ovchat"


def test_default_source_is_the_installed_gguf_with_the_known_digest() -> None:
    source = resolve_source(None)
    assert source.kind is SourceKind.GGUF
    assert source.name == DEFAULT_MODEL_NAME
    assert source.path.name == DEFAULT_GGUF_FILE
    assert sha256_file(source.path) == DEFAULT_GGUF_SHA256 == source.expected_sha256


def test_paths_are_classified(tmp_path: Path) -> None:
    gguf = tmp_path / "m.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    ir = tmp_path / "ir"
    ir.mkdir()
    (ir / "openvino_model.xml").write_text("<net/>")
    (ir / "openvino_model.bin").write_bytes(b"")
    assert (resolve_source(str(gguf)).kind, resolve_source(str(gguf)).name) == (SourceKind.GGUF, "m.Q4_K_M")
    assert resolve_source(str(checkpoint)).kind is SourceKind.CHECKPOINT
    assert resolve_source(str(ir)).kind is SourceKind.IR
    hub = resolve_source("Qwen/Qwen2.5-0.5B-Instruct")
    assert (hub.kind, hub.location, hub.name) == (SourceKind.HUB, "Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct")


@pytest.mark.parametrize("spec", ["./missing/model", "/nowhere/at/all", "missing.gguf", "just-a-word"])
def test_unknown_sources_are_rejected(spec: str) -> None:
    with pytest.raises(OvchatError, match="does not exist"):
        resolve_source(spec)


def test_a_file_that_is_not_gguf_is_rejected(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(OvchatError, match=r"not a \.gguf file"):
        resolve_source(str(weights))


def test_export_options_build_optimum_configs() -> None:
    assert ExportOptions("fp16").quantization_config() is None
    assert ExportOptions("int8", sym=True).quantization_config() == {
        "bits": 8,
        "sym": True,
        "group_size": -1,
        "ratio": 1.0,
    }
    int4 = ExportOptions("int4", group_size=64, ratio=0.8).quantization_config()
    assert (int4["bits"], int4["group_size"], int4["ratio"], int4["sym"]) == (4, 64, 0.8, False)
    assert ExportOptions("int4").quantization_config()["group_size"] == 128


class _Tokenizer:
    def __init__(self, template: str, vocab: dict[str, int], eos: int | None) -> None:
        self.chat_template = template
        self._vocab = vocab
        self.eos_token_id = eos

    def get_vocab(self) -> dict[str, int]:
        return self._vocab


def test_end_of_turn_tokens_come_from_the_template() -> None:
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|eot_id|>": 7}
    chatml = _Tokenizer("{{ '<|im_start|>' + m + '<|im_end|>' }}", vocab, eos=0)
    # A base-model config naming <|endoftext|> still stops at the template's <|im_end|>.
    assert end_of_turn_token_ids(chatml, 0) == [0, 2]
    assert end_of_turn_token_ids(chatml, [0, 5]) == [0, 2, 5]
    no_template = _Tokenizer("", vocab, eos=None)
    assert end_of_turn_token_ids(no_template, None) == []
