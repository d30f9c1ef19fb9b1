"""``ovchat bench --logprobs``: what token log-probabilities cost, off against on, on the page's path.

One engine (the default loop, ``Engine.stream``, greedy) answers the same chats with log-probabilities
off, with 5 alternatives per token (what the page shows) and with 20 (OpenAI's most), round by round
with the order rotated. Off is the chat as it always was: the scorer is not even compiled. On, the
reply streams as fast, and after its last token one forward pass over prompt + reply gives the
log-probabilities (:mod:`ovchat.engine.scoring`); ``scoring s`` is that pass, the time from the
reply's last text to its final chunk. The scorer's first compile and the memory its second copy of
the weights takes are reported once.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path
from typing import Any

from ovchat.bench.decoding import SUMMARY_SOURCE
from ovchat.bench.report import fixed, median, ratio
from ovchat.bench.workers import rotated
from ovchat.errors import OvchatError
from ovchat.machine import machine_facts, process_tree_rss_mb
from ovchat.prompt import Message
from ovchat.settings import GenerationSettings

MODES: dict[str, int | None] = {"off": None, "top-5": 5, "top-20": 20}
PROMPTS: dict[str, str] = {
    "short": "Why is the sky blue? Answer in a few sentences.",
    "long": "Summarise these notes in a short paragraph.\n\n" + "\n\n".join([SUMMARY_SOURCE] * 4),
}


def fresh_chat(request: str) -> list[Message]:
    """A chat with a fresh tag in front, so no mode reuses another's prompt cache or scorer state."""
    return [{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] {request}"}]


def timed_reply(engine: Any, messages: list[Message], settings: GenerationSettings) -> dict[str, Any]:
    started = time.perf_counter()
    last_text_at = started
    for chunk in engine.stream(messages, settings):
        if chunk.stats is None:
            last_text_at = time.perf_counter()
            continue
        ended = time.perf_counter()
        return {
            "reply_s": ended - started,
            "scoring_s": ended - last_text_at if settings.logprobs is not None else None,
            "new_tokens": chunk.stats.new_tokens,
            "prompt_tokens": chunk.stats.prompt_tokens,
            "ttft_s": chunk.stats.ttft_s,
            "decode_tok_s": chunk.stats.decode_tok_s,
        }
    raise OvchatError("the reply ended without a final chunk")


def run_logprobs_bench(
    ir: Path,
    rounds: int,
    new_tokens: int,
    progress: Any = lambda message: None,
    prompts: dict[str, str] = PROMPTS,
) -> dict[str, Any]:
    from ovchat.engine import Engine

    engine = Engine.load(ir)
    base = GenerationSettings(temperature=0.0, max_new_tokens=new_tokens)
    rss_before = process_tree_rss_mb()
    compile_started = time.perf_counter()
    engine.scorer()
    scorer_load_s = time.perf_counter() - compile_started
    scorer_mb = process_tree_rss_mb() - rss_before
    engine.generate(fresh_chat(next(iter(prompts.values()))), base.with_changes(logprobs=5))  # warm both paths
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {mode: [] for mode in MODES} for name in prompts}
    for round_index in range(rounds):
        for name, request in prompts.items():
            messages = fresh_chat(request)
            for mode in rotated(list(MODES), round_index):
                progress(f"round {round_index + 1}/{rounds}: {name} prompt, logprobs {mode}")
                runs[name][mode].append(timed_reply(engine, messages, base.with_changes(logprobs=MODES[mode])))
    prompts: dict[str, Any] = {}
    for name, by_mode in runs.items():
        figures = {
            mode: {
                key: median([run[key] for run in samples])
                for key in ("reply_s", "scoring_s", "decode_tok_s", "ttft_s", "new_tokens", "prompt_tokens")
            }
            | {"runs": samples}
            for mode, samples in by_mode.items()
        }
        for figure in figures.values():
            figure["reply_s_ratio_to_off"] = ratio(figure["reply_s"], figures["off"]["reply_s"])
            figure["decode_ratio_to_off"] = ratio(figure["decode_tok_s"], figures["off"]["decode_tok_s"])
        prompts[name] = figures
    return {
        "machine": machine_facts(os.cpu_count() or 1),
        "model": {"ir": str(ir)},
        "settings": {"rounds": rounds, "new_tokens": new_tokens, "greedy": True, "modes": MODES},
        "scorer": {"load_s": scorer_load_s, "rss_mb": scorer_mb},
        "prompts": prompts,
    }


LOGPROBS_TABLE_HEADER = ["prompt", "logprobs", "prompt tokens", "decode tok/s", "reply s", "scoring s", "reply vs off"]


def format_logprobs_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for name, figures in report["prompts"].items():
        label = name
        for mode, figure in figures.items():
            rows.append(
                [
                    label,
                    mode,
                    fixed(figure["prompt_tokens"], 0),
                    fixed(figure["decode_tok_s"], 1),
                    fixed(figure["reply_s"], 2),
                    fixed(figure["scoring_s"], 3),
                    fixed(figure["reply_s_ratio_to_off"], 2, "x"),
                ]
            )
            label = ""
    return LOGPROBS_TABLE_HEADER, rows


def logprobs_bench(
    args: argparse.Namespace, models: list[Path], console: Any
) -> tuple[str, dict[str, Any], str, list[str], list[list[str]]]:
    """``ovchat bench --logprobs``'s whole run, as command.run's other modes return it."""
    if len(models) > 1 or args.engines or args.variant or args.plot:
        raise OvchatError("--logprobs takes one --model, and no --engines, --variant or --plot")
    rounds, new_tokens = (2, 48) if args.quick else (5, 128)
    with console.status("starting") as status:
        report = run_logprobs_bench(models[0], rounds, new_tokens, progress=status.update)
    scorer = report["scorer"]
    title = (
        f"{models[0].name} · greedy, up to {new_tokens} new tokens · medians of {rounds} rounds · the scorer "
        f"compiled in {scorer['load_s']:.2f} s and took {scorer['rss_mb']:.0f} MB"
    )
    return ("logprobs", report, title, *format_logprobs_table(report))
