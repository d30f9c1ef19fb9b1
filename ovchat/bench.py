"""``ovchat bench``: the page's path against its peers, side by side in one run.

One worker process per engine (see :mod:`ovchat.bench_engines`). Their runs are interleaved
round by round, so a noisy moment on the machine hits every engine alike; the report gives
medians and every figure as a ratio to llama.cpp's.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovchat.bench_engines import ENGINE_NAMES
from ovchat.chat import Message
from ovchat.errors import OvchatError
from ovchat.paths import cache_dir

RATIO_BASE = "llamacpp"
# A ~1,000-token prompt: the text is repeated until the tokenizer says it is long enough.
LONG_PROMPT_TOKENS = 1000
LONG_TEXT = (
    "OpenVINO compiles a model for the CPU it runs on, and the chat page streams the reply token by token. "
    "Each paragraph of this text repeats so that the prompt is long enough to measure how fast a model reads. "
)
# short: a short cold question; long: a ~1,000-token cold prompt; followup: the long chat's next turn.
PROMPT_KINDS: tuple[str, ...] = ("short", "long", "followup")
WARM_LOAD_ROUNDS = 3
# The next turn after the long prompt's reply (a fixed reply, so every engine reads the same chat).
FOLLOW_UP: list[Message] = [
    {"role": "assistant", "content": "The text says that OpenVINO compiles the model and the page streams the reply."},
    {"role": "user", "content": "Say it in five words."},
]
SHORT_QUESTION = "Write a long story about a dragon who learns to cook."


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

    def worker(self, label: str, home: Path, ir: Path | None = None) -> Worker:
        """A worker for the engine ``label`` names (a variant runs the ovchat engine with its properties)."""
        engine, _, _ = label.partition(":")
        return Worker(label, engine, ir or self.ir, self, home, self.variants.get(label, {}))


def median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


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


class Worker:
    """One engine in its own process, driven by JSON lines."""

    def __init__(
        self, name: str, engine: str, ir: Path, plan: BenchPlan, home: Path, ov_config: dict[str, str]
    ) -> None:
        command = [sys.executable, "-m", "ovchat.bench_engines", engine, "--ir", str(ir)]
        command += ["--threads", str(plan.threads)]
        if plan.gguf:
            command += ["--gguf", str(plan.gguf)]
        if plan.checkpoint:
            command += ["--checkpoint", str(plan.checkpoint)]
        for key, value in ov_config.items():
            command += ["--ov-config", f"{key}={value}"]
        home.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = (home / "worker.log").open("ab")
        env = {**os.environ, "OVCHAT_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env, text=True
        )
        ready = self._read()
        self.load_s: float = ready["load_s"]

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            raise OvchatError(f"the {self.name} engine exited (code {self.process.returncode}); see {self.log.name}")
        return json.loads(line)

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command, ensure_ascii=False) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


class PromptMaker:
    """The chats of each round: a short one, a ~1,000-token one, and the next turn of that one.

    The tokenizer and the long text are made once.
    """

    def __init__(self, ir: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(ir)
        # ~1,000 tokens, or less on a model whose context is smaller (the tiny test model has 512).
        target = min(LONG_PROMPT_TOKENS, context_length(ir) // 2)
        self.long_text = LONG_TEXT
        while len(self.tokenizer(self.long_text, add_special_tokens=False)["input_ids"]) < target:
            self.long_text += LONG_TEXT

    def for_round(self, round_index: int) -> dict[str, tuple[list[Message], str]]:
        """The chats as messages and as prompt text.

        A fresh tag at the start of each prompt makes the short and long prompts cold: no engine
        can reuse a cached prefix from an earlier run. The follow-up is the long chat's next turn,
        asked right after it: an engine that keeps the chat's KV cache reads only the new message.
        """
        tag = f"[run {round_index}-{uuid.uuid4().hex[:8]}]"
        long_chat: list[Message] = [
            {"role": "user", "content": f"{tag} {self.long_text}\nSummarize the text above in one sentence."}
        ]
        chats: dict[str, list[Message]] = {
            "short": [{"role": "user", "content": f"{tag} {SHORT_QUESTION}"}],
            "long": long_chat,
            "followup": [*long_chat, *FOLLOW_UP],
        }
        return {
            kind: (messages, self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            for kind, messages in chats.items()
        }


def context_length(ir: Path) -> int:
    from transformers import AutoConfig

    from ovchat.engine import model_context_length

    return model_context_length(AutoConfig.from_pretrained(ir))


def run_bench(plan: BenchPlan, progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Measure every engine of ``plan``; the report as a JSON-ready dict."""
    home = cache_dir() / "bench" / time.strftime("%Y%m%d-%H%M%S")
    workers: dict[str, Worker] = {}
    extra: dict[str, dict[str, Any]] = {}
    try:
        for name in plan.engines:
            progress(f"loading {name}")
            workers[name] = plan.worker(name, home / safe_name(name))
            extra[name] = {"load_s": {"cold": workers[name].load_s}}
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {kind: [] for kind in PROMPT_KINDS} for name in workers
        }
        # One unrecorded reply each first: the first inference after a load pays one-off costs
        # (kernel selection, buffer allocation) that no later reply pays; load_s is where they belong.
        prompt_maker = PromptMaker(plan.ir)
        warm_up, warm_up_prompt = prompt_maker.for_round(-1)["short"]
        for name, worker in workers.items():
            progress(f"warming up {name}")
            worker.ask({"op": "run", "messages": warm_up, "prompt": warm_up_prompt, "max_new_tokens": 4})
        streaming_costs: list[dict[str, float]] = []
        for round_index in range(plan.rounds):
            prompts = prompt_maker.for_round(round_index)
            # Rotate the order each round so no engine is always first after a pause.
            order = list(workers)[round_index % len(workers) :] + list(workers)[: round_index % len(workers)]
            for name in order:
                progress(f"round {round_index + 1}/{plan.rounds}: {name}")
                for kind, new_tokens in (("short", plan.new_tokens), ("long", 8), ("followup", 8)):
                    messages, prompt = prompts[kind]
                    command = {"op": "run", "messages": messages, "prompt": prompt, "max_new_tokens": new_tokens}
                    command["cold"] = kind != "followup"
                    samples[name][kind].append(workers[name].ask(command))
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
                again = plan.worker(name, home / safe_name(name))  # the same data folder: its model cache is full
                warm_loads[name].append(again.load_s)
                again.close()
        for name, loads in warm_loads.items():
            extra[name]["load_s"].update(warm=median(loads), warm_runs=loads)
    finally:
        for worker in workers.values():
            worker.close()
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


def safe_name(label: str) -> str:
    """A folder name for an engine label such as ``ovchat:bf16``."""
    return "".join(char if char.isalnum() or char in "-_." else "-" for char in label)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE[,KEY=VALUE...]`` as (``ovchat:NAME``, properties)."""
    from ovchat.bench_engines import parse_ov_config

    name, sep, pairs = text.partition(":")
    if not sep or not name.strip() or not safe_name(name.strip()) == name.strip():
        raise OvchatError(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE], NAME of letters, digits, -_.")
    try:
        return f"ovchat:{name.strip()}", parse_ov_config(pairs.split(","))
    except ValueError as error:
        raise OvchatError(f"--variant {text!r}: {error}") from None


def machine_facts(threads: int) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version()}


def format_table(report: dict[str, Any]) -> list[list[str]]:
    """Rows for the printed table: the figure, then its ratio to llama.cpp in brackets."""

    def cell(value: float | None, base_ratio: float | None, digits: int) -> str:
        if value is None:
            return "-"
        text = f"{value:.{digits}f}"
        return f"{text} ({base_ratio:.2f}x)" if base_ratio is not None else text

    rows = []
    for name, figures in report["engines"].items():
        ratios = figures["ratio_vs_llamacpp"]
        rows.append(
            [
                name,
                cell(figures["decode_tok_s"], ratios["decode_tok_s"], 1),
                cell(_ms(figures["ttft_s"]["short"]), ratios["ttft_s"]["short"], 0),
                cell(_ms(figures["ttft_s"]["long"]), ratios["ttft_s"]["long"], 0),
                cell(_ms(figures["ttft_s"]["followup"]), ratios["ttft_s"]["followup"], 0),
                cell(figures["load_s"].get("cold"), ratios["load_s"]["cold"], 2),
                cell(figures["load_s"].get("warm"), ratios["load_s"]["warm"], 2),
                cell(figures.get("peak_rss_mb"), ratios["peak_rss_mb"], 0),
            ]
        )
    return rows


TABLE_HEADER = [
    "engine", "decode tok/s", "TTFT short ms", "TTFT ~1k ms", "TTFT next turn ms", "load cold s", "load warm s",
    "peak MB",
]  # fmt: skip


def _ms(seconds: float | None) -> float | None:
    return seconds * 1000 if seconds is not None else None


def figure(*grid: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib figure and its axes, drawn off-screen (no display: the bench writes files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*grid, figsize=figsize)


def save_figure(fig: Any, path: Path) -> None:
    """Write a bench chart as PNG and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_chart(report: dict[str, Any], path: Path) -> None:
    """Bars for decode speed and TTFT per engine, in a PNG."""
    names = list(report["engines"])
    figures = report["engines"]
    fig, axes = figure(1, 4, figsize=(17, 4))
    panels = [
        ("decode tok/s (higher is better)", [figures[n]["decode_tok_s"] or 0 for n in names]),
        ("TTFT, short prompt, ms", [(_ms(figures[n]["ttft_s"]["short"]) or 0) for n in names]),
        ("TTFT, ~1,000-token prompt, ms", [(_ms(figures[n]["ttft_s"]["long"]) or 0) for n in names]),
        ("TTFT, next turn of that chat, ms", [(_ms(figures[n]["ttft_s"]["followup"]) or 0) for n in names]),
    ]
    for axis, (title, values) in zip(axes, panels, strict=True):
        bars = axis.bar(names, values, color=["#d62728" if n.startswith("ovchat") else "#1f77b4" for n in names])
        axis.bar_label(bars, fmt="%.0f")
        axis.set_title(title)
        axis.tick_params(axis="x", rotation=30)
    machine = report["machine"]
    fig.suptitle(f"{Path(report['model']['ir']).name} · {machine['cpu']} · {machine['threads']} threads")
    save_figure(fig, path)


def plan_bench(
    ir: Path,
    engines: Sequence[str] | None,
    quick: bool,
    threads: int | None,
    checkpoint_dir: Callable[[Path], Path | None],
    variants: Sequence[str] = (),
) -> BenchPlan:
    """Which engines can run on this IR; each one that cannot gets a note instead of a failure."""
    from ovchat.export import read_manifest
    from ovchat.sources import is_ir_folder

    if not is_ir_folder(ir):
        raise OvchatError(f"{ir} is not an exported model folder")
    wanted = tuple(engines or ENGINE_NAMES)
    unknown = [name for name in wanted if name not in ENGINE_NAMES]
    if unknown:
        raise OvchatError(f"unknown engine {unknown[0]!r}; choose from {', '.join(ENGINE_NAMES)}")
    manifest = read_manifest(ir) or {}
    source = manifest.get("source", {})
    gguf = Path(source["location"]) if source.get("kind") == "gguf" else None
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
    from ovchat.export import read_manifest

    source = (read_manifest(ir) or {}).get("source", {})
    location = Path(source.get("location", ""))
    if source.get("kind") == "checkpoint" and location.is_dir():
        return location
    if source.get("kind") != "gguf" or not location.is_file():
        return None
    target = cache_dir() / "bench" / "checkpoints" / f"{location.stem}-{source.get('source_sha256', '')[:12]}"
    if not target.is_dir():
        import shutil

        from ovchat.gguf_import import gguf_to_checkpoint, inspect_gguf

        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        gguf_to_checkpoint(location, staging, inspect_gguf(location))
        staging.rename(target)  # complete or absent, never half-written
    return target
