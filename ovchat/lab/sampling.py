"""What the sampling settings do to one next-token distribution: the explorer's arithmetic.

Pure numpy, no model. :func:`filter_logits` follows openvino-genai 2026.4's sampler step by step
(``src/cpp/src/sampling/logit_processor.hpp``), so what the page shows is what the engine samples
from: the repetition penalty on every token already in the text, then top-k on the logits, then the
temperature's softmax over the tokens left, then top-p on those probabilities (tokens in order of
probability are kept until their sum exceeds p; the token that crosses p is kept), and the draw from
what is left, renormalised. Temperature 0 is greedy: the likeliest token only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ovchat.settings import GenerationSettings

KEPT = ""
REMOVED_BY_TOP_K = "top_k"
REMOVED_BY_TOP_P = "top_p"
REMOVED_BY_GREEDY = "greedy"


@dataclass(frozen=True)
class FilteredDistribution:
    """One step's distribution before and after the settings, over the whole vocabulary."""

    raw: np.ndarray  # softmax of the model's logits (temperature 1, no penalty)
    tempered: np.ndarray  # softmax of the penalised logits at the temperature, before top-k and top-p
    final: np.ndarray  # what the sampler draws from: zero for every removed token, summing to 1
    removed_by: np.ndarray  # per token: KEPT, or the filter that removed it first

    @property
    def kept(self) -> int:
        return int(np.count_nonzero(self.final))

    @property
    def raw_entropy_bits(self) -> float:
        return entropy_bits(self.raw)

    @property
    def final_entropy_bits(self) -> float:
        return entropy_bits(self.final)

    def removed_count(self, by: str) -> int:
        return int(np.count_nonzero(self.removed_by == by))

    def ranked(self, count: int) -> list[int]:
        """The ``count`` likeliest token ids under the raw distribution, likeliest first."""
        count = min(count, self.raw.size)
        best = np.argpartition(-self.raw, count - 1)[:count]
        return [int(i) for i in best[np.argsort(-self.raw[best], kind="stable")]]


def softmax(logits: np.ndarray) -> np.ndarray:
    values = logits.astype(np.float64)
    shifted = np.exp(values - values[np.isfinite(values)].max())
    return shifted / shifted.sum()


def entropy_bits(probabilities: np.ndarray) -> float:
    positive = probabilities[probabilities > 0]
    return max(0.0, float(-(positive * np.log2(positive)).sum()))  # one sure token: 0, not -0.0


def apply_repetition_penalty(logits: np.ndarray, seen_ids: Iterable[int], penalty: float) -> np.ndarray:
    """Every token already in the text made less likely: a positive logit divided by the penalty, a
    negative one multiplied (as openvino-genai and transformers do)."""
    penalised = logits.astype(np.float64).copy()
    if penalty == 1.0:
        return penalised
    ids = np.array(sorted({i for i in seen_ids if 0 <= i < logits.size}), dtype=np.int64)
    if ids.size:
        values = penalised[ids]
        penalised[ids] = np.where(values >= 0, values / penalty, values * penalty)
    return penalised


def filter_logits(
    logits: np.ndarray, settings: GenerationSettings, seen_ids: Iterable[int] = ()
) -> FilteredDistribution:
    """The distribution the sampler draws the next token from, with the settings' temperature, top-k,
    top-p and repetition penalty (``seen_ids``: the tokens already in the text)."""
    raw = softmax(logits)
    penalised = apply_repetition_penalty(logits, seen_ids, settings.repetition_penalty)
    removed = np.full(logits.size, KEPT, dtype=object)
    if settings.greedy:
        best = int(np.argmax(penalised))
        final = np.zeros(logits.size)
        final[best] = 1.0
        removed[:] = REMOVED_BY_GREEDY
        removed[best] = KEPT
        return FilteredDistribution(raw, final.copy(), final, removed)
    tempered = softmax(penalised / settings.temperature)
    kept = np.ones(logits.size, dtype=bool)
    if 0 < settings.top_k < logits.size:
        order = np.argsort(-penalised, kind="stable")
        kept[order[settings.top_k :]] = False
        removed[~kept] = REMOVED_BY_TOP_K
    # The temperature's softmax runs over the tokens top-k left.
    survivors = np.where(kept, penalised / settings.temperature, -np.inf)
    probabilities = softmax(survivors)
    if settings.top_p < 1.0:
        order = np.argsort(-probabilities, kind="stable")
        cumulative = np.cumsum(probabilities[order])
        crossing = np.searchsorted(cumulative, settings.top_p, side="right")  # first index whose sum exceeds p
        nucleus = order[: crossing + 1]
        in_nucleus = np.zeros(logits.size, dtype=bool)
        in_nucleus[nucleus] = True
        newly_removed = kept & ~in_nucleus
        removed[newly_removed] = REMOVED_BY_TOP_P
        kept &= in_nucleus
    final = np.where(kept, probabilities, 0.0)
    final /= final.sum()
    return FilteredDistribution(raw, tempered, final, removed)


def sample(distribution: FilteredDistribution, rng: np.random.Generator) -> int:
    """One token id drawn from ``distribution.final``."""
    return int(rng.choice(distribution.final.size, p=distribution.final))
