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
from ovchat.engine.decoding import DECODING_OPTION, DRAFT, PLAIN_DECODING, PROMPT_LOOKUP, Decoding
from ovchat.errors import OvchatError
from ovchat.model_folder import read_model_configs
from ovchat.settings import GenerationSettings

# PagedAttention with prefix caching: it read long prompts several times faster than the stateful
# SDPA model, decoded as fast, and reuses a chat's earlier turns; its cost is a slower load (figures
# in README, Performance). ov_config={"ATTENTION_BACKEND": "SDPA"} picks the stateful SDPA model.
DEFAULT_ATTENTION = "PA"


# Texts both tokenizers must split alike for a draft model to be usable: prose, code, digits, other scripts.
_VOCABULARY_SAMPLES = (
    "Could you summarise this paragraph in two sentences, please?",
    "def add(a: int, b: int) -> int:\n    return a + b  # 0123456789",
    "数学是被发明还是被发现的？ Größe, café, naïve 😀",
)


def generation_config(
    settings: GenerationSettings, end_token_ids: frozenset[int], decoding: Decoding = PLAIN_DECODING
) -> Any:
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
    if decoding.guesses:  # a prompt-lookup or draft pipeline refuses a request without them
        config.num_assistant_tokens = decoding.assistant_tokens
    if decoding.mode == PROMPT_LOOKUP:
        config.max_ngram_size = decoding.ngram_size
    return config


def pop_decoding(properties: dict[str, Any]) -> Decoding:
    """The Decoding that Engine.load put among ``properties`` (taken out: OpenVINO would refuse it)."""
    decoding = properties.pop(DECODING_OPTION, None) or PLAIN_DECODING
    if not isinstance(decoding, Decoding):
        raise OvchatError(f"the {DECODING_OPTION!r} option must be a Decoding, not {decoding!r}")
    return decoding


def decoding_properties(decoding: Decoding, device: str) -> dict[str, Any]:
    """The pipeline's properties for ``decoding`` (both openvino-genai pipelines take the same ones)."""
    if decoding.mode == PROMPT_LOOKUP:
        return {"prompt_lookup": True}
    if decoding.mode == DRAFT:
        # No properties of its own: openvino-genai then compiles the draft with the main model's.
        return {"draft_model": openvino_genai.draft_model(str(decoding.draft_model), device)}
    return {}


def check_draft_vocabulary(folder: Path, decoding: Decoding) -> None:
    """Refuse a draft model whose tokens are not the target's. openvino-genai's own check compares
    only the number of tokens of one sentence and the special ids, so a draft of another vocabulary of
    the same size would load and make guesses of the wrong tokens."""
    if decoding.draft_model is None:
        return
    draft = decoding.draft_model
    sizes = [read_model_configs(where)[0].get("vocab_size") for where in (folder, draft)]
    if sizes[0] != sizes[1]:
        raise OvchatError(f"draft model {draft} has {sizes[1]} tokens and {folder} has {sizes[0]}; they must match")
    target, guesser = openvino_genai.Tokenizer(str(folder)), openvino_genai.Tokenizer(str(draft))
    mismatch = f"draft model {draft} does not share {folder}'s tokenizer"
    for text in _VOCABULARY_SAMPLES:
        ids = [list(each.encode(text, add_special_tokens=False).input_ids.data[0]) for each in (target, guesser)]
        if ids[0] != ids[1]:
            raise OvchatError(f"{mismatch}: it splits {text[:24]!r}... into other tokens")
    if target.get_eos_token_id() != guesser.get_eos_token_id():
        raise OvchatError(f"{mismatch}: its end-of-text token differs")


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

    def __init__(self, pipeline: Any, folder: Path, decoding: Decoding = PLAIN_DECODING) -> None:
        super().__init__(pipeline.get_tokenizer(), folder)
        self.pipeline = pipeline
        self.decoding = decoding
        self._turn = threading.Lock()

    @classmethod
    def load(cls, folder: Path, device: str, properties: dict[str, Any]) -> GenaiBackend:
        options: dict[str, Any] = {"ATTENTION_BACKEND": DEFAULT_ATTENTION, **properties}
        decoding = pop_decoding(options)
        check_draft_vocabulary(folder, decoding)
        options.update(decoding_properties(decoding, device))
        if options["ATTENTION_BACKEND"] == "PA":
            scheduler = openvino_genai.SchedulerConfig()
            # Keep the KV blocks of earlier prompts: the next turn of a chat starts with the same
            # tokens, so only its new message is read.
            scheduler.enable_prefix_caching = True
            options["scheduler_config"] = scheduler
        return cls(openvino_genai.LLMPipeline(str(folder), device, **options), folder, decoding)

    def generate(self, request: GenerationRequest, on_tokens: OnTokens, should_stop: ShouldStop) -> None:
        config = generation_config(request.settings, request.end_token_ids, self.decoding)
        with self._turn:
            if should_stop():  # stopped, or the consumer left, while this reply waited its turn
                return
            self.pipeline.generate(_tokenized(request.prompt_ids), config, _TokenStreamer(on_tokens, should_stop))

    def generate_unstreamed(self, request: GenerationRequest) -> list[int]:
        """The whole reply's ids with no Python callback per token: the bench measures what streaming
        costs against it."""
        config = generation_config(request.settings, request.end_token_ids, self.decoding)
        with self._turn:
            return list(self.pipeline.generate(_tokenized(request.prompt_ids), config).tokens[0])
