"""The engine: one exported model behind :meth:`Engine.stream`, the API every caller uses.

The page, the terminal chat, the export's smoke check and the bench all generate through
``stream``; ``generate`` is a join over it. The layers under it: a backend makes token ids
(:mod:`ovchat.engine.backends`), a worker thread turns them into text (:mod:`ovchat.engine.worker`),
and pure functions cut stop strings and compute the stats (:mod:`ovchat.engine.streaming`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ovchat import model_folder
from ovchat.engine.backends import DEFAULT_BACKEND, OPTIMUM_BACKEND, Backend, GenerationRequest, backend_loader
from ovchat.engine.decoding import DECODING_OPTION, DRAFT, PLAIN_DECODING, Decoding
from ovchat.engine.runtime import check_device, compile_properties
from ovchat.engine.streaming import Chunk, Reply, StopCutter, collect, reply_stats
from ovchat.engine.worker import Heartbeat, ReplyWorker
from ovchat.errors import OvchatError, first_line
from ovchat.prompt import ChatTemplate, FittedPrompt, Message, choose_template, fit_to_context, render_prompt
from ovchat.settings import GenerationSettings

if TYPE_CHECKING:
    import numpy as np

    from ovchat.engine.scoring import Scorer

# openvino-genai's own properties among Engine.load's: a plain compile_model refuses them.
GENAI_ONLY_PROPERTIES = frozenset({"ATTENTION_BACKEND"})
# A reply that produces no token for this long is ended with an error instead of hanging.
STALL_TIMEOUT_S = 600.0


class StreamingEngine(Protocol):
    """What the terminal chat, the page and the lab's comparison need of an engine: :class:`Engine` and
    :class:`~ovchat.engine.remote.RemoteEngine` both have it; tests pass scripted fakes."""

    path: Path
    device: str
    context_length: int  # the page sizes its max-tokens slider by it

    def stream(
        self, messages: list[Message], settings: GenerationSettings | None = None, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]: ...


class Engine:
    """One loaded model. Several threads may call :meth:`stream` at once; a backend that runs one
    generation at a time makes each reply wait for the previous one, so tokens of two replies never mix."""

    def __init__(
        self,
        backend: Backend,
        path: Path,
        device: str,
        template: str = "auto",
        context_length: int | None = None,
        decoding: Decoding = PLAIN_DECODING,
        scorer_properties: dict[str, Any] | None = None,
    ) -> None:
        self.backend = backend
        self.decoding = decoding
        self.tokenizer = backend.tokenizer
        self.path = path
        self.device = device
        self.template: ChatTemplate = choose_template(self.tokenizer, template)
        self.context_length = context_length or model_folder.model_context_length(backend.model_config)
        self.stall_timeout_s = STALL_TIMEOUT_S
        self._heartbeat = Heartbeat()
        self.eos_token_ids: set[int] = _end_token_ids(backend, self.template)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id: int | None = pad if pad is not None else min(self.eos_token_ids, default=None)
        self._scorer_properties = scorer_properties or {}
        self._scorer: Scorer | None = None
        self._scorer_loading = threading.Lock()

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "CPU",
        ov_config: dict[str, Any] | None = None,
        use_cache_dir: bool = True,
        template: str = "auto",
        context_length: int | None = None,
        backend: str = DEFAULT_BACKEND,
        decoding: Decoding = PLAIN_DECODING,
    ) -> Engine:
        """Load an IR folder made by ``export_ir.py``.

        ``backend`` picks the generation loop by name (:data:`~ovchat.engine.backends.BACKENDS`):
        ``genai``, openvino-genai's C++ loop with its own tokenizer (no transformers or torch), or
        ``optimum``, OVModelForCausalLM.generate in Python. ``ov_config`` adds OpenVINO properties.
        ``decoding`` (:mod:`ovchat.engine.decoding`) turns on prompt lookup or a draft model, on the
        openvino-genai loops only.
        """
        load_backend = backend_loader(backend)
        if decoding.guesses and backend == OPTIMUM_BACKEND:
            raise OvchatError(f"the {OPTIMUM_BACKEND} loop decodes plainly only; use the batched or genai loop")
        folder = Path(path).expanduser()
        if folder.is_file():
            raise OvchatError(f"{folder} is a file; a model is a folder made by export_ir.py")
        if not folder.is_dir():
            raise OvchatError(f"model folder {folder} does not exist; export one with export_ir.py")
        missing = model_folder.missing_files(folder)
        if missing:
            raise OvchatError(f"{folder} is not an exported model: missing {', '.join(missing)}")
        damaged = model_folder.damaged_files(folder)
        if damaged:
            raise OvchatError(f"{folder} is damaged: {damaged[0]}; export the model again")
        check_device(device)
        properties = compile_properties(device, ov_config, use_cache_dir)
        if decoding.guesses:
            properties[DECODING_OPTION] = decoding
        try:
            loaded = load_backend(folder, device, properties)
        except Exception as error:
            problem = _ir_problem(folder)
            if problem is not None:
                raise OvchatError(f"could not load {folder}: {problem}") from error
            if isinstance(error, OvchatError):
                raise  # already one line the user can act on (a draft model of another vocabulary)
            raise OvchatError(f"could not load {folder}: {first_line(error)}") from error
        # The scorer (log-probabilities) compiles the same IR as a plain model: OpenVINO's properties only,
        # not openvino-genai's own options, which are the other keys.
        scorer_properties = {
            key: value for key, value in properties.items() if key.isupper() and key not in GENAI_ONLY_PROPERTIES
        }
        engine = cls(
            loaded,
            folder,
            device,
            template=template,
            context_length=context_length,
            decoding=decoding,
            scorer_properties=scorer_properties,
        )
        # One prompt rendered and encoded here, before any caller's thread: the first template compile and the
        # first encode import and set up what they need lazily, and eight threads doing that first at once hung
        # for good in 3 of 10 cold starts (import locks and openvino-genai's encode; 0 of 10 after this).
        engine.encode([{"role": "user", "content": "Hello"}])
        return engine

    def scorer(self) -> Scorer:
        """The forward model that gives log-probabilities, compiled on first use (a second copy of the
        model's weights in memory from then on)."""
        with self._scorer_loading:
            if self._scorer is None:
                from ovchat.engine.scoring import Scorer

                if not self.path.is_dir():
                    raise OvchatError(
                        f"could not load {self.path} for log-probabilities: the folder was moved or deleted after "
                        "the model was loaded; load it again from where it is now"
                    )
                try:
                    self._scorer = Scorer.load(self.path, self.device, self._scorer_properties)
                except Exception as error:
                    problem = first_line(error)
                    raise OvchatError(f"could not load {self.path} for log-probabilities: {problem}") from error
            return self._scorer

    def next_token_logits(self, token_ids: list[int]) -> np.ndarray:
        """The model's raw logits for the token after ``token_ids`` (the sampling lab's explorer)."""
        if not token_ids:
            raise OvchatError("there is no text to continue")
        if len(token_ids) >= self.context_length:
            raise OvchatError(f"the text takes {len(token_ids)} tokens, the model's context is {self.context_length}")
        return self.scorer().logits_after(token_ids, 1)[0]

    def token_text(self, token_id: int) -> str:
        """One token's text as the vocabulary has it (a piece of a character shows as U+FFFD)."""
        return self.scorer().token(token_id, 0.0).text

    def encode(self, messages: list[Message]) -> list[int]:
        prompt = render_prompt(self.tokenizer, messages, self.template)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def fit(self, messages: list[Message], settings: GenerationSettings) -> FittedPrompt:
        """The prompt for ``messages``, with the oldest turns dropped if it would not fit the context."""
        return fit_to_context(messages, self.encode, self.context_length, settings.max_new_tokens)

    def request(self, prompt_ids: list[int], settings: GenerationSettings) -> GenerationRequest:
        """What a backend generates for this prompt: the settings and this model's end tokens."""
        if self.decoding.mode == DRAFT and not settings.greedy:
            # openvino-genai 2026.4.1 fails most sampled replies with a draft model ("Check 'content_length
            # <= prompt_ids.size() + m_generated_ids.size()' failed", 8 of 12 seeds) and leaks the reply's
            # KV blocks, after which even greedy replies change; greedy replies were always right.
            raise OvchatError(
                "the draft-model decoding is greedy only (openvino-genai fails sampled replies with it); "
                "set the temperature to 0, or use --decoding prompt-lookup"
            )
        return GenerationRequest(prompt_ids, settings, frozenset(self.eos_token_ids), self.pad_token_id)

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        """Stream the assistant's reply to ``messages`` as text chunks, then a final chunk with its stats.

        Old turns that do not fit the context are left out (counted in ``trimmed_turns``).
        ``cancel`` (set from any thread) stops generation after the current token; the final
        chunk then says ``cancelled``, and the text so far has been yielded. A consumer that stops
        iterating stops generation too. An error in the generation thread is re-raised here.
        """
        settings = settings or GenerationSettings()
        fitted = self.fit(messages, settings)
        token_ids = list(fitted.token_ids)
        yield from self._stream_ids(token_ids, settings, cancel, self.template.stop, fitted.trimmed_turns)

    def complete(
        self, prompt: str, settings: GenerationSettings | None = None, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        """Continue ``prompt`` as plain text, with no chat template (OpenAI's ``/v1/completions``)."""
        settings = settings or GenerationSettings()
        if not prompt:
            raise OvchatError("the prompt is empty")
        token_ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if len(token_ids) + settings.max_new_tokens > self.context_length:
            raise OvchatError(
                f"the prompt takes {len(token_ids)} tokens, and with {settings.max_new_tokens} new tokens that "
                f"exceeds the model's context of {self.context_length}; shorten it or lower max tokens"
            )
        yield from self._stream_ids(token_ids, settings, cancel, (), 0)

    def _stream_ids(
        self,
        prompt_ids: list[int],
        settings: GenerationSettings,
        cancel: threading.Event | None,
        template_stops: tuple[str, ...],
        trimmed_turns: int,
    ) -> Iterator[Chunk]:
        worker = ReplyWorker(self.backend, self.request(prompt_ids, settings), cancel, self._heartbeat)
        stop_cut = StopCutter(settings.stop + template_stops)
        stopped_by_text = False
        shown_bytes = 0  # how much of the reply was shown, to score only its tokens
        try:
            for piece in worker.pieces(self.stall_timeout_s):
                visible, stopped_by_text = stop_cut.feed(piece)
                shown_bytes += len(visible.encode("utf-8"))
                if visible:
                    yield Chunk(text=visible)
                if stopped_by_text:
                    break
            tail = "" if stopped_by_text else stop_cut.flush()
            if tail:
                yield Chunk(text=tail)
        finally:
            worker.finish()  # also when the consumer stops iterating: the backend is freed at once
        stats = reply_stats(
            worker.record,
            ended_at=time.perf_counter(),
            prompt_tokens=len(prompt_ids),
            max_new_tokens=settings.max_new_tokens,
            end_token_ids=self.eos_token_ids,
            stopped_by_text=stopped_by_text,
            trimmed_turns=trimmed_turns,
        )
        logprobs = None
        if settings.logprobs is not None:
            scorer = self.scorer()
            reply_ids = worker.record.token_ids
            if stats.finish_reason == "eos":
                reply_ids = reply_ids[:-1]  # the end-of-turn token is not part of the reply, as in OpenAI's API
            elif stats.finish_reason == "stop":
                reply_ids = scorer.shown_prefix(reply_ids, shown_bytes)  # not the stop string's tokens or later ones
            logprobs = scorer.score(prompt_ids, reply_ids, settings.logprobs)
        yield Chunk(stats=stats, logprobs=logprobs)

    def generate(
        self,
        messages: list[Message],
        settings: GenerationSettings | None = None,
        cancel: threading.Event | None = None,
    ) -> Reply:
        """The whole reply at once: a join over :meth:`stream`."""
        return collect(self.stream(messages, settings, cancel))


def _ir_problem(folder: Path) -> str | None:
    """Why the IRs in ``folder`` cannot make a chat model, read by OpenVINO itself (the weights are mapped,
    not loaded), or None: run after a load failed, whose own message names only a file of OpenVINO's sources
    ("Check '!model->get_variables().empty()' failed at src/core/src/pass/sdpa_to_paged_attention.cpp")."""
    import openvino as ov
    import openvino_tokenizers  # noqa: F401  (registers the operations the tokenizer IRs use)

    core = ov.Core()
    for name in model_folder.IR_FILES:
        try:
            model = core.read_model(folder / name)
        except Exception as error:
            return f"{name} or its weights cannot be read ({first_line(error)}); export the model again"
        if name == model_folder.IR_XML:
            inputs = sorted(input_name for port in model.inputs for input_name in port.get_names())
            # What export_ir.py makes: token ids in, and the KV cache kept in the model's state between calls.
            if "input_ids" not in inputs or not model.get_variables():
                return (
                    f"{name} is not a text-generation model with a KV cache (its inputs: {', '.join(inputs)}); "
                    "export a chat model with export_ir.py"
                )
    return None


def _end_token_ids(backend: Backend, template: ChatTemplate) -> set[int]:
    """The model's eos ids, plus the chat template's end-of-turn token (a model may only emit that)."""
    eos = backend.generation_config.get("eos_token_id")
    ids: set[int] = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if template.end_of_turn is not None:
        end_id = backend.tokenizer.convert_tokens_to_ids(template.end_of_turn)
        if isinstance(end_id, int) and end_id != backend.tokenizer.unk_token_id:
            ids.add(end_id)
    return ids
