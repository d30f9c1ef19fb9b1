"""``ovchat bench --synthetic SIZE[,SIZE...]``: speed at real models' sizes, on random weights, against native
llama.cpp and the machine's memory-bandwidth roofline.

The synthetic model (:mod:`ovchat.bench.synthetic`) holds the same weights as a Q8_0 and a Q4_0 GGUF and as
their IR exports: each GGUF with its blocks kept, the checkpoint as int8 and int4. Rows at equal weight bits
are compared with llama.cpp on the GGUF of those bits: the kept Q8_0 blocks and int8 against Q8_0, the kept
Q4_0 blocks and int4 against Q4_0. The ovchat and genai rows run in worker processes, interleaved round by
round; llama.cpp's own ``llama-bench`` (built by :mod:`ovchat.bench.llamacpp_native`) runs after them, each
GGUF in turn. Every decode speed is also given as a fraction of bandwidth / bytes read per token
(:mod:`ovchat.bench.roofline`).

Several sizes run one after another into one report, ``{"sizes": [...], "reports": [...]}``, whose
``reports`` are each one size's report as a single-size run wrote it (:func:`synthetic_reports` reads both
shapes). Reports taken at different times combine into one when they were taken on the same CPU with the same
threads, and :func:`draw_synthetic_chart` draws decode speed against model size with the roofline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ovchat.bench.prompts import LengthPrompts
from ovchat.bench.report import figure, median, ratio, save_figure
from ovchat.bench.workers import Worker, WorkerPool, rotated
from ovchat.errors import OvchatError
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


def parse_sizes(text: str) -> list[str]:
    """``--synthetic``'s comma-separated sizes, in the order given; an unknown or repeated one is refused."""
    sizes = [part.strip() for part in text.split(",")]
    offered = public_sizes()
    for size in sizes:
        if size not in offered:
            raise OvchatError(f"--synthetic {size!r}: choose one or more of {', '.join(offered)}, comma-separated")
    repeated = sorted({size for size in sizes if sizes.count(size) > 1})
    if repeated:
        raise OvchatError(f"--synthetic names {', '.join(repeated)} more than once")
    return sizes


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


# --- several sizes -----------------------------------------------------------------------------------------


def run_synthetic_sizes(
    sizes: Sequence[str],
    threads: int,
    quick: bool,
    llamacpp_tools: Any | None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """:func:`run_synthetic` on each size in turn; one report holding each size's
    (:func:`combine_synthetic_reports`)."""
    reports = []
    for index, size in enumerate(sizes):
        prefix = f"{size} ({index + 1}/{len(sizes)}): " if len(sizes) > 1 else ""
        started = time.perf_counter()
        report = run_synthetic(size, threads, quick, llamacpp_tools, partial(_prefixed, progress, prefix))
        # Each size's report keeps its own time, as a single-size report kept the run's.
        report["seconds"] = time.perf_counter() - started
        reports.append(report)
    return combine_synthetic_reports(reports)


def _prefixed(progress: Callable[[str], None], prefix: str, message: str) -> None:
    progress(prefix + message)


def combine_synthetic_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Single-size reports as one, smallest model first: ``{"sizes": [...], "reports": [...]}``.

    They must come from one CPU at one thread count (:func:`common_machine`), each size once."""
    if not reports:
        raise OvchatError("no --synthetic report to combine")
    common_machine(reports)
    ordered = sorted(reports, key=lambda report: report["model"]["parameters"])
    sizes = [report["model"]["size"] for report in ordered]
    repeated = sorted({size for size in sizes if sizes.count(size) > 1})
    if repeated:
        raise OvchatError(f"{', '.join(repeated)} is in more than one report; give each size once")
    return {"sizes": sizes, "reports": ordered}


def synthetic_reports(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each size's report from a ``--synthetic`` report of either shape: several sizes' (``reports``), or one
    size's, as single-size runs wrote them before (docs/bench-synthetic-qwen2.5-0.5b.json)."""
    reports = data.get("reports") if "reports" in data else [data]
    if not isinstance(reports, list) or not reports or not all(_is_size_report(report) for report in reports):
        raise OvchatError("not an ovchat bench --synthetic report")
    return reports


def _is_size_report(report: Any) -> bool:
    return isinstance(report, dict) and all(key in report for key in ("machine", "model", "bandwidth", "engines"))


def read_synthetic_reports(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Every size's report in the JSON files at ``paths`` (either shape, see :func:`synthetic_reports`)."""
    reports = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise OvchatError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise OvchatError(f"{path} is not a readable JSON report: {error}") from None
        try:
            reports += synthetic_reports(data if isinstance(data, dict) else {})
        except OvchatError as error:
            raise OvchatError(f"{path}: {error}") from None
    return reports


def common_machine(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The CPU and thread count every report was taken with; reports from different CPUs or thread counts are
    refused, since their speeds and rooflines are not the same machine's and cannot share one chart."""
    for key, what in (("cpu", "CPUs"), ("threads", "thread counts")):
        taken: dict[Any, list[str]] = {}
        for report in reports:
            taken.setdefault(report["machine"].get(key), []).append(report["model"]["size"])
        if len(taken) > 1:
            described = "; ".join(f"{value}: {', '.join(sizes)}" for value, sizes in taken.items())
            raise OvchatError(f"the reports were taken with different {what} ({described}); combine one machine's")
    return {"cpu": reports[0]["machine"].get("cpu"), "threads": reports[0]["machine"].get("threads")}


# Line colours by engine (ovchat red, as in the side-by-side chart) and marker and line style by weights: the
# GGUF llama.cpp reads, its blocks kept in an IR, or the checkpoint converted to int8/int4 by NNCF.
CHART_COLOURS = {"ovchat": "#d62728", "genai": "#1f77b4", "llama-bench": "#2ca02c"}
KEPT_BLOCKS_STYLE = {"marker": "o", "linestyle": "-"}
CONVERTED_STYLE = {"marker": "s", "linestyle": "-."}
GGUF_STYLE = {"marker": "^", "linestyle": "-"}


def draw_synthetic_chart(reports: Sequence[dict[str, Any]], path: Path) -> None:
    """Decode tok/s against model parameters (log axes), one panel per weight bits: a line per row label
    (engine and weights) across the sizes, and the roofline as a dashed line, in a PNG.

    The roofline of a size is the highest of its rows' at those bits (bandwidth over the fewest bytes any of
    the formats reads a token): no line in the panel can pass it. Each size's own bandwidth measurement is used.
    """
    from matplotlib.ticker import FuncFormatter, NullLocator

    machine = common_machine(reports)
    ordered = sorted(reports, key=lambda report: report["model"]["parameters"])
    parameters = [report["model"]["parameters"] for report in ordered]
    fig, axes = figure(1, len(EQUAL_BITS), figsize=(13, 5.2))
    for axis, (gguf_type, ir_keys) in zip(axes, EQUAL_BITS, strict=True):
        styles = {gguf_type: GGUF_STYLE, ir_keys[0]: KEPT_BLOCKS_STYLE, ir_keys[1]: CONVERTED_STYLE}
        labels = dict.fromkeys(
            label for report in ordered for label, row in report["engines"].items() if row["weights"] in styles
        )
        for label in labels:
            points = _decode_points(ordered, label)
            if points:
                row = next(report["engines"][label] for report in ordered if label in report["engines"])
                colour = CHART_COLOURS.get(row["engine"], "#7f7f7f")
                axis.plot(*zip(*points, strict=True), label=label, color=colour, **styles[row["weights"]])
        roofline = _roofline_points(ordered, set(styles))
        if roofline:
            # A bar at each size as well: a chart of one size has no line to show.
            axis.plot(
                *zip(*roofline, strict=True),
                color="black",
                linestyle="--",
                marker="_",
                markersize=16,
                label="roofline (read bandwidth)",
            )
        bits = gguf_type.removeprefix("Q").split("_")[0]
        axis.set_title(f"{bits}-bit weights: llama.cpp's {gguf_type}, its blocks kept ({ir_keys[0]}), {ir_keys[1]}")
        axis.set_xscale("log")
        axis.set_yscale("log")
        # One tick per size, named, with the bandwidth its run measured; log scales' own minor ticks would print
        # unlabelled powers of ten.
        axis.set_xticks(parameters, [_size_tick(report) for report in ordered])
        axis.xaxis.set_minor_locator(NullLocator())
        # Plain numbers on the log y axis (not 2x10^1): every power of ten, and 2 and 5 times one between them.
        axis.yaxis.set_major_formatter(FuncFormatter(_plain_number))
        axis.yaxis.set_minor_formatter(FuncFormatter(_plain_number_at_2_or_5))
        axis.set_xlabel("model parameters")
        axis.set_ylabel("decode tok/s (higher is better)")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8, loc="lower left")  # the lines fall from the upper left: that corner stays clear
    runs = {(report["settings"]["rounds"], report["settings"]["new_tokens"]) for report in ordered}
    settings = (
        "{} round(s) of {} new tokens".format(*runs.pop())
        if len(runs) == 1
        else "rounds differ: " + ", ".join(f"{r['model']['size']} {_rounds(r)}" for r in ordered)
    )
    fig.suptitle(
        f"ovchat bench --synthetic: decode against model size · every size on {machine['cpu']}, "
        f"{machine['threads']} threads\n"
        f"roofline = read bandwidth (measured in each size's run) / bytes a token · {settings}"
    )
    save_figure(fig, path)


def _decode_points(reports: Sequence[dict[str, Any]], label: str) -> list[tuple[int, float]]:
    """(parameters, decode tok/s) of row ``label`` in each report that measured it."""
    points = []
    for report in reports:
        row = report["engines"].get(label)
        if row is not None and row["decode_tok_s"] is not None:
            points.append((report["model"]["parameters"], row["decode_tok_s"]))
    return points


def _roofline_points(reports: Sequence[dict[str, Any]], weights: set[str]) -> list[tuple[int, float]]:
    """(parameters, the highest roofline tok/s of the rows on ``weights``) of each report that has such rows."""
    points = []
    for report in reports:
        rooflines = [
            row["roofline"]["roofline_tok_s"] for row in report["engines"].values() if row["weights"] in weights
        ]
        if rooflines:
            points.append((report["model"]["parameters"], max(rooflines)))
    return points


def _plain_number(value: float, _position: int | None = None) -> str:
    return f"{value:g}"


def _plain_number_at_2_or_5(value: float, _position: int | None = None) -> str:
    return f"{value:g}" if f"{value:e}"[0] in "25" else ""


def _size_tick(report: dict[str, Any]) -> str:
    model = report["model"]
    return f"{model['size']}\n{model['parameters'] / 1e9:.2f}B\n{report['bandwidth']['gb_s']:.1f} GB/s"


def _rounds(report: dict[str, Any]) -> str:
    return f"{report['settings']['rounds']}x{report['settings']['new_tokens']}"
