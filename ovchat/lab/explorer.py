"""The next-token explorer: the model's distribution after a text, before and after the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ovchat.errors import OvchatError
from ovchat.lab.sampling import FilteredDistribution, filter_logits
from ovchat.prompt import Message
from ovchat.settings import GenerationSettings

DEFAULT_ROWS = 20


class ExplorableEngine(Protocol):
    """What the explorer needs of an engine (:class:`~ovchat.engine.Engine` has it)."""

    tokenizer: Any

    def encode(self, messages: list[Message]) -> list[int]: ...

    def next_token_logits(self, token_ids: list[int]) -> np.ndarray: ...

    def token_text(self, token_id: int) -> str: ...


@dataclass(frozen=True)
class TokenRow:
    token_id: int
    text: str
    raw: float  # probability under the model alone
    tempered: float  # after the repetition penalty and the temperature, before top-k and top-p
    final: float  # what the sampler draws with
    removed_by: str  # "" when kept, else the filter that removed it: top_k, top_p or greedy


@dataclass(frozen=True)
class Exploration:
    token_ids: list[int]  # the text explored, as tokens
    distribution: FilteredDistribution
    rows: list[TokenRow]  # the likeliest tokens under the model, likeliest first

    @property
    def vocabulary(self) -> int:
        return int(self.distribution.raw.size)

    def to_dict(self) -> dict[str, Any]:
        distribution = self.distribution
        return {
            "tokens": len(self.token_ids),
            "vocabulary": self.vocabulary,
            "kept": distribution.kept,
            "removed_by_top_k": distribution.removed_count("top_k"),
            "removed_by_top_p": distribution.removed_count("top_p"),
            "entropy_bits": distribution.raw_entropy_bits,
            "final_entropy_bits": distribution.final_entropy_bits,
            "rows": [row.__dict__ for row in self.rows],
        }


def prefix_ids(engine: ExplorableEngine, text: str, as_chat: bool) -> list[int]:
    """The tokens to explore after: ``text`` as the user's message of a new chat (its reply's first token
    is explored), or as plain text to continue."""
    if not text.strip():
        raise OvchatError("the text to explore is empty")
    if as_chat:
        return engine.encode([{"role": "user", "content": text}])
    return list(engine.tokenizer(text, add_special_tokens=True)["input_ids"])


def explore(
    engine: ExplorableEngine,
    token_ids: list[int],
    settings: GenerationSettings,
    rows: int = DEFAULT_ROWS,
    seen_ids: list[int] | None = None,
) -> Exploration:
    """The next token after ``token_ids``: the ``rows`` likeliest under the model, and what the settings
    leave of them. ``seen_ids`` are the tokens the repetition penalty counts (default: all of them)."""
    logits = engine.next_token_logits(token_ids)
    distribution = filter_logits(logits, settings, token_ids if seen_ids is None else seen_ids)
    shown = [
        TokenRow(
            token_id=i,
            text=engine.token_text(i),
            raw=float(distribution.raw[i]),
            tempered=float(distribution.tempered[i]),
            final=float(distribution.final[i]),
            removed_by=str(distribution.removed_by[i]),
        )
        for i in distribution.ranked(rows)
    ]
    return Exploration(list(token_ids), distribution, shown)


def visible(text: str) -> str:
    """A token's text with its spaces and line ends made visible (a token is often just a space)."""
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"
