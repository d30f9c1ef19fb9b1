"""``ovchat bench``: the page's path against its peers, side by side in one run.

One worker process per engine (:mod:`ovchat.bench.runners`). Their runs are interleaved round by
round, so a noisy moment on the machine hits every engine alike; the report gives medians and
every figure as a ratio to llama.cpp's.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ovchat.bench.prompts import PROMPT_KINDS, PromptMaker
from ovchat.bench.report import median, ratio
from ovchat.bench.runners import ENGINE_NAMES, parse_ov_config
from ovchat.bench.workers import Worker, WorkerPool, rotated, safe_name
from ovchat.errors import OvchatError
from ovchat.machine import machine_facts
from ovchat.model_folder import is_complete, read_manifest, source_gguf
from ovchat.paths import cache_dir

RATIO_BASE = "llamacpp"
WARM_LOAD_ROUNDS = 3
# New tokens for the long prompt and its next turn: those rows measure reading, not decoding.
READ_NEW_TOKENS = 8


@dataclass(frozen=True)
class BenchPlan:
    ir: Path
    gguf: Path | None
    checkpoint: Path | None
    engines: tuple[str, ...]
    rounds: int
    new_tokens: int
    threads: int
    notes: dict[str, str] = field(default_factory=dict)
    # Extra "ovchat" rows with OpenVINO properties changed, by label ("ovchat:NAME"): ov_config tuning.
    variants: dict[str, dict[str, str]] = field(default_factory=dict)

    def worker(
        self, label: str, home: Path, engine: str | None = None, ir: Path | None = None, config: dict | None = None
    ) -> Worker:
        """The worker for the row ``label``: the engine it names, or ``ovchat`` for a variant ``ovchat:NAME``
        with that variant's OpenVINO properties; ``engine``, ``ir`` and ``config`` override them."""
        return Worker(
            label, engine or label.partition(":")[0], ir or self.ir, home, self.threads, gguf=self.gguf,
            checkpoint=self.checkpoint, ov_config=config if config is not None else self.variants.get(label, {}),
        )  # fmt: skip


def summarize(samples: dict[str, dict[str, list[dict[str, Any]]]], extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Medians per engine and their ratios to llama.cpp (None where llama.cpp did not run)."""
    engines: dict[str, Any] = {}
    for name, runs in samples.items():
        engines[name] = {
            "ttft_s": {kind: median([run["ttft_s"] for run in runs[kind]]) for kind in PROMPT_KINDS},
            "decode_tok_s": median([run["decode_tok_s"] for run in runs["short"]]),
            "prompt_tokens": {kind: median([run["prompt_tokens"] for run in runs[kind]]) for kind in PROMPT_KINDS},
            "new_tokens": median([run["new_tokens"] for run in runs["short"]]),
            **extra.get(name, {}),
            "runs": runs,
        }
    base = engines.get(RATIO_BASE)
    for figures in engines.values():
        figures["ratio_vs_llamacpp"] = {
            "ttft_s": {
                kind: ratio(figures["ttft_s"][kind], base["ttft_s"][kind] if base else None) for kind in PROMPT_KINDS
            },
            "decode_tok_s": ratio(figures["decode_tok_s"], base["decode_tok_s"] if base else None),
            "load_s": {
                kind: ratio(figures["load_s"].get(kind), base["load_s"].get(kind) if base else None)
                for kind in ("cold", "warm")
            },
            "peak_rss_mb": ratio(figures.get("peak_rss_mb"), base.get("peak_rss_mb") if base else None),
        }
    return engines


def run_bench(plan: BenchPlan, progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Measure every engine of ``plan``; the report as a JSON-ready dict."""
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {kind: [] for kind in PROMPT_KINDS} for name in plan.engines
    }
    extra: dict[str, dict[str, Any]] = {}
    streaming_costs: list[dict[str, float]] = []
    with WorkerPool(cache_dir() / "bench" / time.strftime("%Y%m%d-%H%M%S"), progress) as pool:
        for name in plan.engines:
            worker = pool.start(name, partial(plan.worker, name))
            extra[name] = {"load_s": {"cold": worker.load_s}}
        prompt_maker = PromptMaker(plan.ir)
        pool.warm_up(*prompt_maker.for_round(-1)["short"])
        workers = pool.workers
        for round_index in range(plan.rounds):
            prompts = prompt_maker.for_round(round_index)
            for name in rotated(list(workers), round_index):
                progress(f"round {round_index + 1}/{plan.rounds}: {name}")
                for kind, new_tokens in (
                    ("short", plan.new_tokens),
                    ("long", READ_NEW_TOKENS),
                    ("followup", READ_NEW_TOKENS),
                ):
                    messages, prompt = prompts[kind]
                    samples[name][kind].append(workers[name].run(messages, prompt, new_tokens, cold=kind != "followup"))
                if name == "ovchat":
                    command = {"op": "streaming_cost", "max_new_tokens": plan.new_tokens}
                    command.update(streamed=prompts["short"][0], bare=prompt_maker.for_round(round_index)["short"][0])
                    streaming_costs.append(workers[name].ask(command))
        if streaming_costs:
            extra["ovchat"]["streaming_overhead"] = streaming_overhead(streaming_costs)
        for name, worker in workers.items():
            extra[name]["peak_rss_mb"] = worker.ask({"op": "stats"})["peak_rss_mb"]
            worker.close()
        # Warm loads in rounds too: the first process after a pause also pays for the OS file cache.
        warm_loads: dict[str, list[float]] = {name: [] for name in plan.engines}
        for round_index in range(min(plan.rounds, WARM_LOAD_ROUNDS)):
            for name in plan.engines:
                progress(f"warm load {round_index + 1}: {name}")
                # In the same data folder as the first load: its compiled-model cache is full.
                again = plan.worker(name, pool.folder(name))
                warm_loads[name].append(again.load_s)
                again.close()
        for name, loads in warm_loads.items():
            extra[name]["load_s"].update(warm=median(loads), warm_runs=loads)
    return {
        "machine": machine_facts(plan.threads),
        "model": {"ir": str(plan.ir), "gguf": str(plan.gguf) if plan.gguf else None},
        "settings": {"rounds": plan.rounds, "new_tokens": plan.new_tokens, "greedy": True, "variants": plan.variants},
        "engines": summarize(samples, extra),
        "skipped": plan.notes,
    }


def streaming_overhead(costs: list[dict[str, float]]) -> float | None:
    """How much longer a token takes through Engine.stream than from the bare loop: 0.03 is 3%."""
    streamed = median([cost["streamed_s_per_token"] for cost in costs])
    bare = median([cost["bare_s_per_token"] for cost in costs])
    return streamed / bare - 1 if streamed is not None and bare else None


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE[,KEY=VALUE...]`` as (``ovchat:NAME``, properties)."""
    name, sep, pairs = text.partition(":")
    if not sep or not name.strip() or not safe_name(name.strip()) == name.strip():
        raise OvchatError(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE], NAME of letters, digits, -_.")
    try:
        return f"ovchat:{name.strip()}", parse_ov_config(pairs.split(","))
    except ValueError as error:
        raise OvchatError(f"--variant {text!r}: {error}") from None


def plan_bench(
    ir: Path,
    engines: Sequence[str] | None,
    quick: bool,
    threads: int | None,
    checkpoint_dir: Callable[[Path], Path | None],
    variants: Sequence[str] = (),
) -> BenchPlan:
    """Which engines can run on this IR; each one that cannot gets a note instead of a failure."""
    if not is_complete(ir):
        raise OvchatError(f"{ir} is not an exported model folder")
    wanted = tuple(engines or ENGINE_NAMES)
    unknown = [name for name in wanted if name not in ENGINE_NAMES]
    if unknown:
        raise OvchatError(f"unknown engine {unknown[0]!r}; choose from {', '.join(ENGINE_NAMES)}")
    gguf = source_gguf(ir)
    notes: dict[str, str] = {}
    if "llamacpp" in wanted:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            notes["llamacpp"] = "llama-cpp-python is not installed (pip install -e '.[bench]')"
        if gguf is None or not gguf.is_file():
            notes["llamacpp"] = "the model was not exported from a GGUF file, so llama.cpp has nothing to load"
    checkpoint = checkpoint_dir(ir) if "pytorch" in wanted else None
    if "pytorch" in wanted and checkpoint is None:
        notes["pytorch"] = "no transformers checkpoint of the same weights was found"
    parsed = dict(parse_variant(text) for text in variants)
    return BenchPlan(
        ir=ir,
        gguf=gguf,
        checkpoint=checkpoint,
        engines=tuple(name for name in wanted if name not in notes) + tuple(parsed),
        variants=parsed,
        rounds=2 if quick else 5,
        new_tokens=64 if quick else 128,
        threads=threads or os.cpu_count() or 1,
        notes=notes,
    )


def source_checkpoint(ir: Path) -> Path | None:
    """The fp32 checkpoint behind ``ir``: its source folder, or the GGUF dequantized once into the cache."""
    source = (read_manifest(ir) or {}).get("source", {})
    location = Path(source.get("location", ""))
    if source.get("kind") == "checkpoint" and location.is_dir():
        return location
    if source.get("kind") != "gguf" or not location.is_file():
        return None
    target = cache_dir() / "bench" / "checkpoints" / f"{location.stem}-{source.get('source_sha256', '')[:12]}"
    if not target.is_dir():
        from ovchat.export.gguf import gguf_to_checkpoint, inspect_gguf

        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        gguf_to_checkpoint(location, staging, inspect_gguf(location))
        staging.rename(target)  # complete or absent, never half-written
    return target
