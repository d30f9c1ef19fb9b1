"""One prompt under two to four settings, each sampled K times with fixed seeds, side by side.

Every sample is drawn with a seed of its own (``first_seed + k``, the same K seeds for every setting,
so settings differ only in themselves) and is reproducible from it. The figures per setting: mean
length in tokens, distinct-1 and distinct-2 (unique token n-grams over all n-grams of its samples,
counted on token ids so that Chinese text, which has no spaces, counts the same), mean
log-probability per token under the model (how far from the model's own likeliest text the setting
strays), and decode speed.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ovchat.engine.engine import StreamingEngine
from ovchat.engine.streaming import Reply, collect
from ovchat.errors import OvchatError
from ovchat.prompt import Message
from ovchat.settings import GenerationSettings

MIN_SETTINGS, MAX_SETTINGS = 2, 4
MAX_SAMPLES = 20
FORMAT = "ovchat-comparison"
CSV_FIELDS = (
    "setting", "seed", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens",
    "new_tokens", "mean_logprob", "decode_tok_s", "finish_reason", "text",
)  # fmt: skip
# The settings a comparison varies and exports; the rest are GenerationSettings' defaults.
COMPARED_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")


@dataclass(frozen=True)
class Sample:
    setting: str
    seed: int
    text: str
    token_ids: tuple[int, ...]  # empty when the engine gave no log-probabilities (a remote server may not)
    mean_logprob: float | None
    decode_tok_s: float | None
    finish_reason: str
    new_tokens: int


@dataclass(frozen=True)
class SettingSummary:
    setting: str
    samples: int
    mean_length: float
    distinct_1: float
    distinct_2: float
    mean_logprob: float | None
    decode_tok_s: float | None


@dataclass
class Comparison:
    messages: list[Message]
    settings: dict[str, GenerationSettings]
    seeds: list[int]
    samples: list[Sample] = field(default_factory=list)

    def samples_of(self, setting: str) -> list[Sample]:
        return [sample for sample in self.samples if sample.setting == setting]

    def summaries(self) -> list[SettingSummary]:
        return [summarize(name, self.samples_of(name)) for name in self.settings]

    def settings_for(self, sample: Sample) -> GenerationSettings:
        """The exact settings that drew ``sample``: its setting with its seed."""
        return self.settings[sample.setting].with_changes(seed=sample.seed, logprobs=0)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "messages": self.messages,
                "settings": {name: _compared(settings) for name, settings in self.settings.items()},
                "seeds": self.seeds,
                "samples": [{**asdict(sample), "token_ids": list(sample.token_ids)} for sample in self.samples],
                "summaries": [asdict(summary) for summary in self.summaries()],
            },
            ensure_ascii=False,
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> Comparison:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not an {FORMAT} file")
            settings = {str(name): GenerationSettings(**values) for name, values in data["settings"].items()}
            samples = [Sample(**{**item, "token_ids": tuple(item["token_ids"])}) for item in data["samples"]]
            return cls(list(data["messages"]), settings, [int(seed) for seed in data["seeds"]], samples)
        except OvchatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise OvchatError(f"not a comparison saved by ovchat: {error}") from error

    def to_csv(self) -> str:
        """One row per sample, with its setting's values, so a spreadsheet can group and chart them."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for sample in self.samples:
            writer.writerow(
                {
                    **_compared(self.settings[sample.setting]),
                    "setting": sample.setting,
                    "seed": sample.seed,
                    "new_tokens": sample.new_tokens,
                    "mean_logprob": "" if sample.mean_logprob is None else sample.mean_logprob,
                    "decode_tok_s": "" if sample.decode_tok_s is None else sample.decode_tok_s,
                    "finish_reason": sample.finish_reason,
                    "text": sample.text,
                }
            )
        return out.getvalue()


def _compared(settings: GenerationSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in COMPARED_FIELDS}


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """Unique n-grams over all n-grams in ``sequences`` (0 when there are none)."""
    grams = [tuple(seq[i : i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _mean(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def summarize(setting: str, samples: Sequence[Sample]) -> SettingSummary:
    sequences = [sample.token_ids for sample in samples]
    return SettingSummary(
        setting=setting,
        samples=len(samples),
        mean_length=sum(sample.new_tokens for sample in samples) / len(samples) if samples else 0.0,
        distinct_1=distinct_n(sequences, 1),
        distinct_2=distinct_n(sequences, 2),
        mean_logprob=_mean([sample.mean_logprob for sample in samples]),
        decode_tok_s=_mean([sample.decode_tok_s for sample in samples]),
    )


def sample_from_reply(setting: str, seed: int, reply: Reply) -> Sample:
    logprobs = reply.logprobs or ()
    return Sample(
        setting=setting,
        seed=seed,
        text=reply.text,
        token_ids=tuple(token.token_id for token in logprobs),
        mean_logprob=sum(token.logprob for token in logprobs) / len(logprobs) if logprobs else None,
        decode_tok_s=reply.stats.decode_tok_s,
        finish_reason=reply.stats.finish_reason,
        new_tokens=reply.stats.new_tokens,
    )


def check_plan(settings: dict[str, GenerationSettings], samples: int) -> None:
    if not MIN_SETTINGS <= len(settings) <= MAX_SETTINGS:
        raise OvchatError(f"compare {MIN_SETTINGS} to {MAX_SETTINGS} settings, not {len(settings)}")
    if not 1 <= samples <= MAX_SAMPLES:
        raise OvchatError(f"take 1 to {MAX_SAMPLES} samples per setting, not {samples}")


def compare(
    engine: StreamingEngine,
    messages: list[Message],
    settings: dict[str, GenerationSettings],
    samples: int,
    first_seed: int = 0,
    on_sample: Callable[[Sample], object] | None = None,
    cancel: threading.Event | None = None,
) -> Comparison:
    """Sample ``messages`` ``samples`` times under each of ``settings``, one reply at a time (so the speeds
    are comparable), seed by seed; ``on_sample`` sees each sample as it is made."""
    check_plan(settings, samples)
    if not messages or not str(messages[-1].get("content", "")).strip():
        raise OvchatError("the prompt is empty")
    comparison = Comparison(list(messages), dict(settings), [first_seed + k for k in range(samples)])
    for seed in comparison.seeds:
        for name, setting in settings.items():
            if cancel is not None and cancel.is_set():
                return comparison
            reply = collect(engine.stream(messages, setting.with_changes(seed=seed, logprobs=0), cancel))
            sample = sample_from_reply(name, seed, reply)
            comparison.samples.append(sample)
            if on_sample is not None:
                on_sample(sample)
    return comparison
