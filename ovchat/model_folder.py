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


def looks_like_ir(folder: Path) -> bool:
    """Whether ``folder`` is an OpenVINO IR rather than a checkpoint, complete or not."""
    return (folder / IR_XML).is_file()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; an empty one when the file does not exist."""
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


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
        return read_json(folder / MANIFEST) or None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
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
