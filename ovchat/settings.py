"""Sampling settings: one immutable, validated object shared by the page, the CLI and the benchmarks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from ovchat.errors import OvchatError

MAX_LOGPROBS = 20  # OpenAI's limit on top_logprobs


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample a reply. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40  # 0 disables top-k
    repetition_penalty: float = 1.1
    # OpenAI's penalties: subtract (count x frequency + presence) from a seen token's logit.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    # Off (None) by default, so a chat pays nothing for it; N in [0, MAX_LOGPROBS] returns each reply
    # token's log-probability under the model with its N likeliest alternatives (OpenAI's top_logprobs).
    logprobs: int | None = None

    def __post_init__(self) -> None:
        # A single string is one stop string; a list (from JSON or a form) becomes a tuple so
        # the object stays hashable.
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (tuple, list)) or not all(isinstance(s, str) and s for s in stop):
            raise OvchatError("stop strings must be a list of non-empty texts")
        object.__setattr__(self, "stop", tuple(stop))
        _check_int("max_new_tokens", self.max_new_tokens, 1, 32768)
        _check_float("temperature", self.temperature, 0.0, 5.0)
        _check_float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_int("top_k", self.top_k, 0, 10000)
        _check_float("repetition_penalty", self.repetition_penalty, 0.5, 3.0)
        _check_float("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_float("presence_penalty", self.presence_penalty, -2.0, 2.0)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**32 - 1)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0, MAX_LOGPROBS)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def with_changes(self, **changes: Any) -> GenerationSettings:
        return replace(self, **changes)

    def to_generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``transformers`` ``generate``; stop strings are handled by the engine."""
        if self.frequency_penalty or self.presence_penalty:
            raise OvchatError("the optimum loop has no frequency or presence penalty; use the batched or genai loop")
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


def _check_int(name: str, value: object, low: int, high: int) -> None:
    # bool is an int to Python, but True is no token count.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise OvchatError(f"{name} must be an integer in [{low}, {high}], not {value!r}")


def _check_float(name: str, value: object, low: float, high: float, low_open: bool = False) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    above_low = is_number and (value > low if low_open else value >= low)  # type: ignore[operator]
    if not (is_number and above_low and value <= high):  # type: ignore[operator]
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise OvchatError(f"{name} must be a number in {interval}, not {value!r}")
