"""Chat messages, prompt templates and fitting the history into the context window.

The prompt always comes from a Jinja chat template rendered as ``transformers`` renders it
(by a Hugging Face tokenizer, or by :class:`ovchat.engine.backends.genai_tokenizer.GenaiTokenizer`): the
tokenizer's own one when it has it, else one of the named fallbacks below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict

from ovchat.errors import OvchatError

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


class Message(TypedDict):
    role: Role
    content: str


class PromptTokenizer(Protocol):
    """What choosing and rendering a template need of a tokenizer: the subset of the Hugging Face
    tokenizer interface that :class:`~ovchat.engine.backends.genai_tokenizer.GenaiTokenizer` also has."""

    chat_template: Any  # the model's own template, or None
    bos_token: Any

    def get_vocab(self) -> dict[str, int]: ...

    def apply_chat_template(
        self,
        conversation: Any,
        chat_template: str | None = ...,
        add_generation_prompt: bool = ...,
        tokenize: bool = ...,
    ) -> Any: ...


@dataclass(frozen=True)
class ChatTemplate:
    """A prompt format. ``jinja`` None means the tokenizer's own template.

    ``stop`` strings end a reply in formats whose end of turn is plain text, and
    ``end_of_turn`` is a token that ends the assistant's turn in this format.
    """

    name: str
    jinja: str | None
    stop: tuple[str, ...] = ()
    end_of_turn: str | None = None


CHATML = ChatTemplate(
    "chatml",
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    end_of_turn="<|im_end|>",
)
# Meta's Llama-2 chat format: the system prompt sits inside the first [INST] block. System
# messages anywhere in the chat (an imported one may have several) are joined into that block.
LLAMA2 = ChatTemplate(
    "llama2",
    "{% set ns = namespace(system='', placed=false) %}"
    "{% for message in messages if message['role'] == 'system' %}"
    "{% set ns.system = ns.system + ('\n\n' if ns.system else '') + message['content'] %}"
    "{% endfor %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% set text = message['content'] %}"
    "{% if ns.system and not ns.placed %}{% set text = '<<SYS>>\n' + ns.system + '\n<</SYS>>\n\n' + text %}{% endif %}"
    "{% set ns.placed = true %}"
    "{{ (bos_token or '') + '[INST] ' + text + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + (eos_token or '') }}{% endif %}"
    "{% endfor %}",
)
# For base models with no chat format at all: a transcript the model continues.
PLAIN = ChatTemplate(
    "plain",
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}",
    stop=("\nUser:",),
)
MODEL_TEMPLATE = ChatTemplate("model", None)
FALLBACK_TEMPLATES = {template.name: template for template in (CHATML, LLAMA2, PLAIN)}
TEMPLATE_CHOICES: tuple[str, ...] = ("auto", "model", *FALLBACK_TEMPLATES)


# Half of a UTF-16 pair on its own: JSON's "\ud800" escape, or a byte that is not UTF-8 in a command line (Python
# keeps it as U+DC80-U+DCFF). No UTF-8 encoder takes one: the tokenizer, SQLite and a chat file would all fail.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_message_list(messages: object) -> list[Message]:
    """``messages`` as a list of messages, or an error naming the first bad one."""
    if not isinstance(messages, list):
        raise OvchatError("messages must be a list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise OvchatError(f"message {index} has no valid role (system, user or assistant)")
        content = message.get("content")
        if not isinstance(content, str):
            raise OvchatError(f"message {index} has no text content")
        problem = unicode_problem(content)
        if problem is not None:
            raise OvchatError(f"message {index} is not valid Unicode text: {problem}")
    return messages


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8 (to the tokenizer, the store or a file), or None."""
    found = _LONE_SURROGATE.search(text)
    if found is None:
        return None
    code = ord(found.group())
    if 0xDC80 <= code <= 0xDCFF:  # how Python keeps a byte that was not UTF-8 (its "surrogateescape")
        return f"the byte 0x{code - 0xDC00:02X}, which is not UTF-8, at character {found.start()}"
    return f"a lone surrogate (U+{code:04X}) at character {found.start()}"


def validate_messages(messages: list[Message]) -> None:
    """A chat ready for the next reply: valid messages, the last one from the user."""
    if not messages:
        raise OvchatError("a chat needs at least one message")
    check_message_list(messages)
    if messages[-1]["role"] != "user":
        raise OvchatError("the last message must be the user's")


def choose_template(tokenizer: PromptTokenizer, name: str = "auto") -> ChatTemplate:
    """The template called ``name``; ``auto`` is the model's own, else one guessed from its vocabulary."""
    if name not in TEMPLATE_CHOICES:
        raise OvchatError(f"unknown chat template {name!r}; choose one of {', '.join(TEMPLATE_CHOICES)}")
    has_own = bool(getattr(tokenizer, "chat_template", None))
    if name == "model" and not has_own:
        raise OvchatError("this model's tokenizer has no chat template; pick chatml, llama2 or plain")
    if name in FALLBACK_TEMPLATES:
        return FALLBACK_TEMPLATES[name]
    if has_own:
        return MODEL_TEMPLATE
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return CHATML
    if "[INST]" in vocab or (getattr(tokenizer, "bos_token", None) == "<s>" and "</s>" in vocab):
        return LLAMA2
    return PLAIN


def render_prompt(tokenizer: PromptTokenizer, messages: list[Message], template: ChatTemplate = MODEL_TEMPLATE) -> str:
    """The prompt text for the next assistant turn."""
    validate_messages(messages)
    if template.jinja is None and not getattr(tokenizer, "chat_template", None):
        raise OvchatError("this model's tokenizer has no chat template; pick chatml, llama2 or plain")
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template.jinja, add_generation_prompt=True, tokenize=False
        )
    except Exception as error:  # jinja's raise_exception, e.g. roles that do not alternate
        raise OvchatError(f"the {template.name} chat template cannot render this chat: {error}") from error


@dataclass(frozen=True)
class FittedPrompt:
    messages: list[Message]
    token_ids: Sequence[int]  # a remote model's is only as long as its estimate (engine/remote.py)
    trimmed_turns: int


def split_turns(messages: list[Message]) -> tuple[list[Message], list[list[Message]]]:
    """Leading system messages, then turns: each a user message and the replies that follow it."""
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    turns: list[list[Message]] = []
    for message in messages[head:]:
        if message["role"] == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return messages[:head], turns


def fit_to_context(
    messages: list[Message],
    encode: Callable[[list[Message]], Sequence[int]],
    context_length: int,
    max_new_tokens: int,
) -> FittedPrompt:
    """Drop the oldest turns until the prompt plus ``max_new_tokens`` fits ``context_length``.

    The system prompt and the last turn (the new message) are always kept; whole turns
    are dropped so that user and assistant messages still alternate.
    """
    validate_messages(messages)
    budget = context_length - max_new_tokens
    if budget <= 0:
        raise OvchatError(
            f"max new tokens ({max_new_tokens}) must be below the model's context length ({context_length})"
        )
    system, turns = split_turns(messages)

    def attempt(trimmed: int) -> tuple[FittedPrompt | None, int]:
        """The prompt without the ``trimmed`` oldest turns if it fits, and its length in tokens."""
        kept = system + [message for turn in turns[trimmed:] for message in turn]
        token_ids = encode(kept)
        return (FittedPrompt(kept, token_ids, trimmed) if len(token_ids) <= budget else None), len(token_ids)

    fitted, length = attempt(0)  # the usual case, one encode: everything fits
    if fitted is not None:
        return fitted
    newest = len(turns) - 1
    if newest > 0:
        fitted, length = attempt(newest)
    if fitted is None:
        raise OvchatError(
            f"the message is too long: the system prompt and the new message take {length} tokens, "
            f"and with {max_new_tokens} new tokens that exceeds the model's context of {context_length}; "
            "shorten the message or lower max new tokens"
        )
    # The fewest turns to drop, by bisection: dropping a turn never makes the prompt longer, and trying each count
    # from the oldest turn on encodes the whole history once per turn dropped (20 s for a 1 MB chat of 1000 turns).
    too_few, enough = 0, newest
    while enough - too_few > 1:
        middle = (too_few + enough) // 2
        candidate, _ = attempt(middle)
        if candidate is None:
            too_few = middle
        else:
            enough, fitted = middle, candidate
    return fitted
