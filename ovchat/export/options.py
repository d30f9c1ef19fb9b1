"""What an export makes: the weight format and its compression parameters, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ovchat.errors import OvchatError

# "gguf" keeps a GGUF file's own quantized blocks (ovchat/export/gguf_blocks.py); the others are
# converted by optimum-intel and, for int8/int4, compressed by NNCF.
KEEP_GGUF_BLOCKS = "gguf"
CONVERTED_WEIGHT_FORMATS = ("fp16", "int8", "int4")
WEIGHT_FORMATS = (*CONVERTED_WEIGHT_FORMATS, KEEP_GGUF_BLOCKS)
# A GGUF file keeps its own blocks by default: the GGUF's quality at 72% of the int8 IR's size, half the
# export time and memory, and no torch, so the lean install can export the default model. On the default
# 135M model it decoded at 0.75-0.94x the int8 IR (README, "Exporting GGUF files"); int8 is one flag away.
# Checkpoints are converted by optimum-intel and compressed to int8.
DEFAULT_GGUF_WEIGHT_FORMAT = KEEP_GGUF_BLOCKS
DEFAULT_WEIGHT_FORMAT = "int8"
# optimum-cli's defaults for int4 weight compression.
DEFAULT_INT4_GROUP_SIZE = 128
DEFAULT_INT4_RATIO = 1.0


@dataclass(frozen=True)
class ExportOptions:
    """Weight format and its compression parameters, validated on creation."""

    weight_format: str | None = None  # None: the source's default (default_weight_format)
    group_size: int | None = None  # int4 only; -1 means per channel
    ratio: float | None = None  # int4 only: share of layers in int4, the rest in int8
    sym: bool = False  # int8/int4: symmetric quantization
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.weight_format is not None and self.weight_format not in WEIGHT_FORMATS:
            raise OvchatError(f"weight format must be one of {', '.join(WEIGHT_FORMATS)}, not {self.weight_format!r}")
        if self.weight_format != "int4":
            if self.group_size is not None:
                raise OvchatError("--group-size applies only to --weight-format int4")
            if self.ratio is not None:
                raise OvchatError("--ratio applies only to --weight-format int4")
        if self.weight_format in ("fp16", KEEP_GGUF_BLOCKS) and self.sym:
            raise OvchatError("--sym applies only to int8 and int4 weights")
        if self.group_size is not None and not (self.group_size == -1 or self.group_size > 0):
            raise OvchatError(f"--group-size must be a positive integer or -1, not {self.group_size}")
        if self.ratio is not None and not (0.0 < self.ratio <= 1.0):
            raise OvchatError(f"--ratio must be in (0, 1], not {self.ratio}")

    def for_source(self, is_gguf: bool) -> ExportOptions:
        """These options with the source's default weight format filled in."""
        if self.weight_format is not None:
            return self
        return replace(self, weight_format=default_weight_format(is_gguf))

    @property
    def keeps_gguf_blocks(self) -> bool:
        return self.weight_format == KEEP_GGUF_BLOCKS

    def quantization_config(self) -> dict[str, Any] | None:
        """The weight-compression config as optimum-intel's CLI builds it; None for fp16 and for kept GGUF blocks."""
        if self.weight_format is None:
            raise ValueError("the weight format is not chosen yet (ExportOptions.for_source)")
        if self.weight_format in ("fp16", KEEP_GGUF_BLOCKS):
            return None
        if self.weight_format == "int8":
            return {"bits": 8, "sym": self.sym, "group_size": -1, "ratio": 1.0}
        return {
            "bits": 4,
            "sym": self.sym,
            "group_size": self.group_size if self.group_size is not None else DEFAULT_INT4_GROUP_SIZE,
            "ratio": self.ratio if self.ratio is not None else DEFAULT_INT4_RATIO,
            # Layers whose width the group size does not divide (SmolLM2's 576, a tiny
            # test model's 64 with the default 128) get the nearest group size that fits.
            "group_size_fallback": "adjust",
        }


def default_weight_format(is_gguf: bool) -> str:
    """The weight format an export gets when none is asked for."""
    return DEFAULT_GGUF_WEIGHT_FORMAT if is_gguf else DEFAULT_WEIGHT_FORMAT
