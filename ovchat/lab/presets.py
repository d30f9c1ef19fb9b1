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
# The page's sliders for the preset fields (chat_streamlit.py, lab_streamlit.py) span these ranges, narrower than
# the settings allow: a preset outside them would make Streamlit refuse the slider ("The value 4.0 is greater than
# the max_value 2.0") and stop the page, so a saved one outside them is not offered.
PRESET_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.05, 1.0),
    "top_k": (0, 200),
    "repetition_penalty": (1.0, 2.0),
}


def presets_path() -> Path:
    return data_home() / PRESETS_FILE


def load_presets() -> dict[str, dict[str, float | int]]:
    """Built-in presets, then the saved ones. The file is hand-editable, so anything in it may be wrong: a
    malformed file is ignored and a bad entry skipped, never fatal, and one bad entry does not hide the others."""
    presets = {name: dict(values) for name, values in BUILT_IN_PRESETS.items()}
    for name, values in (_read_saved() or {}).items():
        # The page cannot save these names, and would show a built-in one under its translated label.
        if name in BUILT_IN_PRESETS or not 0 < len(name.strip()) <= MAX_NAME:
            continue
        checked = _checked_values(values)
        if checked is not None:
            presets[name] = checked
    return presets


def _read_saved() -> dict[str, Any] | None:
    """The saved presets file's object as it is, entries ovchat cannot use included; {} when there is no file,
    None when it is there but not a JSON object."""
    try:
        saved = json.loads(presets_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):  # ValueError: not JSON, or not UTF-8; RecursionError: too deep
        return None
    return saved if isinstance(saved, dict) else None


def _checked_values(values: object) -> dict[str, float | int] | None:
    """A saved preset's values as the page's sliders take them (floats as floats), or None for one they cannot."""
    if not isinstance(values, dict):
        return None
    try:
        chosen = preset_values(apply_preset(GenerationSettings(), values))
        _check_ranges(chosen)
    except OvchatError:
        return None
    return {name: value if name == "top_k" else float(value) for name, value in chosen.items()}


def _check_ranges(values: dict[str, float | int]) -> None:
    for name, (low, high) in PRESET_RANGES.items():
        if not low <= values[name] <= high:
            raise OvchatError(f"a preset's {name} must be in [{low:g}, {high:g}], the page's range, not {values[name]}")


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
    values = preset_values(settings)
    _check_ranges(values)
    _write({**_saved_for_writing(), name: values})


def delete_preset(name: str) -> None:
    if name in BUILT_IN_PRESETS:
        raise OvchatError(f"{name} is a built-in preset and cannot be deleted")
    _write({key: value for key, value in _saved_for_writing().items() if key != name})


def _saved_for_writing() -> dict[str, Any]:
    """The saved entries to write back: all of them, those this version cannot use too (a hand-edited entry is
    the user's to fix, not ovchat's to drop). A file that is not a JSON object is moved aside to presets.json.broken
    first, so that saving a preset never destroys it."""
    saved = _read_saved()
    if saved is None:
        path = presets_path()
        path.replace(path.with_name(f"{PRESETS_FILE}.broken"))
        return {}
    return saved


def _write(saved: dict[str, Any]) -> None:
    write_text_atomically(presets_path(), json.dumps(saved, ensure_ascii=False, indent=2))
