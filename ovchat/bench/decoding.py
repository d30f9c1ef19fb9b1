"""``ovchat bench --decoding``: plain decoding against prompt lookup (and a draft model) on the page's path.

Each decoding is an ovchat engine of its own (the default loop, ``Engine.stream``, greedy) in a worker
process. Every prompt kind is asked of each in turn, round by round with the order rotated, so a
noisy moment on the machine hits every decoding alike. The kinds are input-grounded (summarise a
given text, fix a given paragraph, edit a given function: a reply that copies from its prompt, where
prompt lookup's guesses can hit) and open-ended (a question with nothing to copy).

A guessing decoder hands over a whole step's tokens at once, so the runner counts steps: tokens per
step is what guessing bought, and (tokens - steps) / ((steps - 1) x guesses per step) estimates the
share of guesses the model kept (its first step reads the prompt and guesses nothing). openvino-genai
reports an acceptance rate only for the LLMPipeline with a draft model, not per request on the
continuous-batching loop that the page uses. Greedy replies must be the same text in every decoding;
the report says where they were.

Figures (README, Performance): one full run on the default model (SmolLM2-135M, its Q4_1 blocks kept),
AMD EPYC, 2 threads, 5 rounds of up to 160 tokens: prompt lookup took 1.88x less time per reply
summarising, 1.60x rewriting, 1.12x editing code, and 0.72x on the open question (its unmatched guesses
still cost a 6-token step); 13 of 20 greedy replies were plain's text, the others parted after 108-745
characters (float rounding). A draft model cannot be measured here: the default model has no smaller
sibling in the wheel, and a synthetic model's random guesses mean nothing. Plain stays the default
(:data:`ovchat.engine.decoding.DEFAULT_DECODING`): the choice is per loaded model.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ovchat.bench.report import fixed, median, ratio
from ovchat.bench.workers import Worker, WorkerPool, rotated
from ovchat.engine.decoding import (
    DEFAULT_ASSISTANT_TOKENS,
    DEFAULT_NGRAM_SIZE,
    DRAFT,
    PLAIN,
    PROMPT_LOOKUP,
    decoding_from_options,
)
from ovchat.errors import OvchatError
from ovchat.machine import machine_facts
from ovchat.model_folder import is_complete
from ovchat.paths import cache_dir
from ovchat.prompt import Message

SUMMARY_SOURCE = (
    "The Rosetta Stone is a granodiorite stele inscribed with three versions of a decree issued in Memphis, "
    "Egypt, in 196 BC during the Ptolemaic dynasty on behalf of King Ptolemy V Epiphanes. The top and middle "
    "texts are in Ancient Egyptian using hieroglyphic and Demotic scripts, respectively, while the bottom is in "
    "Ancient Greek. The decree has only minor differences across the three versions, making the Rosetta Stone "
    "key to deciphering the Egyptian scripts. The stone was carved during the Hellenistic period and is believed "
    "to have originally been displayed within a temple, possibly at Sais. It was probably moved in late antiquity "
    "or during the Mamluk period, and was eventually used as building material in the construction of Fort "
    "Julien near the town of Rashid in the Nile Delta. It was found there in July 1799 by French officer "
    "Pierre-François Bouchard during the Napoleonic campaign in Egypt."
)
PARAGRAPH_WITH_MISTAKES = (
    "Continuous batching let a server work on many request at once. Instead of waiting for the slowest reply "
    "in a batch to finnish, the scheduler adds a new request as soon as an other one ends, so the hardware "
    "stay busy. Because every reply advance one token per step, a short answer dont have to wait for a long "
    "one, and the time to the first token stays low even when the server is buisy."
)
CODE_TO_EDIT = """def moving_average(values, window):
    if window <= 0:
        raise ValueError("window must be positive")
    averages = []
    total = 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        if index >= window - 1:
            averages.append(total / window)
    return averages
"""


@dataclass(frozen=True)
class PromptKind:
    name: str
    request: str
    input_grounded: bool  # whether a good reply copies from the prompt


PROMPT_KINDS: tuple[PromptKind, ...] = (
    PromptKind("summarise", f"Summarise this text in three sentences:\n\n{SUMMARY_SOURCE}", True),
    PromptKind(
        "rewrite",
        f"Fix the spelling and grammar of this paragraph. Reply with the corrected paragraph only.\n\n"
        f"{PARAGRAPH_WITH_MISTAKES}",
        True,
    ),
    PromptKind(
        "code-edit",
        "Rename the function to `rolling_mean` and add type hints. Reply with the whole function in a code block."
        f"\n\n```python\n{CODE_TO_EDIT}```",
        True,
    ),
    PromptKind("open", "Why do the leaves of many trees change colour in autumn? Answer in a few paragraphs.", False),
)
RATIO_BASE = PLAIN


@dataclass(frozen=True)
class DecodingPlan:
    ir: Path
    draft_model: Path | None
    rounds: int
    new_tokens: int
    threads: int
    kinds: tuple[PromptKind, ...] = PROMPT_KINDS

    @property
    def decodings(self) -> tuple[str, ...]:
        return (PLAIN, PROMPT_LOOKUP) + ((DRAFT,) if self.draft_model else ())

    def worker(self, decoding: str, home: Path) -> Worker:
        """The row's worker: the ovchat runner with this decoding (and the draft model for ``draft``)."""
        runner_args = ["--decoding", decoding]
        if decoding == DRAFT:
            runner_args += ["--draft-model", str(self.draft_model)]
        return Worker(decoding, "ovchat", self.ir, home, self.threads, runner_args=runner_args)


def plan_decoding_bench(
    ir: Path, draft_model: Path | None, quick: bool, threads: int | None, rounds: int | None = None
) -> DecodingPlan:
    """What ``ovchat bench --decoding`` runs; a bad model or draft folder fails here, before any worker starts."""
    if not is_complete(ir):
        raise OvchatError(f"{ir} is not an exported model folder")
    if draft_model is not None:
        decoding_from_options(DRAFT, draft_model)  # the folder checks, in the bench's process
    return DecodingPlan(
        ir=ir,
        draft_model=draft_model,
        rounds=rounds or (2 if quick else 5),
        new_tokens=64 if quick else 160,
        threads=threads or os.cpu_count() or 1,
    )


def fresh_chat(kind: PromptKind) -> list[Message]:
    """The kind's chat with a fresh tag in front, so that no engine reuses an earlier round's prompt cache."""
    return [{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] {kind.request}"}]


def run_decoding_bench(plan: DecodingPlan, progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Every prompt kind in every decoding, interleaved round by round; the report as a JSON-ready dict."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        kind.name: {decoding: [] for decoding in plan.decodings} for kind in plan.kinds
    }
    load_s: dict[str, float] = {}
    with WorkerPool(cache_dir() / "bench" / f"decoding-{time.strftime('%Y%m%d-%H%M%S')}", progress) as pool:
        for decoding in plan.decodings:
            load_s[decoding] = pool.start(decoding, partial(plan.worker, decoding)).load_s
        pool.warm_up(fresh_chat(plan.kinds[0]), "")
        for round_index in range(plan.rounds):
            for kind in plan.kinds:
                messages = fresh_chat(kind)  # the same chat for every decoding in this round
                for decoding in rotated(list(plan.decodings), round_index):
                    progress(f"round {round_index + 1}/{plan.rounds}: {kind.name}, {decoding}")
                    command = {"op": "timed_reply", "messages": messages, "max_new_tokens": plan.new_tokens}
                    runs[kind.name][decoding].append(pool.workers[decoding].ask(command))
    return {
        "machine": machine_facts(plan.threads),
        "model": {"ir": str(plan.ir), "draft_model": str(plan.draft_model) if plan.draft_model else None},
        "settings": {
            "rounds": plan.rounds,
            "new_tokens": plan.new_tokens,
            "greedy": True,
            "decodings": list(plan.decodings),
            "assistant_tokens": DEFAULT_ASSISTANT_TOKENS,
            "ngram_size": DEFAULT_NGRAM_SIZE,
        },
        "load_s": load_s,
        "kinds": summarize_decoding(runs, DEFAULT_ASSISTANT_TOKENS, plan.kinds),
    }


def accepted_share(new_tokens: int, steps: int, guesses_per_step: int) -> float | None:
    """The share of guesses the model kept, estimated from a reply's tokens and steps: every step after
    the first (which reads the prompt) checks ``guesses_per_step`` guesses and adds the kept ones to its
    own token. None when there was no guessing step."""
    if steps < 2 or guesses_per_step < 1:
        return None
    return max(0.0, (new_tokens - steps) / ((steps - 1) * guesses_per_step))


def summarize_decoding(
    runs: dict[str, dict[str, list[dict[str, Any]]]],
    guesses_per_step: int,
    kinds_asked: tuple[PromptKind, ...] = PROMPT_KINDS,
) -> dict[str, Any]:
    """Medians per prompt kind and decoding, their ratios to plain, and whether the text matched plain's."""
    grounded = {kind.name: kind.input_grounded for kind in kinds_asked}
    kinds: dict[str, Any] = {}
    for kind_name, by_decoding in runs.items():
        figures: dict[str, Any] = {}
        for decoding, samples in by_decoding.items():
            figures[decoding] = {
                "decode_tok_s": median([run["decode_tok_s"] for run in samples]),
                "reply_s": median([run["reply_s"] for run in samples]),
                "new_tokens": median([run["new_tokens"] for run in samples]),
                "tokens_per_step": median(
                    [run["new_tokens"] / run["steps"] if run["steps"] else None for run in samples]
                ),
                "accepted_share": None
                if decoding == PLAIN
                else median([accepted_share(run["new_tokens"], run["steps"], guesses_per_step) for run in samples]),
                "runs": samples,
            }
        base = figures.get(RATIO_BASE)
        for figure in figures.values():
            figure["ratio_to_plain"] = {
                "decode_tok_s": ratio(figure["decode_tok_s"], base["decode_tok_s"] if base else None),
                # Above 1 is faster: plain's time per reply over this one's.
                "speedup": ratio(base["reply_s"] if base else None, figure["reply_s"]),
            }
            figure["same_text_as_plain"] = (
                None
                if base is None
                else all(
                    run["text"] == plain_run["text"]
                    for run, plain_run in zip(figure["runs"], base["runs"], strict=True)
                )
            )
        kinds[kind_name] = {"input_grounded": grounded.get(kind_name), "decodings": figures}
    return kinds


DECODING_TABLE_HEADER = [
    "prompt", "decoding", "decode tok/s", "reply s", "tokens/step", "guesses kept", "speed-up", "same text",
]  # fmt: skip


def format_decoding_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for kind_name, kind in report["kinds"].items():
        label = f"{kind_name} ({'copies' if kind['input_grounded'] else 'open'})"
        for decoding, figure in kind["decodings"].items():
            same = figure["same_text_as_plain"]
            rows.append(
                [
                    label,
                    decoding,
                    fixed(figure["decode_tok_s"], 1),
                    fixed(figure["reply_s"], 2),
                    fixed(figure["tokens_per_step"], 2),
                    "-" if figure["accepted_share"] is None else f"{figure['accepted_share']:.0%}",
                    fixed(figure["ratio_to_plain"]["speedup"], 2, "x"),
                    "-" if decoding == PLAIN or same is None else ("yes" if same else "NO"),
                ]
            )
            label = ""
    return DECODING_TABLE_HEADER, rows


def decoding_bench(
    args: argparse.Namespace, models: list[Path], console: Any
) -> tuple[str, dict[str, Any], str, list[str], list[list[str]]]:
    """``ovchat bench --decoding``'s whole run, as command.run's other modes return it."""
    if len(models) > 1 or args.engines or args.variant or args.plot:
        raise OvchatError("--decoding takes one --model, and no --engines, --variant or --plot")
    plan = plan_decoding_bench(models[0], args.draft_model, args.quick, args.threads)
    with console.status("starting") as status:
        report = run_decoding_bench(plan, progress=status.update)
    title = (
        f"{plan.ir.name} · {plan.threads} threads · greedy, up to {plan.new_tokens} new tokens · "
        f"medians of {plan.rounds} rounds · speed-up = plain's time per reply / this one's"
    )
    return ("decoding", report, title, *format_decoding_table(report))
