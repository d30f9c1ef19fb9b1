"""``ovchat bench --scaling``: TTFT, decode speed and memory against prompt length.

The page's path (the ``ovchat`` engine) runs on each IR given (for example int8 and int4
exports of one model), llama.cpp on the GGUF they came from as the reference. Lengths go up
from 128 tokens; at each length every engine answers in turn (interleaved), and a worker's
resident memory after the reply is its memory at that context length.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ovchat.bench.prompts import LengthPrompts, context_length
from ovchat.bench.report import figure, median, save_figure
from ovchat.bench.speed import BenchPlan
from ovchat.bench.workers import WorkerPool
from ovchat.errors import OvchatError
from ovchat.machine import machine_facts
from ovchat.paths import cache_dir

SCALING_LENGTHS: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
QUICK_LENGTHS: tuple[int, ...] = (128, 1024, 4096)
SCALING_NEW_TOKENS = 32
# Room the chat template needs around the user's text.
TEMPLATE_ROOM = 64


def parse_lengths(text: str) -> list[int]:
    """``--lengths``: comma-separated prompt lengths in tokens, each at least 16."""
    try:
        lengths = [int(part) for part in text.split(",")]
    except ValueError:
        raise OvchatError(f"--lengths {text!r}: expected whole numbers of tokens, e.g. 64,1024") from None
    if any(length < 16 for length in lengths):
        raise OvchatError(f"--lengths {text!r}: every length must be at least 16 tokens")
    return sorted(set(lengths))


def scaling_lengths(context: int, quick: bool, new_tokens: int, asked: Sequence[int] = ()) -> list[int]:
    """The prompt lengths (``asked``, or the default ones) that fit the model's context with room for the reply
    and the template."""
    wanted = asked or (QUICK_LENGTHS if quick else SCALING_LENGTHS)
    return [length for length in wanted if length + new_tokens + TEMPLATE_ROOM <= context]


def scaling_labels(
    irs: Sequence[Path], with_llamacpp: bool, variants: dict[str, dict[str, str]] | None = None
) -> dict[str, tuple[str, Path, dict[str, str]]]:
    """Row label -> (engine, IR, OpenVINO properties): ``ovchat`` on each IR, named after its folder, then
    each ``ovchat:NAME`` variant on each IR, then llama.cpp."""
    labels: dict[str, tuple[str, Path, dict[str, str]]] = {}
    for ir in irs:
        label = f"ovchat {ir.name}"
        if label in labels:
            raise OvchatError(f"{ir} is given twice")
        labels[label] = ("ovchat", ir, {})
    for variant, config in (variants or {}).items():
        for ir in irs:
            labels[f"{variant} {ir.name}"] = ("ovchat", ir, config)
    if with_llamacpp:
        labels["llamacpp"] = ("llamacpp", irs[0], {})
    return labels


def run_scaling(
    plan: BenchPlan,
    irs: Sequence[Path],
    quick: bool,
    progress: Callable[[str], None] = lambda message: None,
    asked_lengths: Sequence[int] = (),
) -> dict[str, Any]:
    """Measure every IR (and llama.cpp when ``plan`` has it) at each prompt length (``asked_lengths`` or the
    default ones)."""
    rounds = 1 if quick else 2
    context = min(context_length(ir) for ir in irs)
    lengths = scaling_lengths(context, quick, SCALING_NEW_TOKENS, asked_lengths)
    if not lengths:
        raise OvchatError(f"the context ({context} tokens) is too small for a scaling run at these lengths")
    labels = scaling_labels(irs, "llamacpp" in plan.engines, plan.variants)
    rows: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    with WorkerPool(cache_dir() / "bench" / ("scaling-" + time.strftime("%Y%m%d-%H%M%S")), progress) as pool:
        for label, (engine, ir, config) in labels.items():
            pool.start(label, partial(plan.worker, label, engine=engine, ir=ir, config=config))
        prompts = LengthPrompts(irs[0])
        pool.warm_up(*prompts.chat(lengths[0]))
        for length in lengths:
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in pool.workers}
            for round_index in range(rounds):
                messages, prompt = prompts.chat(length)
                for label, worker in pool.workers.items():
                    progress(f"{length} tokens, round {round_index + 1}/{rounds}: {label}")
                    runs[label].append(worker.run(messages, prompt, SCALING_NEW_TOKENS))
            for label, worker in pool.workers.items():
                rows[label].append(
                    {
                        "length": length,
                        "prompt_tokens": median([run["prompt_tokens"] for run in runs[label]]),
                        "ttft_s": median([run["ttft_s"] for run in runs[label]]),
                        "decode_tok_s": median([run["decode_tok_s"] for run in runs[label]]),
                        "rss_mb": worker.ask({"op": "stats"})["rss_mb"],
                        "runs": runs[label],
                    }
                )
    return {
        "machine": machine_facts(plan.threads),
        "models": {label: str(ir) for label, (_, ir, _) in labels.items()},
        "settings": {
            "rounds": rounds,
            "new_tokens": SCALING_NEW_TOKENS,
            "lengths": lengths,
            "greedy": True,
            "variants": plan.variants,
        },
        "engines": rows,
        "skipped": plan.notes,
    }


def format_scaling_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per engine and length: prompt tokens, TTFT, decode speed, memory."""
    header = ["engine", "prompt tokens", "TTFT ms", "decode tok/s", "memory MB"]
    rows = []
    for label, points in report["engines"].items():
        for point in points:
            ttft = point["ttft_s"]
            decode = point["decode_tok_s"]
            rows.append(
                [
                    label,
                    f"{point['prompt_tokens']:.0f}",
                    f"{ttft * 1000:.0f}" if ttft is not None else "-",
                    f"{decode:.1f}" if decode is not None else "-",
                    f"{point['rss_mb']:.0f}",
                ]
            )
    return header, rows


def draw_scaling_chart(report: dict[str, Any], path: Path) -> None:
    """TTFT, decode speed and memory against prompt length, one line per engine."""
    fig, axes = figure(1, 3, figsize=(14, 4.2))
    panels = [
        ("TTFT, s (lower is better)", lambda point: point["ttft_s"]),
        ("decode tok/s after that prompt (higher is better)", lambda point: point["decode_tok_s"]),
        ("resident memory, MB", lambda point: point["rss_mb"]),
    ]
    for axis, (title, value) in zip(axes, panels, strict=True):
        for label, points in report["engines"].items():
            xs = [point["prompt_tokens"] for point in points if value(point) is not None]
            axis.plot(xs, [value(point) for point in points if value(point) is not None], marker="o", label=label)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("prompt tokens")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    machine = report["machine"]
    fig.suptitle(f"ovchat bench --scaling · {machine['cpu']} · {machine['threads']} threads")
    save_figure(fig, path)
