"""The exported model folder: which files make it complete, and the facts ovchat reads from it.

``export_ir.py`` writes these folders and the engine, the page and the bench read them, so what
makes a folder usable is said here once. Everything is read as JSON: transformers, which would
parse the same files, imports torch (seconds) and the chat path never needs it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ovchat.errors import OvchatError

IR_XML = "openvino_model.xml"
IR_BIN = "openvino_model.bin"
# The model, the OpenVINO tokenizer and detokenizer (openvino-genai's loop and its text streamer), and
# the Hugging Face files the engine reads: context length and eos ids, special tokens and the chat template.
REQUIRED_FILES: tuple[str, ...] = (
    IR_XML,
    IR_BIN,
    "config.json",
    "tokenizer_config.json",
    "openvino_tokenizer.xml",
    "openvino_detokenizer.xml",
)
MANIFEST = "ovchat.json"
# The manifest's "route": how the weights were made. Kept from a GGUF file's own quantized blocks
# (ovchat/export/gguf_blocks.py), or converted by optimum-intel and compressed by NNCF.
ROUTE_KEEP_GGUF_BLOCKS = "gguf-blocks"
ROUTE_OPTIMUM = "optimum"
# Used when the model's config names no context length.
FALLBACK_CONTEXT_LENGTH = 2048


def missing_files(folder: Path) -> list[str]:
    """The required files ``folder`` lacks, in a fixed order; empty for a complete export."""
    return [name for name in REQUIRED_FILES if not (folder / name).is_file()]


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds everything the engine loads (the page lists only such folders)."""
    return folder.is_dir() and not missing_files(folder)


# The IRs openvino-genai reads, and the JSON files it and ovchat read, from a folder's REQUIRED_FILES and beyond.
IR_FILES: tuple[str, ...] = (IR_XML, "openvino_tokenizer.xml", "openvino_detokenizer.xml")
JSON_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def damaged_files(folder: Path) -> list[str]:
    """What is wrong with the files ``folder`` has, one line each (empty when nothing is seen): JSON that does
    not parse, an IR's XML that is not XML, an IR's weights missing. Reads a few bytes of each IR only, so the
    engine checks a folder this way before every load. An XML file that is not XML makes OpenVINO try each of
    its frontends on it in turn, and they print their own errors, so this is caught before OpenVINO reads it."""
    problems = []
    for name in JSON_FILES:
        try:
            _json_object(folder / name)
        except ValueError as error:
            problems.append(f"{name} {error}")
    for name in IR_FILES:
        xml = folder / name
        if not xml.is_file():
            continue  # missing_files names the required ones
        try:
            with xml.open("rb") as file:
                head = file.read(64).lstrip()
        except OSError as error:
            problems.append(f"{name} cannot be read ({error.strerror or error})")
            continue
        if not head.startswith((b"<?xml", b"<net")):
            problems.append(f"{name} is not an OpenVINO IR (no XML in it)")
        if not xml.with_suffix(".bin").is_file():
            problems.append(f"{xml.with_suffix('.bin').name} is missing (the weights of {name})")
    return problems


def looks_like_ir(folder: Path) -> bool:
    """Whether ``folder`` is an OpenVINO IR rather than a checkpoint, complete or not."""
    return (folder / IR_XML).is_file()


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; an empty one when the file does not exist or holds another JSON value.
    Raises ValueError saying why a file that is there cannot be read."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"is not valid JSON ({error.msg} at line {error.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None
    except RecursionError:  # json gives up on nesting deeper than Python's recursion limit
        raise ValueError("is not valid JSON (nested too deeply)") from None
    except OSError as error:
        raise ValueError(f"cannot be read ({error.strerror or error})") from None
    return value if isinstance(value, dict) else {}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; an empty one when the file does not exist. A file that cannot be read as
    JSON is an error naming it."""
    try:
        return _json_object(path)
    except ValueError as error:
        raise OvchatError(f"{path} {error}") from None


def read_model_configs(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json and generation_config.json as dicts.

    Without generation_config.json, transformers takes the generation settings (the eos id) from
    config.json, and so does ovchat.
    """
    config = read_json(folder / "config.json")
    generation = read_json(folder / "generation_config.json") or {"eos_token_id": config.get("eos_token_id")}
    return config, generation


def model_context_length(config: Mapping[str, Any]) -> int:
    """The longest sequence the model was trained for, from its config.json."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return FALLBACK_CONTEXT_LENGTH


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """What the export recorded (source, weight format, sizes, smoke reply); None for a foreign folder."""
    try:
        return _json_object(folder / MANIFEST) or None
    except ValueError:
        return None


def source_gguf(folder: Path) -> Path | None:
    """The GGUF file the export recorded as the folder's source (it may have moved since); None if the
    folder was made from something else."""
    source = (read_manifest(folder) or {}).get("source", {})
    return Path(source["location"]) if source.get("kind") == "gguf" and source.get("location") else None


def export_summary(folder: Path) -> str | None:
    """How the folder's weights were made, from its manifest: "Q4_1 blocks kept from the GGUF",
    "int8 by optimum-intel from a Q4_1 GGUF", "int4 by optimum-intel"; None for a foreign folder."""
    manifest = read_manifest(folder)
    if manifest is None or not manifest.get("weight_format"):
        return None
    source = manifest.get("source") or {}
    quantization = source.get("quantization")
    if manifest.get("route") == ROUTE_KEEP_GGUF_BLOCKS:
        return f"{quantization or 'GGUF'} blocks kept from the GGUF"
    made = f"{manifest['weight_format']} by optimum-intel"
    if source.get("kind") == "gguf":
        return f"{made} from a {quantization} GGUF" if quantization else f"{made} from a GGUF"
    return made
