"""Bad model folders: copies of the tiny model's IR folder with a file missing, truncated or garbled, folders that are
no IR at all, an IR of another task, and a folder that disappears while its model is loaded. Loading one ends in one
line that names the folder and what is wrong with it; it changes nothing in the folder, and a good model loaded
before still answers as it did."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_line_error, ovchat

from ovchat.engine import Engine, Reply
from ovchat.errors import OvchatError
from ovchat.prompt import Message
from ovchat.settings import GenerationSettings

GREEDY = GenerationSettings(max_new_tokens=8, temperature=0.0)
HELLO: list[Message] = [{"role": "user", "content": "Hello there!"}]
DAMAGED = "export the model again"
ALL_MISSING = (
    "is not an exported model: missing openvino_model.xml, openvino_model.bin, config.json, tokenizer_config.json, "
    "openvino_tokenizer.xml, openvino_detokenizer.xml"
)


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def truncate(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return damage


def replace(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(content)


def another_task(folder: Path) -> None:
    """An image model (a convolution over pixels) saved by OpenVINO in place of the LLM, the tokenizers kept."""
    import openvino as ov
    import openvino.opset13 as ops

    pixels = ops.parameter([1, 3, 8, 8], np.float32, name="pixel_values")
    kernel = ops.constant(np.ones((4, 3, 3, 3), np.float32))
    features = ops.relu(ops.convolution(pixels, kernel, [1, 1], [0, 0], [0, 0], [1, 1]))
    ov.save_model(ov.Model([features], [pixels], "classifier"), folder / "openvino_model.xml")


def stateless_llm(folder: Path) -> None:
    """A model that takes token ids but keeps no KV cache in its state (what an export without "-with-past"
    makes), cut down to that: openvino-genai's pipelines need the state."""
    import openvino as ov
    import openvino.opset13 as ops

    ids = ops.parameter([-1, -1], np.int64, name="input_ids")
    ov.save_model(ov.Model([ops.convert(ids, np.float32)], [ids], "stateless"), folder / "openvino_model.xml")


# (id, damage done to a copy of the tiny model's folder, the error's words)
FOLDER_CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("missing-model-bin", remove("openvino_model.bin"), "is not an exported model: missing openvino_model.bin"),
    ("missing-model-xml", remove("openvino_model.xml"), "is not an exported model: missing openvino_model.xml"),
    # pugixml's words name where the text ends, which depends on the export.
    ("truncated-model-xml", truncate("openvino_model.xml"), "openvino_model.xml or its weights cannot be read (Error"),
    ("malformed-model-xml", replace("openvino_model.xml", b"this is not XML <<<"),
     "openvino_model.xml is not an OpenVINO IR (no XML in it); " + DAMAGED),
    ("empty-model-xml", replace("openvino_model.xml", b""), "openvino_model.xml is not an OpenVINO IR (no XML in it)"),
    ("truncated-model-bin", truncate("openvino_model.bin"),
     "openvino_model.xml or its weights cannot be read (Incorrect weights in bin file!); " + DAMAGED),
    ("missing-tokenizer-xml", remove("openvino_tokenizer.xml"),
     "is not an exported model: missing openvino_tokenizer.xml"),
    ("missing-tokenizer-bin", remove("openvino_tokenizer.bin"),
     "openvino_tokenizer.bin is missing (the weights of openvino_tokenizer.xml); " + DAMAGED),
    ("malformed-tokenizer-xml", replace("openvino_tokenizer.xml", b"{}"),
     "openvino_tokenizer.xml is not an OpenVINO IR"),
    ("truncated-tokenizer-xml", truncate("openvino_tokenizer.xml"),
     "openvino_tokenizer.xml or its weights cannot be read"),
    ("missing-detokenizer-xml", remove("openvino_detokenizer.xml"),
     "is not an exported model: missing openvino_detokenizer.xml"),
    ("missing-detokenizer-bin", remove("openvino_detokenizer.bin"), "openvino_detokenizer.bin is missing"),
    ("missing-tokenizer-config", remove("tokenizer_config.json"),
     "is not an exported model: missing tokenizer_config.json"),
    ("missing-config", remove("config.json"), "is not an exported model: missing config.json"),
    ("malformed-config", replace("config.json", b'{"max_position_embeddings": 512,'),
     "config.json is not valid JSON (Expecting property name enclosed in double quotes at line 1); " + DAMAGED),
    ("config-not-utf8", replace("config.json", b'{"model_type": "\xff"}'), "config.json is not UTF-8 text"),
    ("config-deeply-nested", replace("config.json", b"[" * 100_000),
     "config.json is not valid JSON (nested too deeply)"),
    ("malformed-generation-config", replace("generation_config.json", b"{eos}"), "generation_config.json is not valid"),
    ("malformed-tokenizer-config", replace("tokenizer_config.json", b"[1, 2"), "tokenizer_config.json is not valid"),
    ("an-ir-of-another-task", another_task,
     "openvino_model.xml is not a text-generation model with a KV cache (its inputs: pixel_values); "
     "export a chat model with export_ir.py"),
    ("an-llm-without-kv-cache", stateless_llm,
     "openvino_model.xml is not a text-generation model with a KV cache (its inputs: input_ids)"),
]  # fmt: skip


@pytest.fixture(scope="module")
def good_reply(tiny_engine: Engine) -> Reply:
    return tiny_engine.generate(HELLO, GREEDY)


def damaged_copy(tiny_irs: dict[str, Path], tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    folder = shutil.copytree(tiny_irs["int8"], tmp_path / "model")
    damage(folder)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()} if folder.is_dir() else {}


@pytest.mark.parametrize(("damage", "message"), [c[1:] for c in FOLDER_CASES], ids=[c[0] for c in FOLDER_CASES])
def test_a_damaged_model_folder_gets_one_line(
    tiny_irs: dict[str, Path],
    tmp_path: Path,
    tiny_engine: Engine,
    good_reply: Reply,
    damage: Callable[[Path], None],
    message: str,
) -> None:
    folder = damaged_copy(tiny_irs, tmp_path, damage)
    before = snapshot(folder)
    with pytest.raises(OvchatError) as refused:
        Engine.load(folder)
    text = str(refused.value)
    assert text.startswith(f"{folder} ") or text.startswith(f"could not load {folder}: "), text
    assert message in text and "\n" not in text, text
    assert snapshot(folder) == before  # loading writes nothing into the folder
    assert tiny_engine.generate(HELLO, GREEDY).text == good_reply.text


def text_files(folder: Path) -> None:
    folder.mkdir()
    (folder / "README.txt").write_text("notes")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)


# (id, what is at the path, the error's words): paths that are no exported model at all.
NOT_A_MODEL_CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("a-folder-of-text-files", text_files, ALL_MISSING),
    ("an-empty-folder", lambda path: path.mkdir(), ALL_MISSING),
    ("a-file", lambda path: path.write_text("openvino_model.xml"), "is a file; a model is a folder made by export_ir"),
    ("nothing", lambda path: None, "does not exist; export one with export_ir.py"),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in NOT_A_MODEL_CASES], ids=[c[0] for c in NOT_A_MODEL_CASES])
def test_a_path_that_is_no_model_gets_one_line(tmp_path: Path, make: Callable[[Path], None], message: str) -> None:
    path = tmp_path / "model"
    make(path)
    with pytest.raises(OvchatError) as refused:
        Engine.load(path)
    assert str(path) in str(refused.value) and message in str(refused.value) and "\n" not in str(refused.value)


def test_a_checkpoint_folder_is_not_a_model_folder(tiny_checkpoint: Path) -> None:
    with pytest.raises(OvchatError, match=r"is not an exported model: missing openvino_model.xml, openvino_model.bin"):
        Engine.load(tiny_checkpoint)


# Optional files: the folder loads without them and the model answers.
OPTIONAL_FILES = [
    "tokenizer.json",
    "chat_template.jinja",
    "generation_config.json",
    "openvino_config.json",
    "ovchat.json",
]


@pytest.mark.parametrize("name", OPTIONAL_FILES)
def test_a_folder_without_an_optional_file_still_chats(tiny_irs: dict[str, Path], tmp_path: Path, name: str) -> None:
    folder = damaged_copy(tiny_irs, tmp_path, remove(name))
    reply = Engine.load(folder, backend="genai").generate(HELLO, GREEDY)
    assert 1 <= reply.stats.new_tokens <= 8


# The genai loop loads in this process, the batched one in a child: the same damage gets the same line from both.
GENAI_CASES = [
    c for c in FOLDER_CASES if c[0] in ("truncated-model-xml", "truncated-model-bin", "an-ir-of-another-task")
]


@pytest.mark.parametrize(("damage", "message"), [c[1:] for c in GENAI_CASES], ids=[c[0] for c in GENAI_CASES])
def test_the_genai_loop_names_the_damage_too(
    tiny_irs: dict[str, Path], tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    folder = damaged_copy(tiny_irs, tmp_path, damage)
    with pytest.raises(OvchatError) as refused:
        Engine.load(folder, backend="genai")
    assert str(refused.value).startswith(f"could not load {folder}: ") and message in str(refused.value)


# (id, damage, the error's words): what `ovchat ask --model` prints, one line and nothing else (the batched loop's
# child process, which loads the model, must not print a traceback of its own when the load fails).
CLI_CASES = [
    ("truncated-model-xml", truncate("openvino_model.xml"), "openvino_model.xml or its weights cannot be read"),
    ("malformed-model-xml", replace("openvino_model.xml", b"not xml"), "is not an OpenVINO IR (no XML in it)"),
    ("missing-tokenizer-bin", remove("openvino_tokenizer.bin"), "openvino_tokenizer.bin is missing"),
    ("an-ir-of-another-task", another_task, "is not a text-generation model with a KV cache"),
]


@pytest.mark.parametrize(("damage", "message"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_ask_with_a_damaged_model_prints_one_line(
    tiny_irs: dict[str, Path], tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    folder = damaged_copy(tiny_irs, tmp_path, damage)
    result = ovchat("ask", "Hello", "--model", str(folder))
    assert_one_line_error(result, message)
    assert result.stdout == ""


@pytest.mark.parametrize("backend", ["batched", "genai"])
@pytest.mark.parametrize("how", ["renamed", "deleted"])
def test_a_folder_that_disappears_while_loaded(
    tiny_irs: dict[str, Path], tmp_path: Path, backend: str, how: str
) -> None:
    folder = shutil.copytree(tiny_irs["int8"], tmp_path / "model")
    engine = Engine.load(folder, backend=backend)
    before = engine.generate(HELLO, GREEDY)
    if how == "renamed":
        folder.rename(tmp_path / "moved")
    else:
        shutil.rmtree(folder)
    # The model, its tokenizer and detokenizer are in memory: it answers as before.
    after = engine.generate(HELLO, GREEDY)
    assert (after.text, after.stats.new_tokens) == (before.text, before.stats.new_tokens)
    # Log-probabilities compile the IR a second time, on first use, from the folder that is gone: one line.
    with pytest.raises(OvchatError) as refused:
        engine.generate(HELLO, GREEDY.with_changes(logprobs=2))
    assert str(refused.value) == (
        f"could not load {folder} for log-probabilities: the folder was moved or deleted after the model was loaded; "
        "load it again from where it is now"
    )
    assert engine.generate(HELLO, GREEDY).text == before.text  # and it still answers
