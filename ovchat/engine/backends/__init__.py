"""Generation loops behind one small protocol, looked up by name.

A :class:`Backend` turns a :class:`GenerationRequest` (prompt ids and settings) into token ids,
passing each to a callback as it is made; the engine does everything else (prompt, stop
strings, cancel, text, stats) once for all of them. Tests pass scripted backends
(``tests/fakes.py``) to the real :class:`~ovchat.engine.Engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ovchat.errors import OvchatError
from ovchat.prompt import PromptTokenizer
from ovchat.settings import GenerationSettings

OnTokens = Callable[[list[int]], None]
ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class GenerationRequest:
    """One reply for a backend to generate."""

    prompt_ids: list[int]
    settings: GenerationSettings
    end_token_ids: frozenset[int]  # any of them ends the reply: the eos ids and the template's end of turn
    pad_token_id: int | None


class EngineTokenizer(PromptTokenizer, Protocol):
    """What the engine needs of a tokenizer: a Hugging Face tokenizer (optimum) or GenaiTokenizer (genai)."""

    pad_token_id: int | None
    unk_token_id: int | None

    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...

    def convert_tokens_to_ids(self, tokens: Any) -> Any: ...


class Detokenizer(Protocol):
    """Token ids in, text out, one reply at a time. A character split across tokens is held back
    until it is whole; special tokens are not shown."""

    def feed(self, token_ids: list[int]) -> str: ...

    def end(self) -> str: ...


class Backend(Protocol):
    """A generation loop over one loaded model."""

    tokenizer: EngineTokenizer
    model_config: Mapping[str, Any]  # config.json: the context length
    generation_config: Mapping[str, Any]  # generation_config.json: the eos ids

    def detokenizer(self) -> Detokenizer: ...

    def generate(self, request: GenerationRequest, on_tokens: OnTokens, should_stop: ShouldStop) -> None:
        """Generate the reply, giving each new token's ids to ``on_tokens`` as they come (never the
        prompt's); ask ``should_stop`` after every token; return when the reply has ended.

        May be called from several threads at once: a backend that runs one generation at a time
        makes the others wait their turn, and starts none whose ``should_stop`` is already true.
        """
        ...


BackendLoader = Callable[[Path, str, dict[str, Any]], Backend]


def _load_genai(folder: Path, device: str, properties: dict[str, Any]) -> Backend:
    from ovchat.engine.backends.genai import GenaiBackend

    return GenaiBackend.load(folder, device, properties)


def _load_batched(folder: Path, device: str, properties: dict[str, Any]) -> Backend:
    from ovchat.engine.backends.batched import BatchedBackend

    return BatchedBackend.load(folder, device, properties)


def _load_optimum(folder: Path, device: str, properties: dict[str, Any]) -> Backend:
    from ovchat.extras import require_export_extra

    require_export_extra(f"the {OPTIMUM_BACKEND} loop")
    from ovchat.engine.backends.optimum import OptimumBackend

    return OptimumBackend.load(folder, device, properties)


OPTIMUM_BACKEND = "optimum"
# Imported when picked: genai and batched never import transformers or torch; optimum needs both (the
# export extra), so it is offered only where that is installed.
BACKEND_LOADERS: dict[str, BackendLoader] = {
    "genai": _load_genai,
    "batched": _load_batched,
    OPTIMUM_BACKEND: _load_optimum,
}
BACKENDS: tuple[str, ...] = tuple(BACKEND_LOADERS)
# Continuous batching: one caller alone decoded as fast as the genai loop (0.97x in one interleaved
# run, within noise) with the same greedy tokens, and callers no longer wait for each other
# (README, "How a reply is made"). genai and optimum stay selectable; both run one reply at a time.
DEFAULT_BACKEND = "batched"

# The batched loader's own options, passed along with OpenVINO's properties (Engine.load's
# ov_config): where its scheduler runs, and SchedulerConfig fields by name over the sized ones
# (`ovchat serve --parallel N` sets {"max_num_seqs": N}). Defined here, not in the batched module,
# so that reading flags does not import openvino-genai.
BATCH_LOOP_OPTION = "batch_loop"
# Replies that advance together. On 2 CPU cores each step's cost grows with the batch, so more
# would slow every reply for little more throughput; a GPU or a larger CPU wants more.
DEFAULT_MAX_NUM_SEQS = 8
SCHEDULER_OPTION = "scheduler"
BATCH_LOOPS: tuple[str, ...] = ("process", "thread")
DEFAULT_BATCH_LOOP = "process"


def installed_backends() -> tuple[str, ...]:
    """The backends this install can load: all of them with the export extra, else all but optimum."""
    from ovchat.extras import has_export_extra

    return BACKENDS if has_export_extra() else tuple(name for name in BACKENDS if name != OPTIMUM_BACKEND)


def backend_loader(name: str) -> BackendLoader:
    if name not in BACKEND_LOADERS:
        raise OvchatError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKEND_LOADERS[name]
