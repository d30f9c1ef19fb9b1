"""Shared fixtures: a temp data folder for every test, a tiny random model, the real default model, a browser."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browsing import CHROMIUM, CHROMIUM_ARGS

from ovchat.paths import HOME_ENV

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from ovchat.engine import Engine

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TINY_CORPUS = [
    "Hello there! How are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "def add(a, b):\n    return a + b\n",
    "数学是被发明还是被发现的？ 日本語 😀",
    "OpenVINO runs large language models on Intel CPUs and GPUs.",
] * 20


@pytest.fixture(autouse=True)
def isolated_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its data (models, cache, logs) under its own temp folder."""
    home = tmp_path / "ovchat-home"
    monkeypatch.setenv(HOME_ENV, str(home))
    return home


def build_tiny_checkpoint(folder: Path) -> Path:
    """A random 2-layer Llama with a 400-token byte-level BPE and a ChatML template; no download."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(TINY_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_irs(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model (a checkpoint, not a GGUF) exported once per session in each weight format it can take."""
    from ovchat.export import CONVERTED_WEIGHT_FORMATS, ExportOptions, export_model

    root = tmp_path_factory.mktemp("tiny-irs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOME_ENV, str(root / "home"))
        return {
            fmt: export_model(str(tiny_checkpoint), root / fmt, ExportOptions(weight_format=fmt)).path
            for fmt in CONVERTED_WEIGHT_FORMATS
        }


@pytest.fixture(scope="session")
def default_model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding the real default model (SmolLM2-135M-Instruct from its GGUF), exported once
    as the chat exports it (the GGUF's Q4_1 blocks kept) where ovchat looks for it, so commands run
    without --model find it."""
    from ovchat.export import default_model_folder, export_model

    home = tmp_path_factory.mktemp("default-model") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOME_ENV, str(home))
        export_model(None, default_model_folder())
    return home


@pytest.fixture(scope="session")
def default_model_ir(default_model_home: Path) -> Path:
    from ovchat.export import default_model_folder

    return default_model_home / "models" / default_model_folder().name


@pytest.fixture(scope="session")
def default_model_int8_ir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's GGUF dequantized by transformers and exported to int8 by optimum-intel and NNCF
    (--weight-format int8), outside the default model's data folder, so that the page's model list there
    stays as it was."""
    from ovchat.export import ExportOptions, export_model

    root = tmp_path_factory.mktemp("int8-route")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOME_ENV, str(root / "home"))
        return export_model(None, root / "SmolLM2-135M-Instruct-int8", ExportOptions(weight_format="int8")).path


@pytest.fixture(scope="session")
def synthetic_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder whose synthetic/ holds the tiny synthetic model (Qwen2's layout, random weights) in
    every format, built once: test_synthetic.py checks the artefacts, test_sizes.py measures them."""
    from ovchat.bench.synthetic import FORMATS, build_synthetic, default_synthetic_root

    home = tmp_path_factory.mktemp("synthetic") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOME_ENV, str(home))
        build_synthetic("tiny", default_synthetic_root(), FORMATS)
    return home


@pytest.fixture(scope="module")
def default_engine(default_model_ir: Path) -> Engine:
    from ovchat.engine import Engine

    return Engine.load(default_model_ir)


@pytest.fixture(scope="module")
def tiny_engine(tiny_irs: dict[str, Path]) -> Engine:
    """The tiny model's int8 IR on the default loop, one per test module."""
    from ovchat.engine import Engine

    return Engine.load(tiny_irs["int8"])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium through Playwright, for the browser tests (tests/browsing.py drives the page)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: ./run.sh installs it with `apt-get install chromium`, which needs root"
        if os.geteuid() == 0 or os.environ.get("CI"):
            pytest.fail(reason)  # here run.sh could have installed it, so its absence is an error
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
