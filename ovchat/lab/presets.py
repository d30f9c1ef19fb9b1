"""Named sampling settings: three built in, and the ones a user saves (``$OVCHAT_HOME/presets.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ovchat.errors import OvchatError
from ovchat.paths import data_home, write_text_atomically
from ovchat.settings import GenerationSettings

PRESETS_FILE = "presets.json"
# The fields a preset sets; length, seed and stop strings stay the chat's own.
PRESET_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")
# Close to what other local tools ship: LM Studio's and Ollama's defaults are Balanced; Precise suits
# facts and code, Creative stories and brainstorming.
BUILT_IN_PRESETS: dict[str, dict[str, float | int]] = {
    "Precise": {"temperature": 0.2, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1},
    "Balanced": {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1},
    "Creative": {"temperature": 1.1, "top_p": 0.98, "top_k": 100, "repetition_penalty": 1.05},
}
MAX_NAME = 40


def presets_path() -> Path:
    return data_home() / PRESETS_FILE


def load_presets() -> dict[str, dict[str, float | int]]:
    """Built-in presets, then the saved ones (a malformed file is ignored, never fatal)."""
    presets = {name: dict(values) for name, values in BUILT_IN_PRESETS.items()}
    try:
        saved = json.loads(presets_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return presets
    if isinstance(saved, dict):
        for name, values in saved.items():
            try:
                presets[str(name)] = preset_values(apply_preset(GenerationSettings(), values))
            except (OvchatError, TypeError, AttributeError):
                continue  # one bad entry does not hide the others
    return presets


def preset_values(settings: GenerationSettings) -> dict[str, float | int]:
    return {name: getattr(settings, name) for name in PRESET_FIELDS}


def apply_preset(settings: GenerationSettings, values: dict[str, Any]) -> GenerationSettings:
    """``settings`` with the preset's fields (validated like any settings)."""
    return settings.with_changes(**{name: values[name] for name in PRESET_FIELDS if name in values})


def save_preset(name: str, settings: GenerationSettings) -> None:
    """Save (or replace) a user preset; a built-in name cannot be taken."""
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise OvchatError(f"a preset name must be 1 to {MAX_NAME} characters")
    if name in BUILT_IN_PRESETS:
        raise OvchatError(f"{name} is a built-in preset; pick another name")
    saved = {key: value for key, value in load_presets().items() if key not in BUILT_IN_PRESETS}
    saved[name] = preset_values(settings)
    _write(saved)


def delete_preset(name: str) -> None:
    if name in BUILT_IN_PRESETS:
        raise OvchatError(f"{name} is a built-in preset and cannot be deleted")
    saved = {key: value for key, value in load_presets().items() if key not in BUILT_IN_PRESETS and key != name}
    _write(saved)


def _write(saved: dict[str, dict[str, float | int]]) -> None:
    write_text_atomically(presets_path(), json.dumps(saved, ensure_ascii=False, indent=2))
