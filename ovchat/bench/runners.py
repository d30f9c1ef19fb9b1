"""The engines ``ovchat bench`` compares, each behind one small runner interface.

Every runner lives in its own worker process (``python -m ovchat.bench.runners ENGINE ...``) so
that its load time is cold, its peak memory is its own, and one engine's threads never share
a process with another's. The worker reads one JSON command per line on stdin and answers one
JSON line on stdout (:mod:`ovchat.bench.workers` is the other end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ovchat.machine import has_amx, process_tree_peak_rss_mb, process_tree_rss_mb
from ovchat.prompt import Message


@dataclass(frozen=True)
class Sample:
    """One measured reply: prompt size, time to the first token, decode speed after it."""

    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    decode_tok_s: float | None


def decode_rate(new_tokens: int, seconds_after_first: float) -> float | None:
    """Tokens per second after the first token; None when there is nothing to divide."""
    if new_tokens < 2 or seconds_after_first <= 0:
        return None
    return (new_tokens - 1) / seconds_after_first


class Runner:
    """One engine, loaded once, answering ``run`` with greedy decoding of at most ``max_new_tokens``."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options

    def run(self, messages: list[Message], prompt: str, max_new_tokens: int) -> Sample:
        raise NotImplementedError

    def forget_prompts(self) -> None:
        """Drop any KV cache kept from earlier prompts, so the next prompt is read in full.

        Only llama.cpp needs this: the bench's cold prompts start with a fresh tag, so no other
        engine's prefix cache can match them.
        """


class OvchatRunner(Runner):
    """The page's path exactly: Engine.stream (default backend) with the streamer, stop cutter and metrics."""

    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__(options)
        from ovchat.engine import Engine
        from ovchat.engine.decoding import decoding_from_options

        decoding = decoding_from_options(options.decoding, options.draft_model)
        config = {**ov_threads(options.threads), **options.ov_config}
        self.engine = Engine.load(options.ir, ov_config=config, decoding=decoding)
        self.steps = _StepCounter(self.engine.backend)
        self.engine.backend = self.steps  # type: ignore[assignment]

    def timed_reply(self, messages: list[Message], max_new_tokens: int) -> dict[str, Any]:
        """One greedy reply through Engine.stream: its text, wall time, stats and the pipeline steps it
        took (``ovchat bench --decoding``: guessing decoders make several tokens a step)."""
        from ovchat.engine import collect

        steps_before = self.steps.count
        started = time.perf_counter()
        reply = collect(self.engine.stream(messages, greedy(max_new_tokens)))
        reply_s = time.perf_counter() - started
        stats = reply.stats
        return {
            "text": reply.text, "reply_s": reply_s, "new_tokens": stats.new_tokens, "ttft_s": stats.ttft_s,
            "decode_tok_s": stats.decode_tok_s, "steps": self.steps.count - steps_before,
        }  # fmt: skip

    def run(self, messages: list[Message], prompt: str, max_new_tokens: int) -> Sample:
        from ovchat.engine import collect

        stats = collect(self.engine.stream(messages, greedy(max_new_tokens))).stats
        return Sample(stats.prompt_tokens, stats.new_tokens, stats.ttft_s or 0.0, stats.decode_tok_s)

    def streaming_cost(self, streamed: list[Message], bare: list[Message], max_new_tokens: int) -> dict[str, float]:
        """Wall time per token of a greedy reply through Engine.stream, and through the same backend
        with no Python callback per token: what streaming costs.

        Two cold chats of the same length, so neither reuses the other's prefix cache.
        """
        from ovchat.engine import collect

        generate_unstreamed = getattr(self.engine.backend, "generate_unstreamed", None)
        if generate_unstreamed is None:
            raise TypeError("the streaming cost is measured on the batched or genai backend")
        settings = greedy(max_new_tokens)
        started = time.perf_counter()
        stats = collect(self.engine.stream(streamed, settings)).stats
        streamed_s = (time.perf_counter() - started) / max(stats.new_tokens, 1)
        request = self.engine.request(self.engine.fit(bare, settings).token_ids, settings)
        started = time.perf_counter()
        token_ids = generate_unstreamed(request)
        bare_s = (time.perf_counter() - started) / max(len(token_ids), 1)
        return {"streamed_s_per_token": streamed_s, "bare_s_per_token": bare_s}


class _StepCounter:
    """The engine's backend, counting its hand-overs of tokens: the openvino-genai loops hand over each
    pipeline step's tokens at once, so this counts steps."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def generate(self, request: Any, on_tokens: Any, should_stop: Any) -> None:
        def counted(token_ids: list[int]) -> None:
            self.count += 1
            on_tokens(token_ids)

        self.backend.generate(request, counted, should_stop)


def greedy(max_new_tokens: int) -> Any:
    """The bench's settings for the ovchat engine: greedy, no repetition penalty, as every other engine."""
    from ovchat.settings import GenerationSettings

    return GenerationSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=max_new_tokens)


class OptimumRunner(Runner):
    """OVModelForCausalLM.generate with no streamer: the floor for the page's Python loop."""

    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__(options)
        from ovchat.engine.backends.optimum import OptimumBackend
        from ovchat.engine.runtime import compile_properties

        backend = OptimumBackend.load(options.ir, "CPU", compile_properties("CPU", ov_threads(options.threads)))
        self.model, self.tokenizer = backend.model, backend.tokenizer

    def run(self, messages: list[Message], prompt: str, max_new_tokens: int) -> Sample:
        return timed_hf_generate(self.model, self.tokenizer, prompt, max_new_tokens)


class PytorchRunner(Runner):
    """transformers on the same weights in fp32 (the checkpoint the export started from)."""

    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__(options)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(options.threads)
        self.model = AutoModelForCausalLM.from_pretrained(options.checkpoint, torch_dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(options.ir)

    def run(self, messages: list[Message], prompt: str, max_new_tokens: int) -> Sample:
        import torch

        with torch.inference_mode():
            return timed_hf_generate(self.model, self.tokenizer, prompt, max_new_tokens)


def timed_hf_generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> Sample:
    """TTFT from a one-token generate, decode speed from the full one: no streamer in the loop."""
    import torch

    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    options = {"do_sample": False, "attention_mask": torch.ones_like(ids), "pad_token_id": tokenizer.pad_token_id}
    started = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **options)
    ttft = time.perf_counter() - started
    started = time.perf_counter()
    output = model.generate(ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, **options)
    total = time.perf_counter() - started
    new_tokens = output.shape[1] - ids.shape[1]
    return Sample(ids.shape[1], new_tokens, ttft, decode_rate(new_tokens, total - ttft))


class GenaiRunner(Runner):
    """openvino-genai's LLMPipeline (C++ generation loop) on the same IR folder."""

    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__(options)
        import openvino_genai

        from ovchat.engine.runtime import compile_properties

        config = compile_properties("CPU", {**ov_threads(options.threads), **options.ov_config})
        self.genai = openvino_genai
        self.pipeline = openvino_genai.LLMPipeline(str(options.ir), "CPU", **config)

    def run(self, messages: list[Message], prompt: str, max_new_tokens: int) -> Sample:
        config = self.genai.GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.min_new_tokens = max_new_tokens
        config.do_sample = False
        config.apply_chat_template = False  # the prompt is already rendered with the chat template
        result = self.pipeline.generate([prompt], config)
        metrics = result.perf_metrics
        per_token_ms = metrics.get_tpot().mean
        return Sample(
            int(metrics.get_num_input_tokens()),
            int(metrics.get_num_generated_tokens()),
            metrics.get_ttft().mean / 1000,
            1000 / per_token_ms if per_token_ms > 0 else None,
        )


class LlamacppRunner(Runner):
    """llama.cpp through llama-cpp-python on the GGUF file the IR was exported from."""

    def __init__(self, options: argparse.Namespace) -> None:
        super().__init__(options)
        import llama_cpp.llama_cpp as bindings
        from llama_cpp import Llama

        # ggml's AMX weight repacking segfaults on the first multi-token batch on this project's
        # Xeon VMs (llama.cpp issue #20824, also seen by ollama users); llama-cpp-python has no
        # switch for it, so on AMX CPUs the model parameters are patched: no extra (repacked) buffer
        # types. Elsewhere repacking stays on, as llama.cpp runs by default.
        if has_amx():
            default_params = bindings.llama_model_default_params

            def params_without_repacking() -> Any:
                params = default_params()
                params.use_extra_bufts = False
                return params

            bindings.llama_model_default_params = params_without_repacking
        # n_ctx=0: the model's whole trained context, as the other engines allow.
        self.llm = Llama(
            model_path=str(options.gguf), n_ctx=0, n_threads=options.threads, n_threads_batch=options.threads,
            verbose=False,
        )  # fmt: skip

    def run(self, messages: list[Message], prompt: str, max_new_tokens: int) -> Sample:
        ids = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        started = time.perf_counter()
        first_at = None
        count = 0
        eos = self.llm.token_eos()
        # No Python logits processor in the timed loop (a ban on the end of turn cost a call per token):
        # the reply ends where the model ends it, and the decode rate counts the tokens it made, as the
        # ovchat row does.
        for token in self.llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
            if token == eos:
                break
            count += 1
            if first_at is None:
                first_at = time.perf_counter()
            if count >= max_new_tokens:
                break
        first_at = first_at or time.perf_counter()
        return Sample(len(ids), count, first_at - started, decode_rate(count, time.perf_counter() - first_at))

    def forget_prompts(self) -> None:
        self.llm.reset()  # llama-cpp-python reuses the longest common prefix of the last prompt otherwise


RUNNERS: dict[str, type[Runner]] = {
    "ovchat": OvchatRunner,
    "optimum": OptimumRunner,
    "genai": GenaiRunner,
    "llamacpp": LlamacppRunner,
    "pytorch": PytorchRunner,
}
ENGINE_NAMES: tuple[str, ...] = tuple(RUNNERS)


def ov_threads(threads: int) -> dict[str, str]:
    return {"INFERENCE_NUM_THREADS": str(threads)}


def parse_ov_config(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as an OpenVINO property dict."""
    config = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        config[key.strip()] = value.strip()
    return config


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ovchat.bench.runners")
    parser.add_argument("engine", choices=ENGINE_NAMES)
    parser.add_argument("--ir", type=Path, required=True)
    parser.add_argument("--gguf", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ov-config", action="append", default=[], help="KEY=VALUE OpenVINO property")
    parser.add_argument("--decoding", help="ovchat only: plain, prompt-lookup or draft")
    parser.add_argument("--draft-model", type=Path, help="ovchat only: the draft model's IR folder")
    options = parser.parse_args(argv)
    options.ov_config = parse_ov_config(options.ov_config)
    reply = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the JSON lines on stdout
    started = time.perf_counter()
    runner = RUNNERS[options.engine](options)
    print(json.dumps({"ready": True, "load_s": time.perf_counter() - started}), file=reply, flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "run":
            if command.get("cold", True):
                runner.forget_prompts()
            sample = runner.run(command["messages"], command["prompt"], command["max_new_tokens"])
            answer: dict[str, Any] = asdict(sample)
        elif command["op"] == "timed_reply" and isinstance(runner, OvchatRunner):
            answer = runner.timed_reply(command["messages"], command["max_new_tokens"])
        elif command["op"] == "streaming_cost" and isinstance(runner, OvchatRunner):
            answer = runner.streaming_cost(command["streamed"], command["bare"], command["max_new_tokens"])
        elif command["op"] == "stats":
            # The tree's: the page's loop keeps the model in a child process of the worker.
            answer = {"peak_rss_mb": process_tree_peak_rss_mb(), "rss_mb": process_tree_rss_mb()}
        else:
            answer = {"error": f"unknown op {command['op']!r}"}
        print(json.dumps(answer), file=reply, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
