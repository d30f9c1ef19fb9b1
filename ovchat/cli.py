"""The ``ovchat`` console script and the ``export_ir.py`` entry point: parse, call the library, print.

Errors the user can fix (:class:`OvchatError`, bad flags) become one line on stderr
and exit code 2; ``--verbose`` shows the traceback and the libraries' logs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ovchat.errors import OvchatError, first_line

if TYPE_CHECKING:
    from ovchat.engine import Decoding, Engine, StreamingEngine
    from ovchat.engine.streaming import TokenLogprob
    from ovchat.export import ExportOptions
    from ovchat.settings import GenerationSettings

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
        return EXIT_INTERRUPTED


def common_flags() -> argparse.ArgumentParser:
    """Flags every command takes, as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and library logs")
    return common


# ----- export -----


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from ovchat.export import DEFAULT_GGUF_WEIGHT_FORMAT, DEFAULT_WEIGHT_FORMAT, WEIGHT_FORMATS

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
        help=f"weight precision of the IR; {DEFAULT_GGUF_WEIGHT_FORMAT} keeps a GGUF file's own blocks "
        f"(default: {DEFAULT_GGUF_WEIGHT_FORMAT} for a GGUF file, {DEFAULT_WEIGHT_FORMAT} for a checkpoint)",
    )
    parser.add_argument("--group-size", type=int, help="int4 only: weights per quantization group, -1 per channel")
    parser.add_argument("--ratio", type=float, help="int4 only: share of layers in int4, the rest int8")
    parser.add_argument("--sym", action="store_true", help="int8/int4: symmetric quantization")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code to run"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    ovms = parser.add_argument_group("OpenVINO Model Server")
    ovms.add_argument(
        "--ovms",
        action="store_true",
        help="also write graph.pbtxt into the folder and its entry into OVMS's config.json, so OpenVINO Model "
        "Server serves it with continuous batching; given an IR folder, or an output folder already exported "
        "(without --force), only writes these",
    )
    ovms.add_argument("--ovms-name", metavar="NAME", help="the model's name in OVMS (default: the folder's name)")
    ovms.add_argument(
        "--ovms-config",
        type=Path,
        metavar="PATH",
        help="the OVMS config.json to add the model to, kept with its other entries "
        "(default: config.json in the folder that holds the export)",
    )


def run_export(args: argparse.Namespace) -> int:
    from ovchat.export import ExportOptions

    options = ExportOptions(
        weight_format=args.weight_format,
        group_size=args.group_size,
        ratio=args.ratio,
        sym=args.sym,
        trust_remote_code=args.trust_remote_code,
    )
    if not args.ovms:
        if args.ovms_name is not None or args.ovms_config is not None:
            raise OvchatError("--ovms-name and --ovms-config apply only with --ovms")
        print(export_with_progress(args.source, args.output, options, args.force, args.verbose))
        return 0
    from ovchat.export.ovms import plan_ovms, write_ovms_files

    ovms = plan_ovms(
        args.source, args.output, options, force=args.force, name=args.ovms_name, config_path=args.ovms_config
    )
    if ovms.existing is not None:
        print(f"{ovms.existing} is already exported; writing only the OVMS files", file=sys.stderr)
        folder = ovms.existing
    else:
        folder = export_with_progress(args.source, args.output, options, args.force, args.verbose)
    files = write_ovms_files(folder, ovms.name, ovms.config_path, ovms.graph)
    print(files.summary(), file=sys.stderr)
    print(f"Serve it: {files.serve_command()}", file=sys.stderr)
    print(folder)
    return 0


def export_with_progress(
    source: str | None, output: Path | None, options: ExportOptions, force: bool, verbose: bool
) -> Path:
    """Export with step lines on stderr (the libraries' output goes to a log); the new folder's path."""
    from rich.console import Console

    from ovchat.export import execute_export, plan_export
    from ovchat.export.logs import library_output_to_log

    plan = plan_export(source, output, options, force=force)
    with library_output_to_log(not verbose, "export") as (user_stream, log_path):
        console = Console(file=user_stream, highlight=False)
        status = console.status("starting")

        def progress(step: str, event: str, seconds: float | None) -> None:
            if event == "start":
                status.update(f"{step} ...")
            else:
                console.print(f"  [green]✓[/green] {step:<9} {seconds:6.1f} s")

        console.print(
            f"Exporting {plan.source.name} ({plan.source.kind.value}) to {plan.options.weight_format}: {plan.target}"
        )
        try:
            with status:
                result = execute_export(plan, progress=progress)
        except Exception as error:
            if log_path and not isinstance(error, OvchatError):
                raise OvchatError(
                    f"export failed: {type(error).__name__}: {first_line(error)} "
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
        parents=[common_flags()],
    )
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: run_export(args), args.verbose, parser.prog)


def default_model(verbose: bool) -> Path:
    """The default model's IR folder, exported here with progress on first use."""
    from ovchat.export import ExportOptions, ensure_default_model

    def export(folder: Path) -> None:
        print("First use: exporting the default model (under a minute, once).", file=sys.stderr)
        export_with_progress(None, folder, ExportOptions(), force=False, verbose=verbose)

    return ensure_default_model(export)


def run_prepare(args: argparse.Namespace) -> int:
    """Export the default model unless it is already there; print its folder."""
    print(default_model(args.verbose))
    return 0


# ----- chat, ask -----


def add_model_arguments(parser: argparse.ArgumentParser, system_prompt: bool = True) -> None:
    from ovchat.engine import BACKENDS, DEFAULT_BACKEND
    from ovchat.engine.decoding import (
        DECODING_MODES,
        DEFAULT_ASSISTANT_TOKENS,
        DEFAULT_DECODING,
        DEFAULT_NGRAM_SIZE,
    )
    from ovchat.prompt import TEMPLATE_CHOICES

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
        help="generation loop: batched (openvino-genai's continuous batching, replies of several callers at once), "
        f"genai (its LLMPipeline, one reply at a time) or optimum (optimum-intel's) (default: {DEFAULT_BACKEND})",
    )
    parser.add_argument(
        "--decoding",
        choices=DECODING_MODES,
        help="plain, prompt-lookup (guess tokens from the prompt: rewrites, code edits) or draft (guess with "
        f"--draft-model); a greedy reply keeps its tokens up to float rounding (default: {DEFAULT_DECODING})",
    )
    parser.add_argument(
        "--draft-model", type=Path, metavar="FOLDER",
        help="a smaller IR folder with the same tokenizer that guesses tokens; implies --decoding draft (greedy only)",
    )  # fmt: skip
    parser.add_argument(
        "--assistant-tokens", type=int, metavar="N",
        help=f"tokens guessed per step with prompt-lookup or draft (default: {DEFAULT_ASSISTANT_TOKENS})",
    )  # fmt: skip
    parser.add_argument(
        "--ngram-size", type=int, metavar="N",
        help=f"prompt-lookup: most of the reply's last tokens looked for in the prompt (default: {DEFAULT_NGRAM_SIZE})",
    )  # fmt: skip
    if system_prompt:
        parser.add_argument("--system", help="system prompt")


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

    names = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop", "logprobs")
    return GenerationSettings(**{name: getattr(args, name) for name in names if getattr(args, name, None) is not None})


def decoding_from_args(args: argparse.Namespace) -> Decoding:
    from ovchat.engine.decoding import decoding_from_options

    return decoding_from_options(args.decoding, args.draft_model, args.assistant_tokens, args.ngram_size)


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    from ovchat.engine.remote import API_KEY_ENV, ENDPOINT_ENV

    group = parser.add_argument_group("a remote server (any OpenAI-compatible one) instead of a local model")
    group.add_argument(
        "--endpoint", metavar="URL",
        help=f"its OpenAI base URL, e.g. http://host:8000/v1 (default: ${ENDPOINT_ENV})",
    )  # fmt: skip
    group.add_argument("--api-model", metavar="NAME", help="the model to use (default: the first the server lists)")
    group.add_argument("--api-key", metavar="KEY", help=f"its API key (default: ${API_KEY_ENV}); never saved")
    group.add_argument(
        "--context-length", type=int, metavar="N",
        help="the model's context in tokens, when the server does not say it (default: 4096)",
    )  # fmt: skip


def engine_from_args(args: argparse.Namespace) -> StreamingEngine:
    from rich.console import Console

    from ovchat.engine.remote import API_KEY_ENV, ENDPOINT_ENV, RemoteEngine

    # Only the commands with --endpoint take a server (ovchat explore needs the model's logits).
    endpoint = (args.endpoint or os.environ.get(ENDPOINT_ENV)) if hasattr(args, "endpoint") else None
    if endpoint:
        local_only = [flag for flag, value in (("--model", args.model), ("--decoding", args.decoding),
                      ("--draft-model", args.draft_model)) if value]  # fmt: skip
        if local_only:
            raise OvchatError(f"{', '.join(local_only)} applies to a local model, not to --endpoint {endpoint}")
        with Console(stderr=True).status(f"Connecting to {endpoint} ..."):
            return RemoteEngine.connect(
                endpoint, args.api_model, args.api_key or os.environ.get(API_KEY_ENV), args.context_length
            )
    return local_engine_from_args(args)


def local_engine_from_args(args: argparse.Namespace) -> Engine:
    from rich.console import Console

    from ovchat.engine import Engine

    decoding = decoding_from_args(args)  # bad flags fail before the model loads
    folder = args.model if args.model is not None else default_model(args.verbose)
    with Console(stderr=True).status(f"Loading {folder.name} on {args.device} ..."):
        return Engine.load(folder, device=args.device, template=args.template, backend=args.backend, decoding=decoding)


def run_chat(args: argparse.Namespace) -> int:
    from ovchat.chats.files import load_chat
    from ovchat.terminal import TerminalChat

    settings = settings_from_args(args)
    messages = load_chat(args.input)[0] if args.input else []
    if args.output and args.output.exists() and args.output != args.input:
        raise OvchatError(f"{args.output} exists; to continue that chat pass -i {args.output} too, or pick a new name")
    engine = engine_from_args(args)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    if isinstance(sys.stdin, io.TextIOWrapper):
        # A typed line that is not UTF-8 then reaches the chat, which refuses that line alone, instead of ending
        # the program with a traceback (a strict decoder) or changing the text (a replacing one).
        sys.stdin.reconfigure(errors="surrogateescape")
    chat = TerminalChat(engine, settings, messages, system=args.system, output=args.output)
    return chat.run()


def typed_text(argument: str | None, what: str) -> str:
    """The command line's text, or standard input's for None or "-"; an error if it is not UTF-8 (a terminal
    set to another encoding), which nothing after could encode."""
    from ovchat.prompt import unicode_problem

    text = argument or ""
    if argument in (None, "-"):
        # Bytes that are not UTF-8 reach Python's argv as lone surrogates; standard input is read as bytes so that
        # they do the same whatever the locale (a strict decoder would end the command with a traceback).
        raw = getattr(sys.stdin, "buffer", None)
        text = raw.read().decode("utf-8", "surrogateescape") if raw is not None else sys.stdin.read()
    problem = unicode_problem(text)
    if problem is not None:
        raise OvchatError(f"{what} is not UTF-8 text: {problem}; is the terminal set to UTF-8?")
    return text


def run_ask(args: argparse.Namespace) -> int:
    import json

    from ovchat.prompt import Message
    from ovchat.terminal import format_stats, print_reply

    prompt = typed_text(args.prompt, "the prompt")
    if not prompt.strip():
        raise OvchatError("the prompt is empty")
    settings = settings_from_args(args)
    engine = engine_from_args(args)
    messages: list[Message] = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": prompt})
    reply = print_reply(engine, messages, settings, io.StringIO() if args.json else sys.stdout)
    if args.json:
        # One turn is never trimmed: the object keeps the keys `ask --json` has always printed.
        stats = {key: value for key, value in reply.stats.to_dict().items() if key != "trimmed_turns"}
        logprobs = {} if reply.logprobs is None else {"logprobs": [token.to_dict() for token in reply.logprobs]}
        print(json.dumps({"text": reply.text, **stats, **logprobs}, ensure_ascii=False))
    else:
        print(flush=True)
        if reply.logprobs is not None:
            print_logprobs(reply.logprobs)
        print(format_stats(reply.stats), file=sys.stderr)
    return EXIT_INTERRUPTED if reply.stats.finish_reason == "cancelled" else 0


def print_logprobs(tokens: Sequence[TokenLogprob]) -> None:
    """Each reply token's probability and its alternatives, as a table on stderr."""
    from rich.console import Console
    from rich.table import Table

    from ovchat.lab.explorer import visible

    table = Table("#", "token", "p", "alternatives", box=None, pad_edge=False)
    for index, token in enumerate(tokens, 1):
        others = "  ".join(f"{visible(other.text)} {other.probability:.0%}" for other in token.top)
        table.add_row(str(index), visible(token.text), f"{token.probability:.1%}", others)
    Console(stderr=True, highlight=False).print(table)


def run_explore(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from ovchat.lab.explorer import explore, prefix_ids, visible

    text = typed_text(args.text, "the text to explore")
    settings = settings_from_args(args)
    if args.rows < 1:
        raise OvchatError("--rows must be at least 1")
    engine = local_engine_from_args(args)
    found = explore(engine, prefix_ids(engine, text, args.chat), settings, rows=args.rows)
    if args.json:
        print(json.dumps(found.to_dict(), ensure_ascii=False))
        return 0
    table = Table("#", "token", "id", "model", "tempered", "sampled", "removed by", box=None, pad_edge=False)
    for rank, row in enumerate(found.rows, 1):
        table.add_row(
            str(rank), visible(row.text), str(row.token_id), f"{row.raw:.1%}", f"{row.tempered:.1%}",
            f"{row.final:.1%}", row.removed_by.replace("_", "-"),
        )  # fmt: skip
    distribution = found.distribution
    console = Console(highlight=False)
    console.print(table)
    console.print(
        f"{distribution.kept} of {found.vocabulary} tokens left (top-k removed {distribution.removed_count('top_k')}, "
        f"top-p {distribution.removed_count('top_p')}); entropy {distribution.raw_entropy_bits:.2f} bits "
        f"under the model, {distribution.final_entropy_bits:.2f} bits sampled"
    )
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from ovchat.bench import command

    # --synthetic builds its own models; the others run on the default model unless told.
    return command.run(
        args, args.model or ([] if args.synthetic or args.synthetic_report else [default_model(args.verbose)])
    )


def run_serve(args: argparse.Namespace) -> int:
    from ovchat.engine import Engine
    from ovchat.server import command

    options = command.engine_options(args)
    decoding = decoding_from_args(args)
    folder = args.model if args.model is not None else default_model(args.verbose)
    if args.ray:
        from ovchat.engine.backends import DEFAULT_MAX_NUM_SEQS
        from ovchat.server import ray_serve

        if decoding.guesses:
            raise OvchatError("--ray serves plain decoding; drop --decoding and --draft-model")
        plan = ray_serve.replica_plan(args, folder, options)
        return ray_serve.run(args, plan, batch=args.parallel or DEFAULT_MAX_NUM_SEQS)
    ray_only = [flag for flag in ("replicas", "max_replicas", "ray_address") if getattr(args, flag) is not None]
    if ray_only:
        raise OvchatError(f"--{ray_only[0].replace('_', '-')} applies with --ray only")

    def load() -> Engine:
        return Engine.load(
            folder, device=args.device, template=args.template, backend=args.backend, ov_config=options,
            decoding=decoding,
        )  # fmt: skip

    return command.run(args, folder, load)


def run_devices(args: argparse.Namespace) -> int:
    from ovchat.engine import available_devices

    for device, name in available_devices():
        print(f"{device}\t{name}")
    return 0


def build_parser() -> OneLineArgumentParser:
    from ovchat.bench import command as bench_command
    from ovchat.server import command as serve_command

    parser = OneLineArgumentParser(prog="ovchat", description="Local LLM chat on OpenVINO.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    common = [common_flags()]

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, parents=common)
        sub.set_defaults(handler=handler)
        return sub

    add_export_arguments(command("export", run_export, "export a model to an OpenVINO IR folder (as export_ir.py)"))
    command("prepare", run_prepare, "export the default model unless it is already exported")
    chat = command("chat", run_chat, "chat in the terminal")
    add_model_arguments(chat)
    add_sampling_arguments(chat)
    add_endpoint_arguments(chat)
    chat.add_argument("-i", "--input", type=Path, help="continue a chat saved as JSON")
    chat.add_argument("-o", "--output", type=Path, help="save the chat here after each reply and on exit")
    ask = command("ask", run_ask, "print one reply to a prompt")
    ask.add_argument("prompt", nargs="?", help="the prompt; - or nothing reads it from stdin")
    add_model_arguments(ask)
    add_sampling_arguments(ask)
    add_endpoint_arguments(ask)
    ask.add_argument("--json", action="store_true", help="print one JSON object with the text and the metrics")
    ask.add_argument(
        "--logprobs", type=int, metavar="N",
        help="each token's probability and its N likeliest alternatives (0-20; off by default: it costs a "
        "forward pass over prompt and reply after the reply)",
    )  # fmt: skip
    explore = command("explore", run_explore, "show the likeliest next tokens after a text, before and after sampling")
    explore.add_argument("text", nargs="?", help="the text to continue; - or nothing reads it from stdin")
    explore.add_argument("--chat", action="store_true", help="explore the first token of the reply to TEXT as a chat")
    explore.add_argument("--rows", type=int, default=20, help="how many of the likeliest tokens to show (default: 20)")
    explore.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_model_arguments(explore, system_prompt=False)
    add_sampling_arguments(explore)
    bench_command.add_arguments(
        command("bench", run_bench, "measure the chat path against llama.cpp, openvino-genai and PyTorch")
    )
    serve = command("serve", run_serve, "serve the model over an OpenAI-compatible HTTP API")
    add_model_arguments(serve, system_prompt=False)  # each request brings its own messages
    serve_command.add_arguments(serve)
    command("devices", run_devices, "list the OpenVINO devices")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_guarded(lambda: args.handler(args), args.verbose, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
