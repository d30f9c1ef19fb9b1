"""The inference engine: an exported IR folder, streamed replies, cancel and metrics.

Everything that generates text (the page, the terminal chat, the smoke check of an
export, the benchmarks) goes through :meth:`Engine.stream`.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ovchat.chat import (
    ChatTemplate,
    FittedPrompt,
    Message,
    PromptTokenizer,
    choose_template,
    fit_to_context,
    render_prompt,
)
from ovchat.errors import OvchatError
from ovchat.genai_tokenizer import GenaiTextStreamer, GenaiTokenizer, read_json
from ovchat.paths import cache_dir
from ovchat.settings import GenerationSettings
from ovchat.sources import IR_BIN, IR_XML

# f32 inference: bf16, which the CPU plugin picks on AVX-512-BF16 CPUs, decoded slower on
# the Zen 4 machines this was measured on, and f32 matches PyTorch's greedy tokens.
DEFAULT_CPU_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}
# How long the consumer waits for the worker before checking whether it is still alive.
_POLL_SECONDS = 0.1
# A reply that produces no token for this long is ended with an error instead of hanging.
STALL_TIMEOUT_S = 600.0
# Used when the model's config names no context length.
FALLBACK_CONTEXT_LENGTH = 2048

FINISH_REASONS = ("eos", "length", "stop", "cancelled")


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed reply. The last chunk has ``finish_reason`` and the counts."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float | None = None
    decode_tok_s: float | None = None
    trimmed_turns: int = 0


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str
    prompt_tokens: int
    new_tokens: int
    ttft_s: float | None
    decode_tok_s: float | None
    trimmed_turns: int = 0


def config_value(config: Any, name: str) -> Any:
    """A field of a Hugging Face config: a config object, or config.json read as a dict."""
    return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)


def model_context_length(config: Any) -> int:
    """The longest sequence the model was trained for, from its Hugging Face config (object or dict)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config_value(config, name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return FALLBACK_CONTEXT_LENGTH


def available_devices() -> list[tuple[str, str]]:
    """The devices OpenVINO can run on here, as (device, full name) pairs."""
    import openvino as ov

    core = ov.Core()
    return [(device, str(core.get_property(device, "FULL_DEVICE_NAME"))) for device in core.available_devices]


def check_device(device: str) -> None:
    """Fail early, naming the devices that exist, instead of deep inside compile_model."""
    base = device.upper().split(":")[0].split(".")[0]
    if base in ("AUTO", "MULTI", "HETERO"):
        return
    names = [name for name, _ in available_devices()]
    if device.upper() not in names and base not in {name.split(".")[0] for name in names}:
        raise OvchatError(f"device {device} is not available here; available: {', '.join(names)} or AUTO")


BACKENDS: tuple[str, ...] = ("genai", "optimum")
# openvino-genai's C++ loop decoded faster and filled long prompts faster than the transformers
# loop in Python, with the same greedy tokens (`ovchat bench`; see README, Performance).
DEFAULT_BACKEND = "genai"


# PagedAttention, with prefix caching: on CPU it read a 4,000-token prompt 4.4x faster than the
# stateful SDPA model, decoded as fast, and reuses a chat's earlier turns (`ovchat bench`,
# `ovchat bench --scaling`; see README, Performance). Its one cost: a warm load of ~1.7 s instead
# of ~0.6 s. ov_config={"ATTENTION_BACKEND": "SDPA"} picks the stateful SDPA model.
DEFAULT_ATTENTION = "PA"


@dataclass(frozen=True)
class GenaiModel:
    """openvino-genai's pipeline, with the Hugging Face configs the engine reads (context, eos) as dicts.

    The configs are read as JSON, not through transformers, which imports torch (seconds).
    """

    pipeline: Any
    config: dict[str, Any]
    generation_config: dict[str, Any]

    @classmethod
    def load(cls, folder: Path, device: str, ov_config: dict[str, str]) -> GenaiModel:
        import openvino_genai

        options: dict[str, Any] = {"ATTENTION_BACKEND": DEFAULT_ATTENTION, **ov_config}
        if options["ATTENTION_BACKEND"] == "PA":
            scheduler = openvino_genai.SchedulerConfig()
            # Keep the KV blocks of earlier prompts: the next turn of a chat starts with the same
            # tokens, so only its new message is read (TTFT ~40 ms instead of ~1 s on a 900-token chat).
            scheduler.enable_prefix_caching = True
            options["scheduler_config"] = scheduler
        pipeline = openvino_genai.LLMPipeline(str(folder), device, **options)
        config = read_json(folder / "config.json")
        # Without generation_config.json, transformers takes the generation settings from config.json.
        generation = read_json(folder / "generation_config.json") or {"eos_token_id": config.get("eos_token_id")}
        return cls(pipeline, config, generation)


class EngineTokenizer(PromptTokenizer, Protocol):
    """What the engine needs of a tokenizer: a Hugging Face tokenizer (optimum backend) or GenaiTokenizer."""

    pad_token_id: int | None
    unk_token_id: int | None

    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...

    def convert_tokens_to_ids(self, tokens: Any) -> Any: ...


class StreamingEngine(Protocol):
    """What the terminal chat and the page need of an engine; tests pass scripted fakes."""

    path: Path
    device: str

    def stream(
        self, messages: list[Message], settings: GenerationSettings | None = None, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]: ...


def missing_ir_files(path: Path) -> list[str]:
    required = (IR_XML, IR_BIN, "config.json", "tokenizer_config.json")
    return [name for name in required if not (path / name).is_file()]


class _CountingStreamer:
    """Wraps a text streamer (transformers' TextIteratorStreamer or GenaiTextStreamer) to count tokens,
    time the first one and report progress. Token ids come as a tensor, an array or a list."""

    def __init__(self, streamer: Any, on_token: Callable[[], None]) -> None:
        self.inner = streamer
        self.on_token = on_token
        self.token_ids: list[int] = []
        self.first_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self.token_ids.extend(value.reshape(-1).tolist() if hasattr(value, "reshape") else list(value))
        self._prompt_seen = True
        self.on_token()
        self.inner.put(value)

    def end(self) -> None:
        self.inner.end()


class Engine:
    """One loaded model. Replies are serialized: a pipeline runs one generation at a time.

    Several threads may call :meth:`stream` at once; each reply waits for the previous
    one to finish, so tokens of two replies never mix.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: EngineTokenizer,
        path: Path,
        device: str,
        template: str = "auto",
        context_length: int | None = None,
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        self.backend = backend
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.device = device
        self.template: ChatTemplate = choose_template(tokenizer, template)
        self.context_length = context_length or model_context_length(model.config)
        self.stall_timeout_s = STALL_TIMEOUT_S
        self._lock = threading.Lock()
        # Last time any reply made progress; a reply waiting for the lock is not stalled
        # while another one is producing tokens.
        self._heartbeat = time.monotonic()
        eos = config_value(model.generation_config, "eos_token_id")
        self.eos_token_ids: set[int] = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.template.end_of_turn is not None:
            end_id = tokenizer.convert_tokens_to_ids(self.template.end_of_turn)
            if isinstance(end_id, int) and end_id != tokenizer.unk_token_id:
                self.eos_token_ids.add(end_id)
        pad = tokenizer.pad_token_id
        self.pad_token_id: int | None = pad if pad is not None else min(self.eos_token_ids, default=None)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "CPU",
        ov_config: dict[str, str] | None = None,
        use_cache_dir: bool = True,
        template: str = "auto",
        context_length: int | None = None,
        backend: str = DEFAULT_BACKEND,
    ) -> Engine:
        """Load an IR folder made by ``export_ir.py``.

        ``backend`` picks the generation loop: ``optimum`` (OVModelForCausalLM.generate, the
        transformers loop in Python) or ``genai`` (openvino-genai's LLMPipeline, a C++ loop, with
        its own tokenizer; it never imports transformers or torch). Both share the stream loop,
        stop cutter, cancel and metrics.
        """
        if backend not in BACKENDS:
            raise OvchatError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise OvchatError(f"model folder {folder} does not exist; export one with export_ir.py")
        missing = missing_ir_files(folder)
        if missing:
            raise OvchatError(f"{folder} is not an exported model: missing {', '.join(missing)}")
        check_device(device)
        config = dict(DEFAULT_CPU_CONFIG) if device.upper() == "CPU" else {"PERFORMANCE_HINT": "LATENCY"}
        if use_cache_dir:
            # optimum-intel fills the compiled-model cache only for GPU; on CPU it must be asked for.
            cache = cache_dir()
            cache.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache)
        config.update(ov_config or {})
        tokenizer: EngineTokenizer
        try:
            if backend == "genai":
                # No transformers (and so no torch) on this path: the pipeline's own tokenizer and JSON configs.
                model: Any = GenaiModel.load(folder, device, config)
                tokenizer = GenaiTokenizer(model.pipeline.get_tokenizer(), folder)
            else:
                from optimum.intel import OVModelForCausalLM
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(folder)
                model = OVModelForCausalLM.from_pretrained(folder, device=device, ov_config=config)
        except Exception as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise OvchatError(f"could not load {folder}: {first_line}") from error
        return cls(model, tokenizer, folder, device, template=template, context_length=context_length, backend=backend)

    def encode(self, messages: list[Message]) -> list[int]:
        prompt = render_prompt(self.tokenizer, messages, self.template)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def fit(self, messages: list[Message], settings: GenerationSettings) -> FittedPrompt:
        """The prompt for ``messages``, with the oldest turns dropped if it would not fit the context."""
        return fit_to_context(messages, self.encode, self.context_length, settings.max_new_tokens)

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        """Stream the assistant's reply to ``messages`` as text chunks, then a final chunk.

        Old turns that do not fit the context are left out (counted in the final
        chunk's ``trimmed_turns``). ``cancel`` (set from any thread) stops generation
        after the current token; the final chunk then says ``cancelled`` and the text so
        far has been yielded. An error in the worker thread is re-raised here.
        """
        settings = settings or GenerationSettings()
        # halt ends this reply (a stop string, or the consumer leaving); cancel is the caller's.
        halt = threading.Event()
        fitted = self.fit(messages, settings)
        prompt_ids = fitted.token_ids
        streamer = self._text_streamer()
        counting = _CountingStreamer(streamer, self._beat)
        failure: list[BaseException] = []

        def should_stop() -> bool:
            return halt.is_set() or (cancel is not None and cancel.is_set())

        def work() -> None:
            try:
                with self._lock:
                    self._beat()
                    if halt.is_set():  # the consumer left while this reply waited for the lock
                        streamer.end()
                        return
                    if self.backend == "genai":
                        self._generate_genai(prompt_ids, settings, counting, should_stop)
                    else:
                        self._generate_optimum(prompt_ids, settings, counting, should_stop)
            except BaseException as error:  # handed to the consumer, never lost in the thread
                failure.append(error)
                streamer.end()

        started = time.perf_counter()
        self._beat()
        worker = threading.Thread(target=work, name="ovchat-generate", daemon=True)
        worker.start()
        stop_cut = _StopCutter(settings.stop + self.template.stop)
        finish: str | None = None
        stalled = False
        try:
            while True:
                try:
                    piece = streamer.text_queue.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    if not worker.is_alive() and streamer.text_queue.empty():
                        break
                    if time.monotonic() - self._heartbeat > self.stall_timeout_s:
                        stalled = True
                        raise OvchatError(
                            f"the model produced nothing for {self.stall_timeout_s:.0f} s and was stopped; "
                            "restart ovchat if this repeats"
                        ) from None
                    continue
                if piece is streamer.stop_signal:
                    break
                visible, stopped = stop_cut.feed(piece)
                if visible:
                    yield Chunk(text=visible)
                if stopped:
                    finish = "stop"
                    halt.set()
                    break
            worker.join()
            if failure:
                raise failure[0]
            if finish is None:
                tail = stop_cut.flush()
                if tail:
                    yield Chunk(text=tail)
        finally:
            # Also reached when the consumer stops iterating: end the worker and free the lock.
            # A stalled worker cannot be joined; it is a daemon thread and is left behind.
            halt.set()
            worker.join(timeout=0 if stalled else None)
        new_ids = counting.token_ids
        if finish is None:
            if new_ids and new_ids[-1] in self.eos_token_ids:
                finish = "eos"
            elif len(new_ids) >= settings.max_new_tokens:
                finish = "length"
            else:
                finish = "cancelled"
        ttft = counting.first_token_at - started if counting.first_token_at is not None else None
        decode_seconds = time.perf_counter() - counting.first_token_at if counting.first_token_at else 0.0
        decode_rate = (len(new_ids) - 1) / decode_seconds if len(new_ids) > 1 and decode_seconds > 0 else None
        yield Chunk(
            finish_reason=finish,
            prompt_tokens=len(prompt_ids),
            new_tokens=len(new_ids),
            ttft_s=ttft,
            decode_tok_s=decode_rate,
            trimmed_turns=fitted.trimmed_turns,
        )

    def _text_streamer(self) -> Any:
        """Token ids in, text out through ``text_queue``: whole characters, prompt and special tokens skipped."""
        if self.backend == "genai":
            return GenaiTextStreamer(self.model.pipeline.get_tokenizer())
        from transformers import TextIteratorStreamer

        return TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def _generate_optimum(
        self, prompt_ids: list[int], settings: GenerationSettings, streamer: Any, should_stop: Callable[[], bool]
    ) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), should_stop(), dtype=torch.bool)

        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        eos_ids = sorted(self.eos_token_ids)  # the template's end of turn included
        self.model.generate(
            input_ids=torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled()]),
            eos_token_id=eos_ids or None,
            pad_token_id=self.pad_token_id,
            **settings.to_generate_kwargs(),
        )

    def _generate_genai(
        self, prompt_ids: list[int], settings: GenerationSettings, streamer: Any, should_stop: Callable[[], bool]
    ) -> None:
        """openvino-genai's C++ loop; its tokens go through the same counting streamer as the optimum path's."""
        import numpy as np
        import openvino as ov
        import openvino_genai

        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = settings.max_new_tokens
        config.repetition_penalty = settings.repetition_penalty
        config.stop_token_ids = set(self.eos_token_ids)
        config.apply_chat_template = False  # the prompt is already rendered and tokenized
        if not settings.greedy:
            config.do_sample = True
            config.temperature = settings.temperature
            config.top_p = settings.top_p
            if settings.top_k:
                config.top_k = settings.top_k
            # genai's generator starts from seed 0 every call unless told otherwise, which would
            # make every unseeded reply (and every Regenerate) the same.
            config.rng_seed = settings.seed if settings.seed is not None else random.getrandbits(32)

        class _Streamer(openvino_genai.StreamerBase):
            def write(self, token: Any) -> Any:
                streamer.put(token if isinstance(token, list) else [token])
                stop = should_stop()
                return openvino_genai.StreamingStatus.STOP if stop else openvino_genai.StreamingStatus.RUNNING

            def end(self) -> None:
                streamer.end()

        ids = np.array([prompt_ids], dtype=np.int64)
        streamer.put(prompt_ids)  # the prompt, which the streamer skips, as transformers' generate does
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        self.model.pipeline.generate(inputs, config, _Streamer())

    def _beat(self) -> None:
        self._heartbeat = time.monotonic()

    def generate(
        self,
        messages: list[Message],
        settings: GenerationSettings | None = None,
        cancel: threading.Event | None = None,
    ) -> Reply:
        """The whole reply at once: a join over :meth:`stream`."""
        parts: list[str] = []
        for chunk in self.stream(messages, settings, cancel):
            if chunk.finish_reason is None:
                parts.append(chunk.text)
            else:
                return Reply(
                    text="".join(parts),
                    finish_reason=chunk.finish_reason,
                    prompt_tokens=chunk.prompt_tokens,
                    new_tokens=chunk.new_tokens,
                    ttft_s=chunk.ttft_s,
                    decode_tok_s=chunk.decode_tok_s,
                    trimmed_turns=chunk.trimmed_turns,
                )
        raise AssertionError("stream ended without a final chunk")  # stream always yields one


class _StopCutter:
    """Holds back text that may be the start of a stop string, so a stop string is never shown."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self.pending += text
        if not self.stops:
            return self._release(len(self.pending)), False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            visible = self.pending[: min(hits)]
            self.pending = ""
            return visible, True
        keep = max((_overlap(self.pending, s) for s in self.stops), default=0)
        return self._release(len(self.pending) - keep), False

    def flush(self) -> str:
        return self._release(len(self.pending))

    def _release(self, upto: int) -> str:
        # A reply cut at max_new_tokens may end inside a multi-byte character, which the
        # tokenizer decodes as U+FFFD; it is never shown.
        visible, self.pending = self.pending[:upto], self.pending[upto:]
        return visible.replace("\ufffd", "")


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0
