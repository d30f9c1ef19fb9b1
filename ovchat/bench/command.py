"""``ovchat bench``: its flags and what the command does with them (cli.py only dispatches here)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ovchat.errors import OvchatError
from ovchat.extras import require_export_extra


def add_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument(
        "-m", "--model", type=Path, action="append",
        help="an IR folder (default: the default model); repeat it for --scaling and --quality",
    )  # fmt: skip
    bench.add_argument(
        "--engines",
        help="comma-separated subset of ovchat,optimum,genai,llamacpp,pytorch; with --concurrency, of "
        "serve,serve-thread,lock,llamacpp,llama-server,in-process",
    )
    bench.add_argument(
        "--variant", action="append", metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="one more ovchat row with these OpenVINO properties, e.g. bf16:INFERENCE_PRECISION_HINT=bf16",
    )  # fmt: skip
    mode = bench.add_mutually_exclusive_group()
    mode.add_argument("--scaling", action="store_true", help="TTFT, decode speed and memory against prompt length")
    bench.add_argument(
        "--lengths", metavar="N[,N...]",
        help="--scaling: these prompt lengths in tokens (default 128 to 4096); e.g. 64,1024 to compare exports "
        "and --variant rows on decode and on reading a long prompt",
    )  # fmt: skip
    mode.add_argument("--quality", action="store_true", help="perplexity of each --model on a text ovchat ships")
    mode.add_argument(
        "--decoding", action="store_true",
        help="plain decoding against prompt lookup (and --draft-model) on prompts a reply copies from and open ones",
    )  # fmt: skip
    bench.add_argument("--draft-model", type=Path, metavar="FOLDER", help="--decoding: add a row for this draft model")
    mode.add_argument(
        "--logprobs", action="store_true",
        help="what token log-probabilities cost: replies with them off, with 5 and with 20 alternatives per token",
    )  # fmt: skip
    mode.add_argument(
        "--concurrency", metavar="N[,N...]",
        help="clients at once, e.g. 1,2,4,8: ovchat serve against the one-reply lock and llama.cpp's server over HTTP",
    )  # fmt: skip
    mode.add_argument(
        "--synthetic", metavar="SIZE[,SIZE...]",
        help="random weights in public checkpoints' shapes (smollm2-135m, qwen2.5-0.5b, llama3.2-1b, qwen2.5-1.5b; "
        "several comma-separated run one after another into one report), built once: ovchat and openvino-genai on "
        "each export against llama.cpp's llama-bench and the memory-bandwidth roofline; --plot draws decode "
        "against model size",
    )  # fmt: skip
    mode.add_argument(
        "--synthetic-report", type=Path, action="append", metavar="PATH",
        help="a report --synthetic wrote before; repeat it to combine sizes measured at different times on one "
        "CPU into one report and, with --plot, one chart (nothing is measured)",
    )  # fmt: skip
    bench.add_argument(
        "--build-llamacpp", action="store_true",
        help="build llama.cpp's own llama-bench and llama-server from the pinned llama-cpp-python's sources "
        "(CMake, about 10 minutes, once) for --synthetic and --concurrency",
    )  # fmt: skip
    bench.add_argument("--quick", action="store_true", help="fewer rounds, fewer tokens (under 3 minutes)")
    bench.add_argument("--threads", type=int, help="CPU threads for every engine (default: all cores)")
    # --json is the old spelling, kept working; `ask --json` is a flag, so the path got its own name.
    bench.add_argument(
        "--report", "--json", dest="report", type=Path, metavar="PATH",
        help="write the JSON report here (default: $OVCHAT_HOME/bench/)",
    )  # fmt: skip
    bench.add_argument("--plot", type=Path, metavar="PATH", help="draw a PNG chart here")
    bench.add_argument(
        "--llama-server", type=Path, metavar="PATH",
        help="llama.cpp's llama-server binary, a --concurrency target (default: $OVCHAT_LLAMA_SERVER or the PATH)",
    )  # fmt: skip


def run(args: argparse.Namespace, models: list[Path]) -> int:
    """The side-by-side bench (default), or the --scaling or --quality run, on ``models``."""
    from rich.console import Console
    from rich.markup import escape

    from ovchat.bench.report import print_table, write_json

    if not (args.scaling or args.quality) and len(models) > 1:
        raise OvchatError("give one --model, or several with --scaling or --quality")
    if args.lengths and not args.scaling:
        raise OvchatError("--lengths applies to --scaling only")
    if args.variant and args.quality:
        raise OvchatError("--variant applies to the speed benches, not to --quality")
    if not (args.concurrency or args.decoding or args.logprobs):  # these two run Engine.stream only
        # Their reference prompts come from the Hugging Face tokenizer, and --quality reads logits through
        # optimum-intel and PyTorch.
        require_export_extra("ovchat bench without --concurrency")
    console = Console(stderr=True, highlight=False)
    started = time.perf_counter()
    if args.concurrency:
        kind, report, title, header, rows = _concurrency(args, models, console)
    elif args.synthetic or args.synthetic_report:
        kind, report, title, header, rows = _synthetic(args, console)
    elif args.quality:
        kind, report, title, header, rows = _quality(models, console)
    elif args.decoding:
        from ovchat.bench.decoding import decoding_bench

        kind, report, title, header, rows = decoding_bench(args, models, console)
    elif args.logprobs:
        from ovchat.bench.logprobs import logprobs_bench

        kind, report, title, header, rows = logprobs_bench(args, models, console)
    else:
        from ovchat.bench.speed import plan_bench, source_checkpoint

        engines = [name.strip() for name in args.engines.split(",")] if args.engines else None
        if args.scaling and engines is None:
            engines = ["ovchat", "llamacpp"]
        plan = plan_bench(models[0], engines, args.quick, args.threads, source_checkpoint, args.variant or ())
        for name, why in plan.notes.items():
            console.print(f"[yellow]skipped {name}[/yellow]: {escape(why)}")
        if args.scaling:
            kind, report, title, header, rows = _scaling(plan, models, args.quick, args.lengths, console)
        else:
            kind, report, title, header, rows = _side_by_side(plan, console)
    report["seconds"] = time.perf_counter() - started
    print_table(title, header, rows)
    path = write_json(report, args.report, kind)
    if kind == "concurrency":
        from ovchat.bench.concurrency import describe_goals

        for line in describe_goals(report):
            console.print(line)
    console.print(f"JSON: {path}  ({report['seconds']:.0f} s)")
    if args.plot:
        _draw(kind, report, args.plot)
        console.print(f"Chart: {args.plot}")
    return 0


Outcome = tuple[str, dict[str, Any], str, list[str], list[list[str]]]


def _side_by_side(plan: Any, console: Any) -> Outcome:
    from ovchat.bench.report import TABLE_HEADER, format_table
    from ovchat.bench.speed import run_bench

    with console.status("starting") as status:
        report = run_bench(plan, progress=status.update)
    title = f"{plan.ir.name} · {plan.threads} threads · medians of {plan.rounds} rounds · (ratio to llama.cpp)"
    overhead = report["engines"].get("ovchat", {}).get("streaming_overhead")
    if overhead is not None:
        title += f" · streaming costs {overhead:+.1%} per token against the backend's own C++ loop"
    return "bench", report, title, TABLE_HEADER, format_table(report)


def _scaling(plan: Any, models: list[Path], quick: bool, lengths: str | None, console: Any) -> Outcome:
    from ovchat.bench.scaling import format_scaling_table, parse_lengths, run_scaling

    asked = parse_lengths(lengths) if lengths else []
    with console.status("starting") as status:
        report = run_scaling(plan, models, quick, progress=status.update, asked_lengths=asked)
    title = f"{plan.threads} threads · medians of {report['settings']['rounds']} rounds"
    return ("scaling", report, title, *format_scaling_table(report))


def _concurrency(args: argparse.Namespace, models: list[Path], console: Any) -> Outcome:
    from ovchat.bench.concurrency import (
        TARGETS,
        format_concurrency_table,
        llama_server_binary,
        parse_levels,
        run_concurrency,
        unavailable_targets,
    )
    from ovchat.model_folder import is_complete
    from ovchat.paths import data_home

    if len(models) > 1 or args.variant or args.threads:
        raise OvchatError("--concurrency takes one --model, and no --variant or --threads (servers use every core)")
    if not is_complete(models[0]):
        raise OvchatError(f"{models[0]} is not an exported model folder")
    levels = parse_levels(args.concurrency)
    targets = [name.strip() for name in args.engines.split(",")] if args.engines else list(TARGETS)
    unknown = [name for name in targets if name not in TARGETS]
    if unknown:
        raise OvchatError(f"unknown target {unknown[0]!r} for --concurrency; choose from {', '.join(TARGETS)}")
    if args.llama_server is not None and not args.llama_server.is_file():
        raise OvchatError(f"--llama-server {args.llama_server}: no such file")
    llama_server = llama_server_binary(args.llama_server)
    for name, why in unavailable_targets(models[0], targets, llama_server).items():
        console.print(f"[yellow]skipped {name}[/yellow]: {why}")
        targets.remove(name)
    logs = data_home() / "bench" / "servers"
    with console.status("starting") as status:
        report = run_concurrency(models[0], levels, targets, args.quick, logs, llama_server, progress=status.update)
    settings = report["settings"]
    title = (
        f"{models[0].name} · {report['machine']['cpu']} · greedy, {settings['max_tokens']} new tokens · "
        f"medians of {settings['rounds']} rounds"
    )
    return ("concurrency", report, title, *format_concurrency_table(report))


def _synthetic(args: argparse.Namespace, console: Any) -> Outcome:
    import os

    from ovchat.bench.report import print_table
    from ovchat.bench.sizes import (
        combine_synthetic_reports,
        format_synthetic_table,
        parse_sizes,
        read_synthetic_reports,
        run_synthetic_sizes,
        synthetic_reports,
        synthetic_title,
    )

    flag = "--synthetic-report" if args.synthetic_report else "--synthetic"
    if args.model or args.engines or args.variant:
        raise OvchatError(f"{flag} needs no --model, --engines or --variant: it brings its own models")
    if args.synthetic_report:
        if args.build_llamacpp or args.quick or args.threads:
            raise OvchatError("--synthetic-report measures nothing: no --build-llamacpp, --quick or --threads")
        report = combine_synthetic_reports(read_synthetic_reports(args.synthetic_report))
    else:
        sizes = parse_sizes(args.synthetic)
        from rich.console import Console

        from ovchat.bench.llamacpp_native import cached_tools, ensure_llamacpp_tools
        from ovchat.export.logs import library_output_to_log

        # The exports and the llama.cpp build print pages of their own; they go to a log, as the export's do.
        with (
            library_output_to_log(not args.verbose, "bench-synthetic") as (user_stream, _),
            Console(file=user_stream, highlight=False).status("starting") as status,
        ):
            tools = ensure_llamacpp_tools(progress=status.update) if args.build_llamacpp else cached_tools()
            threads = args.threads or os.cpu_count() or 1
            report = run_synthetic_sizes(sizes, threads, args.quick, tools, status.update)
    per_size = synthetic_reports(report)
    for size_report in per_size:
        for name, why in size_report.get("skipped", {}).items():
            console.print(f"[yellow]skipped {name}[/yellow] ({size_report['model']['size']}): {why}")
    # A table per size: run() prints the one returned, so the sizes before the last are printed here, in order.
    for size_report in per_size[:-1]:
        print_table(synthetic_title(size_report), *format_synthetic_table(size_report))
    return ("synthetic", report, synthetic_title(per_size[-1]), *format_synthetic_table(per_size[-1]))


def _quality(models: list[Path], console: Any) -> Outcome:
    from ovchat.bench.quality import format_quality_table, run_quality
    from ovchat.bench.speed import source_checkpoint

    with console.status("starting") as status:
        report = run_quality(models, source_checkpoint(models[0]), progress=status.update)
    text = report["text"]
    title = f"perplexity on {text['file']} ({text['tokens']} tokens, windows of {text['window']}) · lower is better"
    return ("quality", report, title, *format_quality_table(report))


def _draw(kind: str, report: dict[str, Any], path: Path) -> None:
    if kind == "concurrency":
        from ovchat.bench.concurrency import draw_concurrency_chart

        draw_concurrency_chart(report, path)
    elif kind == "scaling":
        from ovchat.bench.scaling import draw_scaling_chart

        draw_scaling_chart(report, path)
    elif kind == "quality":
        from ovchat.bench.quality import draw_quality_chart

        draw_quality_chart(report, path)
    elif kind == "synthetic":
        from ovchat.bench.sizes import draw_synthetic_chart, synthetic_reports

        draw_synthetic_chart(synthetic_reports(report), path)
    else:
        from ovchat.bench.report import draw_chart

        draw_chart(report, path)
