"""openvino-genai's LLMPipeline: a C++ generation loop, with its own tokenizer. No transformers, no torch."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai

from ovchat.engine.backends import GenerationRequest, OnTokens, ShouldStop
from ovchat.engine.backends.genai_tokenizer import GenaiDetokenizer, GenaiTokenizer
from ovchat.model_folder import read_model_configs
from ovchat.settings import GenerationSettings

# PagedAttention with prefix caching: it read long prompts several times faster than the stateful
# SDPA model, decoded as fast, and reuses a chat's earlier turns; its cost is a slower load (figures
# in README, Performance). ov_config={"ATTENTION_BACKEND": "SDPA"} picks the stateful SDPA model.
DEFAULT_ATTENTION = "PA"


def generation_config(settings: GenerationSettings, end_token_ids: frozenset[int]) -> Any:
    """openvino-genai's GenerationConfig for ``settings``: built here and nowhere else."""
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = settings.max_new_tokens
    config.repetition_penalty = settings.repetition_penalty
    config.frequency_penalty = settings.frequency_penalty
    config.presence_penalty = settings.presence_penalty
    config.stop_token_ids = set(end_token_ids)
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
    return config


def prompt_tensor(prompt_ids: list[int]) -> Any:
    """The prompt as the pipelines take token ids: a batch of one."""
    return ov.Tensor(np.array([prompt_ids], dtype=np.int64))


def _tokenized(prompt_ids: list[int]) -> Any:
    return openvino_genai.TokenizedInputs(prompt_tensor(prompt_ids), ov.Tensor(np.ones((1, len(prompt_ids)), np.int64)))


class _TokenStreamer(openvino_genai.StreamerBase):
    """Hands each token to the engine and stops the C++ loop when asked."""

    def __init__(self, on_tokens: OnTokens, should_stop: ShouldStop) -> None:
        super().__init__()
        self.on_tokens = on_tokens
        self.should_stop = should_stop

    def write(self, token: Any) -> Any:
        self.on_tokens(token if isinstance(token, list) else [token])
        return openvino_genai.StreamingStatus.STOP if self.should_stop() else openvino_genai.StreamingStatus.RUNNING

    def end(self) -> None:
        pass  # the engine ends the text itself, after generate returns


class GenaiPipelineBackend:
    """What the openvino-genai backends share: openvino-genai's tokenizer and detokenizer (no
    transformers), and the model's configs read as JSON."""

    def __init__(self, tokenizer: Any, folder: Path) -> None:
        self._genai_tokenizer = tokenizer  # an openvino_genai.Tokenizer
        self.tokenizer = GenaiTokenizer(tokenizer, folder)
        self.model_config, self.generation_config = read_model_configs(folder)

    def detokenizer(self) -> GenaiDetokenizer:
        return GenaiDetokenizer(self._genai_tokenizer)


class GenaiBackend(GenaiPipelineBackend):
    """One LLMPipeline; it runs one generation at a time, so callers take turns."""

    def __init__(self, pipeline: Any, folder: Path) -> None:
        super().__init__(pipeline.get_tokenizer(), folder)
        self.pipeline = pipeline
        self._turn = threading.Lock()

    @classmethod
    def load(cls, folder: Path, device: str, properties: dict[str, Any]) -> GenaiBackend:
        options: dict[str, Any] = {"ATTENTION_BACKEND": DEFAULT_ATTENTION, **properties}
        if options["ATTENTION_BACKEND"] == "PA":
            scheduler = openvino_genai.SchedulerConfig()
            # Keep the KV blocks of earlier prompts: the next turn of a chat starts with the same
            # tokens, so only its new message is read.
            scheduler.enable_prefix_caching = True
            options["scheduler_config"] = scheduler
        return cls(openvino_genai.LLMPipeline(str(folder), device, **options), folder)

    def generate(self, request: GenerationRequest, on_tokens: OnTokens, should_stop: ShouldStop) -> None:
        config = generation_config(request.settings, request.end_token_ids)
        with self._turn:
            if should_stop():  # stopped, or the consumer left, while this reply waited its turn
                return
            self.pipeline.generate(_tokenized(request.prompt_ids), config, _TokenStreamer(on_tokens, should_stop))

    def generate_unstreamed(self, request: GenerationRequest) -> list[int]:
        """The whole reply's ids with no Python callback per token: the bench measures what streaming
        costs against it."""
        config = generation_config(request.settings, request.end_token_ids)
        with self._turn:
            return list(self.pipeline.generate(_tokenized(request.prompt_ids), config).tokens[0])
