"""The genai backend's tokenizer and detokenizer, without transformers (which imports torch, seconds).

:class:`GenaiTokenizer` gives openvino-genai's tokenizer the part of the Hugging Face tokenizer
interface that :mod:`ovchat.prompt` and :mod:`ovchat.engine` use. Token ids come from the
exported OpenVINO tokenizer (the export checks that it agrees with the Hugging Face one). Chat
templates are rendered with jinja2 the way transformers renders them, from the same files
transformers reads: openvino-genai's own template engine (minja) renders some templates
differently (it moves a system message into the first user message when a template seems not
to show it, divides integers as C++ does, and has no ``unk_token``), and the prompt must be
the same whichever backend makes the reply.

:class:`GenaiDetokenizer` turns token ids into text with openvino-genai's incremental
detokenizer, as the optimum backend does with transformers' ``TextStreamer``.
"""

from __future__ import annotations

import functools
import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from ovchat.model_folder import read_json

# The named special tokens transformers passes to every chat template (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES: tuple[str, ...] = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"


def _token_text(value: object) -> str | None:
    """A special token as tokenizer_config.json stores it: a string, or a serialized AddedToken."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_special_tokens(folder: Path) -> dict[str, str]:
    """The named special tokens of the Hugging Face tokenizer saved in ``folder``, as transformers loads them."""
    config = read_json(folder / "tokenizer_config.json")
    found = {name: _token_text(config.get(name)) for name in SPECIAL_TOKEN_NAMES}
    if "added_tokens_decoder" not in config:
        # Older exports keep them in special_tokens_map.json, which transformers then reads over the config.
        legacy = read_json(folder / "special_tokens_map.json")
        found.update({name: _token_text(legacy[name]) for name in SPECIAL_TOKEN_NAMES if legacy.get(name)})
    return {name: text for name, text in found.items() if text is not None}


def read_chat_template(folder: Path) -> str | None:
    """The chat template transformers would use for ``folder`` (no tools): chat_template.jinja and
    additional_chat_templates/ first, else tokenizer_config.json's ``chat_template``; with several
    named templates, the one called ``default``."""
    templates: dict[str, str] = {}
    main_file = folder / CHAT_TEMPLATE_FILE
    if main_file.is_file():
        templates["default"] = main_file.read_text(encoding="utf-8")
    extra_dir = folder / CHAT_TEMPLATE_DIR
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.stem] = path.read_text(encoding="utf-8")
    if not templates:
        configured = read_json(folder / "tokenizer_config.json").get("chat_template")
        if isinstance(configured, str):
            return configured or None
        if isinstance(configured, list):
            templates = {item["name"]: item["template"] for item in configured if isinstance(item, dict)}
    return templates.get("default") or None


@functools.lru_cache(maxsize=16)
def compile_chat_template(source: str) -> Any:
    """A Jinja template compiled in the environment transformers gives chat templates."""
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """``{% generation %}...{% endgeneration %}`` marks the assistant's text for training; shown as is."""

        tags = frozenset({"generation"})

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys=False):
        # Plain json.dumps, as in transformers: jinja's own tojson escapes HTML characters.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment.from_string(source)


class GenaiTokenizer:
    """openvino-genai's tokenizer behind the Hugging Face tokenizer calls ovchat makes.

    ``folder`` is the exported model folder, for the chat template and the special tokens'
    names, read from the Hugging Face tokenizer files as transformers reads them.
    """

    def __init__(self, tokenizer: Any, folder: Path) -> None:
        self.genai = tokenizer
        self.special_tokens_map = read_special_tokens(folder)
        self.chat_template = read_chat_template(folder)
        self.bos_token = self.special_tokens_map.get("bos_token")
        self.eos_token = self.special_tokens_map.get("eos_token")
        pad_id = int(tokenizer.get_pad_token_id())
        self.pad_token_id: int | None = pad_id if pad_id >= 0 else None
        self._encoding = threading.Lock()

    @functools.cached_property
    def _vocab(self) -> dict[str, int]:
        vocab: dict[str, int] = {}
        for token, token_id in self.genai.get_vocab().items():
            try:
                text = token.decode("utf-8") if isinstance(token, bytes) else str(token)
            except UnicodeDecodeError:  # a byte piece of a character, never looked up by name
                continue
            vocab.setdefault(text, int(token_id))
        return vocab

    def get_vocab(self) -> dict[str, int]:
        """Each token's text and id. Special and added tokens are named as in Hugging Face's
        vocabulary; ordinary byte-level tokens appear as the text they decode to (`` the``, not ``Ġthe``)."""
        return dict(self._vocab)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        """The id of a token named in :meth:`get_vocab`'s terms; ``unk_token_id`` when there is none."""
        return self._vocab.get(token, self.unk_token_id)

    @functools.cached_property
    def unk_token_id(self) -> int | None:
        unk = self.special_tokens_map.get("unk_token")
        return self._vocab.get(unk) if unk is not None else None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        # One encode at a time: in a Ray Serve replica, two threads encoding at once both stopped for good inside
        # openvino-genai's encode (seen with py-spy, both idle there; the same requests never hung under plain
        # uvicorn). Waiting here releases Python's lock; an encode takes a millisecond or two.
        with self._encoding:
            encoded = self.genai.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": encoded.input_ids.data[0].tolist()}

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.genai.decode([int(i) for i in token_ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
    ) -> str:
        """The prompt text, rendered as transformers renders it; only ``tokenize=False`` is supported."""
        if tokenize:
            raise NotImplementedError("GenaiTokenizer renders text only; encode it with the tokenizer")
        source = chat_template or self.chat_template
        if not source:
            raise ValueError("this tokenizer has no chat template and none was given")
        return compile_chat_template(source).render(
            messages=conversation,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens_map,
        )


class GenaiDetokenizer:
    """openvino-genai's incremental detokenizer (``TextStreamer``) as the engine's :class:`Detokenizer`:
    it holds a character split across tokens back until it is whole, and skips special tokens."""

    def __init__(self, tokenizer: Any) -> None:
        import openvino_genai

        self._running = openvino_genai.StreamingStatus.RUNNING
        self._pieces: list[str] = []
        self._decoder = openvino_genai.TextStreamer(tokenizer, self._on_text)

    def _on_text(self, text: str) -> Any:
        if text:
            self._pieces.append(text)
        return self._running  # cancelling is the generation loop's business

    def feed(self, token_ids: list[int]) -> str:
        self._pass_on(self._decoder.write, token_ids)
        return self._drain()

    def end(self) -> str:
        self._pass_on(self._decoder.end)
        return self._drain()

    def _pass_on(self, call: Any, *args: Any) -> None:
        """Call the streamer; text it cannot hand over becomes U+FFFD. A model may end its reply, or put, any
        byte anywhere: on end() the streamer hands over what it held back as is, and bytes that are not UTF-8
        fail in pybind's conversion to str (seen on the tiny random model: "can't decode byte 0xf7")."""
        try:
            call(*args)
        except UnicodeDecodeError:
            self._pieces.append("\ufffd")

    def _drain(self) -> str:
        text, self._pieces = "".join(self._pieces), []
        return text
