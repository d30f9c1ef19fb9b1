"""The embedded default model (SmolLM2-135M-Instruct, shipped as a GGUF file in a PyPI package):
where its export lives, and exporting it on first use. The CLI and the page both go through here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ovchat.export.options import DEFAULT_GGUF_WEIGHT_FORMAT
from ovchat.export.pipeline import default_output, export_model
from ovchat.export.sources import resolve_source
from ovchat.model_folder import is_complete


def default_model_folder() -> Path:
    """Where the default model's export lives (it may not be there yet): the GGUF's blocks kept, the
    one route the lean install (no torch) can take."""
    return default_output(resolve_source(None), DEFAULT_GGUF_WEIGHT_FORMAT)


def ensure_default_model(export: Callable[[Path], object] | None = None) -> Path:
    """The default model's IR folder, exported first by ``export(folder)`` if it is not complete.

    The caller's ``export`` shows progress its own way (a status line in the terminal, a status box
    on the page); without one, the export runs silently.
    """
    folder = default_model_folder()
    if not is_complete(folder):
        (export or (lambda target: export_model(None, target)))(folder)
    return folder
