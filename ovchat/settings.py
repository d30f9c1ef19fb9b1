"""Sampling settings: one immutable, validated object shared by the page, the CLI and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ovchat.errors import OvchatError


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample a reply. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40  # 0 disables top-k
    repetition_penalty: float = 1.1
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Accept a list from JSON or a form, keep a tuple so the object stays hashable.
        object.__setattr__(self, "stop", tuple(self.stop))
        checks = (
            (
                isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= 32768,
                f"max_new_tokens must be an integer in [1, 32768], not {self.max_new_tokens!r}",
            ),
            (0.0 <= self.temperature <= 5.0, f"temperature must be in [0, 5], not {self.temperature!r}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], not {self.top_p!r}"),
            (
                isinstance(self.top_k, int) and 0 <= self.top_k <= 10000,
                f"top_k must be an integer in [0, 10000], not {self.top_k!r}",
            ),
            (
                0.5 <= self.repetition_penalty <= 3.0,
                f"repetition_penalty must be in [0.5, 3], not {self.repetition_penalty!r}",
            ),
            (
                self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**32),
                f"seed must be an integer in [0, 2^32) or empty, not {self.seed!r}",
            ),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty text"),
        )
        for ok, message in checks:
            if not ok:
                raise OvchatError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def with_changes(self, **changes: Any) -> GenerationSettings:
        return replace(self, **changes)

    def to_generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``transformers`` ``generate``; stop strings are handled by the engine."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs
