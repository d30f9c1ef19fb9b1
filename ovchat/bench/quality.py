"""``ovchat bench --quality``: perplexity of each exported weight format on a text the repo ships.

Every IR reads the same text in the same windows through OpenVINO (OVModelForCausalLM, one
forward pass per window, f32 inference); the fp32 PyTorch checkpoint the exports came from
is the reference, and for an export from a GGUF, llama.cpp on that GGUF too (when
llama-cpp-python is installed: the ``bench`` extra). A lower perplexity is better; the ratio to
the reference shows what a weight format costs in quality, next to what it saves in size.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ovchat.bench.report import figure, save_figure
from ovchat.errors import OvchatError
from ovchat.export.options import KEEP_GGUF_BLOCKS
from ovchat.model_folder import IR_BIN, read_manifest, source_gguf

# The US Declaration of Independence (1776, public domain): plain English prose of ~1,800 tokens.
QUALITY_TEXT = Path(__file__).with_name("quality.txt")
WINDOW_TOKENS = 512


def text_windows(token_ids: list[int], window: int) -> list[list[int]]:
    """Consecutive, non-overlapping windows; a last window of fewer than 2 tokens predicts nothing."""
    windows = [token_ids[start : start + window] for start in range(0, len(token_ids), window)]
    return [ids for ids in windows if len(ids) >= 2]


def perplexity(logits_for: Callable[[list[int]], Any], windows: Sequence[list[int]]) -> tuple[float, int]:
    """exp(mean negative log-likelihood of each next token), and how many tokens were scored."""
    import torch

    total, count = 0.0, 0
    for ids in windows:
        logits = torch.as_tensor(logits_for(ids), dtype=torch.float32).reshape(len(ids), -1)
        nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum")
        total += float(nll)
        count += len(ids) - 1
    if count == 0:
        raise OvchatError("the text is too short to score")
    return math.exp(total / count), count


def openvino_logits(ir: Path) -> Callable[[list[int]], Any]:
    import torch
    from optimum.intel import OVModelForCausalLM

    from ovchat.engine.runtime import DEFAULT_CPU_CONFIG

    model = OVModelForCausalLM.from_pretrained(ir, device="CPU", ov_config=dict(DEFAULT_CPU_CONFIG))

    def logits_for(ids: list[int]) -> Any:
        # No past key values: the stateful model starts each window from an empty cache.
        output = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        return output.logits[0]

    return logits_for


def pytorch_logits(checkpoint: Path) -> Callable[[list[int]], Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32).eval()

    def logits_for(ids: list[int]) -> Any:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([ids])).logits[0]

    return logits_for


def llamacpp_logits(gguf: Path, window: int) -> Callable[[list[int]], Any]:
    """llama.cpp (llama-cpp-python) on the GGUF itself: the quality an export from it should keep."""
    import numpy as np
    from llama_cpp import Llama

    model = Llama(str(gguf), n_ctx=window, logits_all=True, verbose=False)

    def logits_for(ids: list[int]) -> Any:
        model.reset()  # each window from an empty cache, as for the other rows
        model.eval(ids)
        return np.asarray(model.scores[: len(ids)], dtype=np.float32)

    return logits_for


def describe_weights(ir: Path) -> str:
    """The weight format from the export manifest, e.g. ``int4 g128``, ``int8`` or ``Q4_1 kept``."""
    manifest = read_manifest(ir) or {}
    weight_format = str(manifest.get("weight_format", "?"))
    if weight_format == KEEP_GGUF_BLOCKS:
        return f"{(manifest.get('source') or {}).get('quantization') or 'GGUF'} kept"
    group = (manifest.get("quantization") or {}).get("group_size")
    if weight_format == "int4" and group is not None:
        return f"int4 g{group}" if group != -1 else "int4 per-channel"
    return weight_format


def run_quality(
    irs: Sequence[Path],
    checkpoint: Path | None,
    text_path: Path = QUALITY_TEXT,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Perplexity of each IR (and of the fp32 checkpoint, when there is one) on ``text_path``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(irs[0])
    token_ids = tokenizer(text_path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    windows = text_windows(token_ids, WINDOW_TOKENS)
    rows: dict[str, dict[str, Any]] = {}
    if checkpoint is not None:
        progress("scoring the fp32 reference")
        value, scored = perplexity(pytorch_logits(checkpoint), windows)
        rows["pytorch fp32"] = {"weights": "fp32 (reference)", "perplexity": value, "ir_mb": None}
    gguf = source_gguf(irs[0])
    if gguf is not None and gguf.is_file() and importlib.util.find_spec("llama_cpp") is not None:
        progress(f"scoring {gguf.name} under llama.cpp")
        value, scored = perplexity(llamacpp_logits(gguf, WINDOW_TOKENS), windows)
        quantization = ((read_manifest(irs[0]) or {}).get("source") or {}).get("quantization") or "GGUF"
        rows[f"llama.cpp: {gguf.name}"] = {"weights": f"{quantization} (GGUF)", "perplexity": value, "ir_mb": None}
    for ir in irs:
        progress(f"scoring {ir.name}")
        value, scored = perplexity(openvino_logits(ir), windows)
        size_mb = (ir / IR_BIN).stat().st_size / 2**20
        rows[ir.name] = {"weights": describe_weights(ir), "perplexity": value, "ir_mb": size_mb}
    reference = rows.get("pytorch fp32", {}).get("perplexity")
    for row in rows.values():
        row["ratio_vs_fp32"] = row["perplexity"] / reference if reference else None
    return {
        "text": {"file": text_path.name, "tokens": len(token_ids), "scored_tokens": scored, "window": WINDOW_TOKENS},
        "models": rows,
    }


def format_quality_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "weights", "IR MB", "perplexity", "vs fp32"]
    rows = []
    for name, row in report["models"].items():
        rows.append(
            [
                name,
                row["weights"],
                f"{row['ir_mb']:.0f}" if row["ir_mb"] is not None else "-",
                f"{row['perplexity']:.3f}",
                f"{row['ratio_vs_fp32']:.3f}x" if row["ratio_vs_fp32"] is not None else "-",
            ]
        )
    return header, rows


def draw_quality_chart(report: dict[str, Any], path: Path) -> None:
    """Perplexity (bars) and IR size (labels) per model."""
    names = list(report["models"])
    rows = report["models"]
    fig, axis = figure(figsize=(max(6, 1.6 * len(names)), 4))
    bars = axis.bar([rows[name]["weights"] for name in names], [rows[name]["perplexity"] for name in names])
    labels = [
        f"{rows[name]['perplexity']:.2f}" + (f"\n{rows[name]['ir_mb']:.0f} MB" if rows[name]["ir_mb"] else "")
        for name in names
    ]
    axis.bar_label(bars, labels=labels)
    axis.set_ylabel("perplexity (lower is better)")
    axis.set_title(f"perplexity on {report['text']['file']}, {report['text']['tokens']} tokens")
    axis.margins(y=0.2)
    save_figure(fig, path)
