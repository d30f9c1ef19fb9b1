"""optimum-intel's OVModelForCausalLM.generate: the transformers generation loop in Python over OpenVINO."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from optimum.intel import OVModelForCausalLM
from transformers import AutoTokenizer, StoppingCriteria, StoppingCriteriaList, TextStreamer

from ovchat.engine.backends import GenerationRequest, OnTokens, ShouldStop
from ovchat.model_folder import read_model_configs


class _TokenPipe:
    """The streamer generate() feeds: the prompt first (skipped), then each new token as a tensor."""

    def __init__(self, on_tokens: OnTokens) -> None:
        self.on_tokens = on_tokens
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if self.prompt_seen:
            self.on_tokens(value.reshape(-1).tolist())
        self.prompt_seen = True

    def end(self) -> None:
        pass  # the engine ends the text itself, after generate returns


class _ShouldStop(StoppingCriteria):
    def __init__(self, should_stop: ShouldStop) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool)


class HfDetokenizer(TextStreamer):
    """transformers' own incremental decoding (whole words and characters, special tokens skipped)."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self._pieces: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._pieces.append(text)

    def feed(self, token_ids: list[int]) -> str:
        self.put(torch.tensor(token_ids))
        return self._drain()

    def end(self) -> str:  # type: ignore[override]
        super().end()
        return self._drain()

    def _drain(self) -> str:
        text, self._pieces = "".join(self._pieces), []
        return text


class OptimumBackend:
    """One OVModelForCausalLM; its stateful IR has one KV cache, so callers take turns."""

    def __init__(self, model: Any, tokenizer: Any, folder: Path) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_config, self.generation_config = read_model_configs(folder)
        self._turn = threading.Lock()

    @classmethod
    def load(cls, folder: Path, device: str, properties: dict[str, Any]) -> OptimumBackend:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return cls(OVModelForCausalLM.from_pretrained(folder, device=device, ov_config=properties), tokenizer, folder)

    def detokenizer(self) -> HfDetokenizer:
        return HfDetokenizer(self.tokenizer)

    def generate(self, request: GenerationRequest, on_tokens: OnTokens, should_stop: ShouldStop) -> None:
        settings = request.settings
        with self._turn:
            if should_stop():  # stopped, or the consumer left, while this reply waited its turn
                return
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            self.model.generate(
                input_ids=torch.tensor([request.prompt_ids]),
                attention_mask=torch.ones(1, len(request.prompt_ids), dtype=torch.long),
                streamer=_TokenPipe(on_tokens),
                stopping_criteria=StoppingCriteriaList([_ShouldStop(should_stop)]),
                eos_token_id=sorted(request.end_token_ids) or None,
                pad_token_id=request.pad_token_id,
                **settings.to_generate_kwargs(),
            )
