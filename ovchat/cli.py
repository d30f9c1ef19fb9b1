"""The ``ovchat`` console script and the ``export_ir.py`` entry point.

Errors the user can fix (:class:`OvchatError`, bad flags) become one line on stderr
and exit code 2; ``--verbose`` shows the traceback and the libraries' logs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from ovchat.errors import OvchatError
from ovchat.paths import data_home

if TYPE_CHECKING:
    from ovchat.chat import Message
    from ovchat.engine import Engine
    from ovchat.settings import GenerationSettings

EXIT_USAGE = 2


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _quiet_libraries() -> None:
    """Hide the libraries' progress bars, warnings and info logs; ovchat reports its own steps."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # transformers reads these when it is first imported; importing it here would cost the commands
    # that never need it (chat and ask on the genai backend) most of a second.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "optimum", "nncf", "huggingface_hub", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def run_guarded(action: Callable[[], int], verbose: bool, prog: str) -> int:
    """Run ``action``; turn user errors into one stderr line and a non-zero exit."""
    if not verbose:
        _quiet_libraries()
    try:
        return action()
    except OvchatError as error:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def library_output_to_log(enabled: bool, name: str) -> Iterator[tuple[TextIO, Path | None]]:
    """Send everything the libraries print (Python and C++ alike) to a log file.

    Yields a stream on the real stderr for ovchat's own progress, and the log's path.
    The exporters print progress bars, tables and warnings from several layers, some
    from C++, so redirecting the file descriptors is the only way to keep the terminal clean.
    """
    if not enabled:
        yield sys.stderr, None
        return
    log_dir = data_home() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    user_stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8")
    with log_path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield user_stream, log_path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            user_stream.close()


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from ovchat.export import DEFAULT_WEIGHT_FORMAT, WEIGHT_FORMATS

    parser.add_argument(
        "source",
        nargs="?",
        help="a .gguf file, a Hugging Face checkpoint folder or a hub id (default: SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="output folder (default: $OVCHAT_HOME/models/<name>-<format>)"
    )
    parser.add_argument(
        "--weight-format",
        choices=WEIGHT_FORMATS,
        default=DEFAULT_WEIGHT_FORMAT,
        help=f"weight precision of the IR (default: {DEFAULT_WEIGHT_FORMAT})",
    )
    parser.add_argument("--group-size", type=int, help="int4 only: weights per quantization group, -1 per channel")
    parser.add_argument("--ratio", type=float, help="int4 only: share of layers in int4, the rest int8")
    parser.add_argument("--sym", action="store_true", help="int8/int4: symmetric quantization")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code to run"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and library logs")


def run_export(args: argparse.Namespace) -> int:
    print(export_with_progress(args))
    return 0


def export_with_progress(args: argparse.Namespace) -> Path:
    """Export as ``args`` say, with step lines on stderr; the new folder's path."""
    from rich.console import Console

    from ovchat.export import ExportOptions, execute_export, plan_export

    options = ExportOptions(
        weight_format=args.weight_format,
        group_size=args.group_size,
        ratio=args.ratio,
        sym=args.sym,
        trust_remote_code=args.trust_remote_code,
    )
    plan = plan_export(args.source, args.output, options, force=args.force)
    with library_output_to_log(not args.verbose, "export") as (user_stream, log_path):
        console = Console(file=user_stream, highlight=False)
        status = console.status("starting")

        def progress(step: str, event: str, seconds: float | None) -> None:
            if event == "start":
                status.update(f"{step} ...")
            else:
                console.print(f"  [green]✓[/green] {step:<9} {seconds:6.1f} s")

        console.print(f"Exporting {plan.source.name} ({plan.source.kind.value}) to {args.weight_format}: {plan.target}")
        try:
            with status:
                result = execute_export(plan, progress=progress)
        except Exception as error:
            if log_path and not isinstance(error, OvchatError):
                summary = (str(error).strip().splitlines() or [""])[0]
                raise OvchatError(
                    f"export failed: {type(error).__name__}: {summary} "
                    f"(library output in {log_path}; --verbose shows the traceback)"
                ) from error
            raise
        manifest = result.manifest
        size_mb = manifest["sizes"]["folder_bytes"] / 1e6
        console.print(
            f"Done in {manifest['export_seconds']:.1f} s: {result.path} ({size_mb:.0f} MB, "
            f"peak memory {manifest['peak_rss_mb']:.0f} MB)"
        )
        console.print(f"Smoke reply: {manifest['smoke']['reply']!r}")
    return result.path


def export_main(argv: Sequence[str] | None = None) -> int:
    """``export_ir.py``: convert a checkpoint or GGUF file to an OpenVINO IR folder."""
    parser = OneLineArgumentParser(
        prog="export_ir.py",
        description="Convert a Hugging Face checkpoint or GGUF file to an OpenVINO IR folder for ovchat.",
    )
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: run_export(args), args.verbose, parser.prog)


def ensure_default_model(verbose: bool) -> Path:
    """The default model's IR folder, exported first if it is not there yet."""
    from ovchat.export import default_model_folder
    from ovchat.sources import is_ir_folder

    folder = default_model_folder()
    if is_ir_folder(folder):
        return folder
    print("First use: exporting the default model (about a minute, once).", file=sys.stderr)
    return export_with_progress(build_parser().parse_args(["export", *(["--verbose"] if verbose else [])]))


def run_prepare(args: argparse.Namespace) -> int:
    """Export the default model unless it is already there; print its folder."""
    print(ensure_default_model(args.verbose))
    return 0


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from ovchat.chat import TEMPLATE_CHOICES
    from ovchat.engine import BACKENDS, DEFAULT_BACKEND

    parser.add_argument(
        "-m", "--model", type=Path, help="an IR folder made by export_ir.py (default: the default model)"
    )
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU or AUTO (default: CPU)")
    parser.add_argument(
        "--template",
        choices=TEMPLATE_CHOICES,
        default="auto",
        help="prompt format: the model's own, or a fallback for models without one (default: auto)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help=f"generation loop: openvino-genai's C++ loop or optimum-intel's (default: {DEFAULT_BACKEND})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and library logs")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    from ovchat.settings import GenerationSettings

    defaults = GenerationSettings()
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, help=f"longest reply in tokens ({defaults.max_new_tokens})")
    group.add_argument("--temperature", type=float, help=f"randomness, 0 for greedy ({defaults.temperature})")
    group.add_argument("--top-p", type=float, help=f"nucleus sampling probability mass ({defaults.top_p})")
    group.add_argument("--top-k", type=int, help=f"sample among the k likeliest tokens, 0 for all ({defaults.top_k})")
    group.add_argument(
        "--repetition-penalty", type=float, help=f"above 1 discourages repeats ({defaults.repetition_penalty})"
    )
    group.add_argument("--seed", type=int, help="fix the sampling for a reproducible reply")
    group.add_argument("--stop", action="append", metavar="TEXT", help="end the reply at this text (repeatable)")


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    from ovchat.settings import GenerationSettings

    names = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop")
    return GenerationSettings(**{name: getattr(args, name) for name in names if getattr(args, name) is not None})


def load_engine(args: argparse.Namespace) -> Engine:
    from rich.console import Console

    from ovchat.engine import Engine

    folder = args.model if args.model is not None else ensure_default_model(args.verbose)
    with Console(stderr=True).status(f"Loading {folder.name} on {args.device} ..."):
        return Engine.load(folder, device=args.device, template=args.template, backend=args.backend)


def run_chat(args: argparse.Namespace) -> int:
    from ovchat.terminal import TerminalChat
    from ovchat.transcript import load_chat

    settings = settings_from_args(args)
    messages = load_chat(args.input)[0] if args.input else []
    if args.output and args.output.exists() and args.output != args.input:
        raise OvchatError(f"{args.output} exists; to continue that chat pass -i {args.output} too, or pick a new name")
    engine = load_engine(args)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    chat = TerminalChat(engine, settings, messages, system=args.system, output=args.output)
    return chat.run()


def run_ask(args: argparse.Namespace) -> int:
    import io
    import json

    from ovchat.terminal import format_stats, stream_reply

    prompt = sys.stdin.read() if args.prompt in (None, "-") else args.prompt
    if not prompt.strip():
        raise OvchatError("the prompt is empty")
    settings = settings_from_args(args)
    engine = load_engine(args)
    messages: list[Message] = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": prompt})
    text, final = stream_reply(engine, messages, settings, io.StringIO() if args.json else sys.stdout)
    if args.json:
        fields = ("finish_reason", "prompt_tokens", "new_tokens", "ttft_s", "decode_tok_s")
        print(json.dumps({"text": text, **{name: getattr(final, name) for name in fields}}, ensure_ascii=False))
    else:
        print()
        print(format_stats(final), file=sys.stderr)
    return 130 if final.finish_reason == "cancelled" else 0


def run_bench(args: argparse.Namespace) -> int:
    """The side-by-side bench (default), or the --scaling or --quality run."""
    from rich.console import Console

    from ovchat.bench import plan_bench, source_checkpoint

    models = args.model or [ensure_default_model(args.verbose)]
    if not (args.scaling or args.quality) and len(models) > 1:
        raise OvchatError("give one --model, or several with --scaling or --quality")
    if args.variant and args.quality:
        raise OvchatError("--variant applies to the speed benches, not to --quality")
    engines = [name.strip() for name in args.engines.split(",")] if args.engines else None
    if args.scaling and engines is None:
        engines = ["ovchat", "llamacpp"]
    console = Console(stderr=True, highlight=False)
    started = time.perf_counter()
    if args.quality:
        from ovchat.bench_quality import format_quality_table, run_quality

        with console.status("starting") as status:
            report = run_quality(models, source_checkpoint(models[0]), progress=status.update)
        text = report["text"]
        title = f"perplexity on {text['file']} ({text['tokens']} tokens, windows of {text['window']}) · lower is better"
        header, rows = format_quality_table(report)
        kind = "quality"
    else:
        plan = plan_bench(models[0], engines, args.quick, args.threads, source_checkpoint, args.variant or ())
        for name, why in plan.notes.items():
            console.print(f"[yellow]skipped {name}[/yellow]: {why}")
        with console.status("starting") as status:
            if args.scaling:
                from ovchat.bench_scaling import format_scaling_table, run_scaling

                report = run_scaling(plan, models, args.quick, progress=status.update)
                title = f"{plan.threads} threads · medians of {report['settings']['rounds']} rounds"
                header, rows = format_scaling_table(report)
                kind = "scaling"
            else:
                from ovchat.bench import TABLE_HEADER, format_table, run_bench

                report = run_bench(plan, progress=status.update)
                title = f"{models[0].name} · {plan.threads} threads · medians of {plan.rounds} rounds"
                title += " · (ratio to llama.cpp)"
                header, rows = TABLE_HEADER, format_table(report)
                kind = "bench"
                overhead = report["engines"].get("ovchat", {}).get("streaming_overhead")
                if overhead is not None:
                    title += f" · streaming costs {overhead:+.1%} per token against the bare genai loop"
    report["seconds"] = time.perf_counter() - started
    print_table(title, header, rows)
    write_report(report, args, kind, console)
    return 0


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=160)  # a file or a pipe: keep the table's rows whole
    out.print(table)


def write_report(report: dict, args: argparse.Namespace, kind: str, console: Any) -> None:
    """The JSON report (always) and the chart (with --plot)."""
    import json

    json_path = args.json or data_home() / "bench" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    console.print(f"JSON: {json_path}  ({report['seconds']:.0f} s)")
    if args.plot:
        if kind == "scaling":
            from ovchat.bench_scaling import draw_scaling_chart

            draw_scaling_chart(report, args.plot)
        elif kind == "quality":
            from ovchat.bench_quality import draw_quality_chart

            draw_quality_chart(report, args.plot)
        else:
            from ovchat.bench import draw_chart

            draw_chart(report, args.plot)
        console.print(f"Chart: {args.plot}")


def run_devices(args: argparse.Namespace) -> int:
    from ovchat.engine import available_devices

    for device, name in available_devices():
        print(f"{device}\t{name}")
    return 0


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="ovchat", description="Local LLM chat on OpenVINO.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    export = commands.add_parser("export", help="export a model to an OpenVINO IR folder (as export_ir.py)")
    add_export_arguments(export)
    export.set_defaults(handler=run_export)
    prepare = commands.add_parser("prepare", help="export the default model unless it is already exported")
    prepare.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and library logs")
    prepare.set_defaults(handler=run_prepare)

    chat = commands.add_parser("chat", help="chat in the terminal")
    add_model_arguments(chat)
    add_sampling_arguments(chat)
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("-i", "--input", type=Path, help="continue a chat saved as JSON")
    chat.add_argument("-o", "--output", type=Path, help="save the chat here after each reply and on exit")
    chat.set_defaults(handler=run_chat)

    ask = commands.add_parser("ask", help="print one reply to a prompt")
    ask.add_argument("prompt", nargs="?", help="the prompt; - or nothing reads it from stdin")
    add_model_arguments(ask)
    add_sampling_arguments(ask)
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--json", action="store_true", help="print one JSON object with the text and the metrics")
    ask.set_defaults(handler=run_ask)

    bench = commands.add_parser("bench", help="measure the chat path against llama.cpp, openvino-genai and PyTorch")
    bench.add_argument(
        "-m", "--model", type=Path, action="append",
        help="an IR folder (default: the default model); repeat it for --scaling and --quality",
    )  # fmt: skip
    bench.add_argument("--engines", help="comma-separated subset of ovchat,optimum,genai,llamacpp,pytorch")
    bench.add_argument(
        "--variant", action="append", metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="one more ovchat row with these OpenVINO properties, e.g. bf16:INFERENCE_PRECISION_HINT=bf16",
    )  # fmt: skip
    mode = bench.add_mutually_exclusive_group()
    mode.add_argument("--scaling", action="store_true", help="TTFT, decode speed and memory against prompt length")
    mode.add_argument("--quality", action="store_true", help="perplexity of each --model on a text ovchat ships")
    bench.add_argument("--quick", action="store_true", help="fewer rounds, fewer tokens (under 3 minutes)")
    bench.add_argument("--threads", type=int, help="CPU threads for every engine (default: all cores)")
    bench.add_argument("--json", type=Path, help="write the report here (default: $OVCHAT_HOME/bench/)")
    bench.add_argument("--plot", type=Path, help="draw a PNG chart here")
    bench.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    bench.set_defaults(handler=run_bench)

    devices = commands.add_parser("devices", help="list the OpenVINO devices")
    devices.set_defaults(handler=run_devices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_guarded(lambda: args.handler(args), getattr(args, "verbose", False), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
