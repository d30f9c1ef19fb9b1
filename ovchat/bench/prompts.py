"""The chats the bench sends: each made fresh (cold) so that no engine can reuse a cached prefix
from an earlier run, and rendered once with the model's chat template for the engines that take text."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from ovchat.model_folder import model_context_length, read_model_configs
from ovchat.prompt import Message

# A ~1,000-token prompt: the text is repeated until the tokenizer says it is long enough.
LONG_PROMPT_TOKENS = 1000
LONG_TEXT = (
    "OpenVINO compiles a model for the CPU it runs on, and the chat page streams the reply token by token. "
    "Each paragraph of this text repeats so that the prompt is long enough to measure how fast a model reads. "
)
# short: a short cold question; long: a ~1,000-token cold prompt; followup: the long chat's next turn.
PROMPT_KINDS: tuple[str, ...] = ("short", "long", "followup")
# The next turn after the long prompt's reply (a fixed reply, so every engine reads the same chat).
FOLLOW_UP: list[Message] = [
    {"role": "assistant", "content": "The text says that OpenVINO compiles the model and the page streams the reply."},
    {"role": "user", "content": "Say it in five words."},
]
SHORT_QUESTION = "Write a long story about a dragon who learns to cook."


def context_length(ir: Path) -> int:
    return model_context_length(read_model_configs(ir)[0])


class _Prompts:
    """Prompts rendered with the Hugging Face tokenizer for the engines that take text (llama.cpp,
    genai, PyTorch): the reference that the product's own rendering is tested against."""

    def __init__(self, ir: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(ir)

    def render(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class PromptMaker(_Prompts):
    """The chats of each round: a short one, a ~1,000-token one, and the next turn of that one.

    The tokenizer and the long text are made once.
    """

    def __init__(self, ir: Path) -> None:
        super().__init__(ir)
        # ~1,000 tokens, or less on a model whose context is smaller (the tiny test model has 512).
        target = min(LONG_PROMPT_TOKENS, context_length(ir) // 2)
        self.long_text = LONG_TEXT
        while len(self.tokenizer(self.long_text, add_special_tokens=False)["input_ids"]) < target:
            self.long_text += LONG_TEXT

    def for_round(self, round_index: int) -> dict[str, tuple[list[Message], str]]:
        """The chats as messages and as prompt text.

        A fresh tag at the start of each prompt makes the short and long prompts cold. The follow-up
        is the long chat's next turn, asked right after it: an engine that keeps the chat's KV cache
        reads only the new message.
        """
        tag = f"[run {round_index}-{uuid.uuid4().hex[:8]}]"
        long_chat: list[Message] = [
            {"role": "user", "content": f"{tag} {self.long_text}\nSummarize the text above in one sentence."}
        ]
        chats: dict[str, list[Message]] = {
            "short": [{"role": "user", "content": f"{tag} {SHORT_QUESTION}"}],
            "long": long_chat,
            "followup": [*long_chat, *FOLLOW_UP],
        }
        return {kind: (messages, self.render(messages)) for kind, messages in chats.items()}


class LengthPrompts(_Prompts):
    """A chat whose user message is ``length`` tokens of text, made fresh (cold) each call."""

    def __init__(self, ir: Path) -> None:
        super().__init__(ir)
        self.text_ids: list[int] = []
        self.text = ""

    def chat(self, length: int) -> tuple[list[Message], str]:
        while len(self.text_ids) < length:
            self.text += LONG_TEXT
            self.text_ids = self.tokenizer(self.text, add_special_tokens=False)["input_ids"]
        body = self.tokenizer.decode(self.text_ids[: length - 16])
        messages: list[Message] = [{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] {body}\nSummarize."}]
        return messages, self.render(messages)
