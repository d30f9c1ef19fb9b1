"""How the openvino-genai backends decode: plain, prompt lookup, or speculative with a draft model.

Both faster modes guess several tokens ahead and let the model check the guesses in one step; the
model keeps the guesses its own greedy choice agrees with, so a greedy reply is plain decoding's, up
to floating-point rounding: checking several tokens in one step sums in another order, and where two
tokens score within rounding of each other the reply can part ways mid-reply (7 of 20 replies of the
default model did in one bench run, after 108-745 characters; the tests' prompts do not). Prompt lookup
takes its guesses from the text so far (the n-gram that ends it, found earlier, and what followed it
there): it pays off when a reply copies from its prompt (a rewrite, a code edit). A draft model
guesses with a smaller model of the same vocabulary.

The choice is the pipeline's, made when the model loads: in openvino-genai 2026.4 a prompt-lookup or
draft pipeline refuses a request without ``num_assistant_tokens`` ("Check
'sampling_params.is_prompt_lookup()' failed"), so one loaded model cannot answer one request plainly
and the next with guesses. Nothing here imports OpenVINO: the CLI reads these names without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ovchat import model_folder
from ovchat.errors import OvchatError

PLAIN = "plain"
PROMPT_LOOKUP = "prompt-lookup"
DRAFT = "draft"
DECODING_MODES: tuple[str, ...] = (PLAIN, PROMPT_LOOKUP, DRAFT)
# Plain stays the default. On the 135M default model (`ovchat bench --decoding`, AMD EPYC, 2 threads, 5
# rounds) prompt lookup was 1.88x faster per reply summarising a text, 1.60x rewriting one, 1.12x editing
# code, and 0.72x on an open question, where its unmatched guesses still cost a step of 6 tokens; the
# choice is per loaded model, so one rule cannot pick it per prompt.
DEFAULT_DECODING = PLAIN
# Tokens guessed per step: openvino-genai's own default for a draft model (its sample uses 5 for
# prompt lookup too). Every step checks this many guesses, found or not (prompt lookup pads a step
# without a match), so more is dearer where guesses fail.
DEFAULT_ASSISTANT_TOKENS = 5
MAX_ASSISTANT_TOKENS = 32
# The longest n-gram of the reply's end that prompt lookup looks for in the text so far (openvino-genai's sample: 3).
DEFAULT_NGRAM_SIZE = 3
MAX_NGRAM_SIZE = 16
# The key under which Engine.load hands a Decoding to the backend, beside OpenVINO's properties.
DECODING_OPTION = "decoding"


def _check_count(name: str, value: object, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise OvchatError(f"{name} must be an integer in [1, {high}], not {value!r}")


@dataclass(frozen=True)
class Decoding:
    """How a loaded model decodes; validated when made. ``draft_model`` is set only for ``draft``."""

    mode: str = DEFAULT_DECODING
    draft_model: Path | None = None
    assistant_tokens: int = DEFAULT_ASSISTANT_TOKENS
    ngram_size: int = DEFAULT_NGRAM_SIZE

    def __post_init__(self) -> None:
        if self.mode not in DECODING_MODES:
            raise OvchatError(f"unknown decoding {self.mode!r}; choose one of {', '.join(DECODING_MODES)}")
        _check_count("assistant tokens", self.assistant_tokens, MAX_ASSISTANT_TOKENS)
        _check_count("n-gram size", self.ngram_size, MAX_NGRAM_SIZE)
        if (self.mode == DRAFT) != (self.draft_model is not None):
            raise OvchatError(
                "a draft model is used with the draft decoding only; give --draft-model FOLDER with --decoding draft"
            )
        if self.draft_model is not None:
            folder = Path(self.draft_model).expanduser()
            object.__setattr__(self, "draft_model", folder)
            if not folder.is_dir():
                raise OvchatError(f"draft model folder {folder} does not exist")
            missing = model_folder.missing_files(folder)
            if missing:
                raise OvchatError(f"draft model {folder} is not an exported model: missing {', '.join(missing)}")

    @property
    def guesses(self) -> bool:
        """Whether requests carry guesses (num_assistant_tokens): every mode but plain."""
        return self.mode != PLAIN

    def describe(self) -> str:
        if self.mode == PROMPT_LOOKUP:
            return f"{PROMPT_LOOKUP} ({self.assistant_tokens} tokens, n-grams up to {self.ngram_size})"
        if self.mode == DRAFT:
            return f"{DRAFT} {self.draft_model} ({self.assistant_tokens} tokens)"
        return PLAIN


PLAIN_DECODING = Decoding()


def decoding_from_options(
    mode: str | None = None,
    draft_model: Path | str | None = None,
    assistant_tokens: int | None = None,
    ngram_size: int | None = None,
) -> Decoding:
    """The Decoding that flags ask for: ``--draft-model`` alone means the draft decoding; a number
    given for a mode that does not use it is refused rather than ignored."""
    chosen = mode or (DRAFT if draft_model is not None else DEFAULT_DECODING)
    if assistant_tokens is not None and chosen == PLAIN:
        raise OvchatError("--assistant-tokens applies to --decoding prompt-lookup or draft, not plain")
    if ngram_size is not None and chosen != PROMPT_LOOKUP:
        raise OvchatError("--ngram-size applies to --decoding prompt-lookup only")
    return Decoding(
        mode=chosen,
        draft_model=Path(draft_model) if draft_model is not None else None,
        assistant_tokens=assistant_tokens if assistant_tokens is not None else DEFAULT_ASSISTANT_TOKENS,
        ngram_size=ngram_size if ngram_size is not None else DEFAULT_NGRAM_SIZE,
    )
