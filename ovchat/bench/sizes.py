"""``ovchat bench --synthetic SIZE``: speed at a real model's size, on random weights, against native llama.cpp
and the machine's memory-bandwidth roofline.

The synthetic model (:mod:`ovchat.bench.synthetic`) holds the same weights as a Q8_0 and a Q4_0 GGUF and as
their IR exports: each GGUF with its blocks kept, the checkpoint as int8 and int4. Rows at equal weight bits
are compared with llama.cpp on the GGUF of those bits: the kept Q8_0 blocks and int8 against Q8_0, the kept
Q4_0 blocks and int4 against Q4_0. The ovchat and genai rows run in worker processes, interleaved round by
round; llama.cpp's own ``llama-bench`` (built by :mod:`ovchat.bench.llamacpp_native`) runs after them, each
GGUF in turn. Every decode speed is also given as a fraction of bandwidth / bytes read per token
(:mod:`ovchat.bench.roofline`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from ovchat.bench.prompts import LengthPrompts
from ovchat.bench.report import median, ratio
from ovchat.bench.workers import Worker, WorkerPool, rotated
from ovchat.machine import machine_facts
from ovchat.paths import cache_dir

# (GGUF type, the IRs of the same weight bits): the kept blocks, and the optimum route's compression.
EQUAL_BITS: tuple[tuple[str, tuple[str, ...]], ...] = (("Q8_0", ("gguf-Q8_0", "int8")), ("Q4_0", ("gguf-Q4_0", "int4")))
IR_ENGINES = ("ovchat", "genai")
PROMPT_TOKENS = 1024  # TTFT is compared on a prompt of about this many tokens, llama-bench's pp1024
SHORT_PROMPT_TOKENS = 64  # decode is measured after a short prompt, as llama-bench's tg runs from an empty one


def public_sizes() -> list[str]:
    """The sizes a user can ask for: the named public checkpoints (the test sizes are left out)."""
    from ovchat.bench.synthetic import SYNTHETIC_SIZES

    return [name for name, config in SYNTHETIC_SIZES.items() if config.public_parameters]


def run_synthetic(
    size: str,
    threads: int,
    quick: bool,
    llamacpp_tools: Any | None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Build (once) and measure the synthetic ``size``; the report as a JSON-ready dict."""
    from ovchat.bench.roofline import (
        bytes_per_token_compiled,
        bytes_per_token_gguf,
        describe,
        describe_bandwidth,
        measure_bandwidth,
    )
    from ovchat.bench.synthetic import build_synthetic, default_synthetic_root

    def building(step: str, event: str, seconds: float | None) -> None:
        if event == "start":
            progress(f"building {size}: {step} (once; kept in {default_synthetic_root()})")

    model = build_synthetic(size, default_synthetic_root(), progress=building)
    rounds, new_tokens = (1, 64) if quick else (3, 128)
    context = SHORT_PROMPT_TOKENS + new_tokens // 2  # the KV cache read at the middle of the timed reply
    progress("measuring memory bandwidth")
    bandwidth = measure_bandwidth(threads)
    rows: dict[str, dict[str, Any]] = {}
    labels = {f"{engine} {ir_key}": (engine, ir_key) for ir_key in model.irs for engine in IR_ENGINES}
    with WorkerPool(cache_dir() / "bench" / f"synthetic-{size}-{time.strftime('%Y%m%d-%H%M%S')}", progress) as pool:
        for label, (engine, ir_key) in labels.items():
            pool.start(label, partial(Worker, label, engine, model.irs[ir_key], threads=threads))
        prompts = LengthPrompts(next(iter(model.irs.values())))
        pool.warm_up(*prompts.chat(SHORT_PROMPT_TOKENS))
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {label: {"short": [], "long": []} for label in labels}
        for round_index in range(rounds):
            short, long = prompts.chat(SHORT_PROMPT_TOKENS), prompts.chat(PROMPT_TOKENS)
            for label in rotated(list(labels), round_index):
                progress(f"round {round_index + 1}/{rounds}: {label}")
                runs[label]["short"].append(pool.workers[label].run(*short, new_tokens))
                runs[label]["long"].append(pool.workers[label].run(*long, 8))
        for label, (engine, ir_key) in labels.items():
            long_runs = runs[label]["long"]
            token_bytes = bytes_per_token_compiled(model.irs[ir_key], context)
            decode = median([run["decode_tok_s"] for run in runs[label]["short"]])
            rows[label] = {
                "engine": engine,
                "weights": ir_key,
                "decode_tok_s": decode,
                "new_tokens": median([run["new_tokens"] for run in runs[label]["short"]]),
                "prompt_tokens": median([run["prompt_tokens"] for run in long_runs]),
                "ttft_s": median([run["ttft_s"] for run in long_runs]),
                "roofline": describe(bandwidth, token_bytes, decode),
                "runs": runs[label],
            }
    for gguf_type, _ in EQUAL_BITS:
        if llamacpp_tools is None:
            continue
        from ovchat.bench.llamacpp_native import run_llama_bench

        gguf = model.ggufs[gguf_type]
        token_bytes = bytes_per_token_gguf(gguf, context)
        progress(f"llama-bench {gguf_type}")
        result = run_llama_bench(llamacpp_tools, gguf, threads, PROMPT_TOKENS, new_tokens, repetitions=rounds + 1)
        decode = result.tg.avg_ts if result.tg else None
        prompt_rate = result.pp.avg_ts if result.pp else None
        rows[f"llama-bench {gguf_type}"] = {
            "engine": "llama-bench",
            "weights": gguf_type,
            "decode_tok_s": decode,
            "new_tokens": new_tokens,
            "prompt_tokens": PROMPT_TOKENS,
            "ttft_s": PROMPT_TOKENS / prompt_rate if prompt_rate else None,
            "roofline": describe(bandwidth, token_bytes, decode),
            "llama_bench": result.to_dict(),
        }
    add_ratios(rows)
    return {
        "machine": machine_facts(threads),
        "model": {
            "size": size,
            "checkpoint": model.config.checkpoint,
            "parameters": model.parameters,
            "irs": {key: str(path) for key, path in model.irs.items()},
            "ggufs": {key: str(path) for key, path in model.ggufs.items()},
        },
        "settings": {
            "rounds": rounds,
            "new_tokens": new_tokens,
            "short_prompt_tokens": SHORT_PROMPT_TOKENS,
            "prompt_tokens": PROMPT_TOKENS,
            "roofline_context_tokens": context,
            "greedy": True,
        },
        "bandwidth": describe_bandwidth(bandwidth),
        "engines": rows,
        "skipped": {} if llamacpp_tools else {"llama-bench": "not built: pass --build-llamacpp (about 10 minutes)"},
    }


def add_ratios(rows: dict[str, dict[str, Any]]) -> None:
    """Each row's decode speed and TTFT as ratios to llama-bench on the GGUF of the same weight bits."""
    for gguf_type, ir_keys in EQUAL_BITS:
        base = rows.get(f"llama-bench {gguf_type}")
        for row in rows.values():
            if row["weights"] in (gguf_type, *ir_keys):
                row["vs_llamacpp"] = {
                    "decode_tok_s": ratio(row["decode_tok_s"], base["decode_tok_s"] if base else None),
                    "ttft_s": ratio(row["ttft_s"], base["ttft_s"] if base else None),
                }


def format_synthetic_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["engine", "weights", "decode tok/s", "vs llama.cpp", "TTFT ms", "vs llama.cpp", "MB/token", "roofline"]

    def number(value: float | None, digits: int, scale: float = 1.0) -> str:
        return f"{value * scale:.{digits}f}" if value is not None else "-"

    rows = []
    for label, row in report["engines"].items():
        ratios = row.get("vs_llamacpp", {})
        roofline = row["roofline"]
        rows.append(
            [
                label.split(" ")[0],
                row["weights"],
                number(row["decode_tok_s"], 1),
                number(ratios.get("decode_tok_s"), 2) + "x" if ratios.get("decode_tok_s") else "-",
                number(row["ttft_s"], 0, 1000),
                number(ratios.get("ttft_s"), 2) + "x" if ratios.get("ttft_s") else "-",
                number(roofline["bytes_per_token"]["total"], 0, 1e-6),
                number(roofline.get("fraction_of_roofline"), 0, 100) + "%",
            ]
        )
    return header, rows


def synthetic_title(report: dict[str, Any]) -> str:
    model, settings, bandwidth = report["model"], report["settings"], report["bandwidth"]
    return (
        f"{model['size']} ({model['parameters'] / 1e9:.2f}B parameters, random weights) · {report['machine']['cpu']} · "
        f"{report['machine']['threads']} threads · {settings['new_tokens']} new tokens · "
        f"roofline at {bandwidth['gb_s']:.1f} GB/s read"
    )
