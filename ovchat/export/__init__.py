"""Exporting a model once: a GGUF file, a checkpoint folder or a hub id to an OpenVINO IR folder.

:func:`export_model` does it in one call; :func:`plan_export` checks what can be checked in
seconds and :func:`execute_export` runs the slow steps. The page and the CLI get the default
model through :func:`ensure_default_model`.
"""

from ovchat.export.default_model import default_model_folder, ensure_default_model
from ovchat.export.options import (
    CONVERTED_WEIGHT_FORMATS,
    DEFAULT_GGUF_WEIGHT_FORMAT,
    DEFAULT_WEIGHT_FORMAT,
    KEEP_GGUF_BLOCKS,
    WEIGHT_FORMATS,
    ExportOptions,
    default_weight_format,
)
from ovchat.export.pipeline import ExportPlan, ExportResult, ProgressCallback, execute_export, export_model, plan_export
from ovchat.export.sources import ModelSource, SourceKind, resolve_source

__all__ = [
    "CONVERTED_WEIGHT_FORMATS",
    "DEFAULT_GGUF_WEIGHT_FORMAT",
    "DEFAULT_WEIGHT_FORMAT",
    "KEEP_GGUF_BLOCKS",
    "WEIGHT_FORMATS",
    "ExportOptions",
    "ExportPlan",
    "ExportResult",
    "ModelSource",
    "ProgressCallback",
    "SourceKind",
    "default_model_folder",
    "default_weight_format",
    "ensure_default_model",
    "execute_export",
    "export_model",
    "plan_export",
    "resolve_source",
]
