"""A reply as a stream: the chunks callers read, the stats of a finished reply, and the pure pieces
between generated tokens and shown text.

Nothing here touches a model or a thread, so each piece is tested alone: :class:`StopCutter`
turns text pieces into what may be shown, :class:`TokenRecord` and :func:`reply_stats` turn the
generated ids into the final :class:`ReplyStats`, and :func:`collect` joins a stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ovchat.errors import OvchatError

FINISH_REASONS = ("eos", "length", "stop", "cancelled")
# How a reply ended as the line under it says it: the finish reasons, and "stopped" (by the user).
FINISH_LABELS = (*FINISH_REASONS, "stopped")


@dataclass(frozen=True)
class ReplyStats:
    """How a reply ended and what it cost. The final chunk, a saved reply's meta, ``ask --json`` and the
    bench all carry this one type."""

    finish_reason: str  # one of FINISH_REASONS
    prompt_tokens: int
    new_tokens: int
    ttft_s: float | None = None
    decode_tok_s: float | None = None
    trimmed_turns: int = 0  # older turns left out so the chat fits the context

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplyStats | None:
        """The stats in a saved reply's meta; None when it has none (a reply stopped before it ended)."""
        if data.get("finish_reason") is None or data.get("new_tokens") is None:
            return None
        return cls(
            finish_reason=str(data["finish_reason"]),
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            new_tokens=int(data["new_tokens"]),
            ttft_s=data.get("ttft_s"),
            decode_tok_s=data.get("decode_tok_s"),
            trimmed_turns=int(data.get("trimmed_turns") or 0),
        )

    def describe(self, finish_label: str | None = None, language: str = "en") -> str:
        """One line: tokens, time to first token, speed, how the reply ended, and any turns left out, in
        ``language`` (the texts are the catalog's ``reply.*``, ovchat/i18n/reply.py)."""
        from ovchat.i18n import translate

        parts = [translate(language, "reply.tokens", count=self.new_tokens)]
        if self.ttft_s is not None:
            parts.append(translate(language, "reply.first_token", seconds=self.ttft_s))
        if self.decode_tok_s is not None:
            parts.append(translate(language, "reply.speed", speed=self.decode_tok_s))
        finish = finish_label or self.finish_reason
        parts.append(translate(language, f"reply.finish.{finish}") if finish in FINISH_LABELS else finish)
        if self.trimmed_turns:
            parts.append(translate(language, "reply.trimmed", count=self.trimmed_turns))
        return " · ".join(parts)


@dataclass(frozen=True)
class TokenLogprob:
    """One token with its log-probability under the model (the raw distribution, before temperature,
    top-k, top-p and penalties, as OpenAI and vLLM report it). A reply's token carries its likeliest
    alternatives in ``top``, likeliest first; an alternative's own ``top`` is empty."""

    token_id: int
    text: str  # the token's bytes as text; a piece of a character split across tokens shows as U+FFFD
    token_bytes: bytes
    logprob: float
    top: tuple[TokenLogprob, ...] = ()

    @property
    def probability(self) -> float:
        return math.exp(self.logprob)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.token_id,
            "text": self.text,
            "bytes": list(self.token_bytes),
            "logprob": self.logprob,
        }
        if self.top:
            data["top"] = [alternative.to_dict() for alternative in self.top]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenLogprob:
        return cls(
            token_id=int(data["id"]),
            text=str(data["text"]),
            token_bytes=bytes(data.get("bytes") or str(data["text"]).encode()),
            logprob=float(data["logprob"]),
            top=tuple(cls.from_dict(item) for item in data.get("top") or ()),
        )


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed reply. Only the last chunk has ``stats``, and its text is empty; it also
    carries the reply's ``logprobs`` when the settings asked for them."""

    text: str = ""
    stats: ReplyStats | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class Reply:
    """A whole reply: :func:`collect` of a stream."""

    text: str
    stats: ReplyStats
    logprobs: tuple[TokenLogprob, ...] | None = None


def collect(stream: Iterable[Chunk], on_text: Callable[[str], object] | None = None) -> Reply:
    """Join a stream into its reply; ``on_text`` sees each piece as it comes (the terminal prints them)."""
    parts: list[str] = []
    stats: ReplyStats | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    for chunk in stream:
        if chunk.stats is not None:
            stats, logprobs = chunk.stats, chunk.logprobs
            continue
        parts.append(chunk.text)
        if on_text is not None:
            on_text(chunk.text)
    if stats is None:  # an engine's stream always ends with a final chunk
        raise OvchatError("the reply ended without a final chunk")
    return Reply("".join(parts), stats, logprobs)


class TokenRecord:
    """The ids a reply generated, and when: the first token's time gives TTFT and decode speed."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.token_ids: list[int] = []
        self.first_token_at: float | None = None

    def add(self, token_ids: Sequence[int], now: float) -> None:
        if self.first_token_at is None and token_ids:
            self.first_token_at = now
        self.token_ids.extend(token_ids)


def reply_stats(
    record: TokenRecord,
    *,
    ended_at: float,
    prompt_tokens: int,
    max_new_tokens: int,
    end_token_ids: Collection[int],
    stopped_by_text: bool,
    trimmed_turns: int = 0,
) -> ReplyStats:
    """The final stats of a reply. A reply that ended neither at a stop string, an end token nor the
    length limit was cancelled (by the caller, or by the consumer leaving)."""
    ids = record.token_ids
    if stopped_by_text:
        finish = "stop"
    elif ids and ids[-1] in end_token_ids:
        finish = "eos"
    elif len(ids) >= max_new_tokens:
        finish = "length"
    else:
        finish = "cancelled"
    first = record.first_token_at
    decode_seconds = ended_at - first if first is not None else 0.0
    return ReplyStats(
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        new_tokens=len(ids),
        ttft_s=first - record.started if first is not None else None,
        decode_tok_s=(len(ids) - 1) / decode_seconds if len(ids) > 1 and decode_seconds > 0 else None,
        trimmed_turns=trimmed_turns,
    )


class StopCutter:
    """Holds back text that may be the start of a stop string, so a stop string is never shown."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that may be shown now, and whether a stop string was reached."""
        self.pending += text
        if not self.stops:
            return self._release(len(self.pending)), False
        # The stop string that ends first wins (the longer one if two end together), not the one that starts
        # first: a reply streamed piece by piece stops as soon as one is complete, so a whole text fed at once
        # must be cut at the same place. With stops "abcd" and "bc", "abcd" is cut after "a" either way.
        hits = [(i + len(s), i) for s, i in ((s, self.pending.find(s)) for s in self.stops) if i >= 0]
        if hits:
            visible = self._release(min(hits)[1])
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
