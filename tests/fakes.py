"""Scripted stand-ins for tests: a backend whose "generation" is a fixed token list, and a chat engine.

ScriptedBackend goes inside the real Engine (real tokenizer, detokenizer, stop cutter, cancel,
stats) in place of a model's generation loop; FakeEngine replaces the engine for the terminal
chat and the page, like simonw/llm's MockModel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovchat.engine import Chunk, GenerationRequest, ReplyStats
from ovchat.engine.backends import Detokenizer
from ovchat.prompt import Message
from ovchat.settings import GenerationSettings


def system(content: str) -> Message:
    return {"role": "system", "content": content}


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


class ScriptedBackend:
    """A backend that answers every prompt with ``reply_ids``, one token at a time, as a real loop would:
    it stops at an end token, at ``max_new_tokens`` and when asked to.

    ``detokenizer`` makes the real detokenizer of the tokenizer's kind (transformers' or openvino-genai's);
    ``block`` (an Event) makes generate wait before the first token, to imitate a hung device;
    ``after_token(index)`` runs after each token, and a test may block in it.
    """

    def __init__(
        self,
        tokenizer: Any,
        detokenizer: Callable[[], Detokenizer],
        reply_ids: list[int],
        eos_id: int,
        context: int = 512,
        block: threading.Event | None = None,
        after_token: Callable[[int], object] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.make_detokenizer = detokenizer
        self.reply_ids = reply_ids
        self.model_config = {"max_position_embeddings": context}
        self.generation_config = {"eos_token_id": eos_id}
        self.block = block
        self.after_token = after_token
        self.prompts: list[list[int]] = []

    def detokenizer(self) -> Detokenizer:
        return self.make_detokenizer()

    def generate(
        self, request: GenerationRequest, on_tokens: Callable[[list[int]], None], should_stop: Callable[[], bool]
    ) -> None:
        self.prompts.append(list(request.prompt_ids))
        if self.block is not None:
            self.block.wait()
        for index, token in enumerate(self.reply_ids[: request.settings.max_new_tokens]):
            on_tokens([token])
            if token in request.end_token_ids or should_stop():
                break
            if self.after_token is not None:
                self.after_token(index)


@dataclass
class FakeEngine:
    """A chat engine that replies ``reply(messages)`` word by word and records every call.

    ``on_chunk(index, cancel)`` runs after each text chunk is consumed; a test uses it to
    press Ctrl-C or cancel in the middle of a reply.
    """

    reply: Callable[[list[Message]], str] = lambda messages: f"You said: {messages[-1]['content']}"
    on_chunk: Callable[[int, threading.Event], None] | None = None
    trimmed_turns: int = 0
    path: Path = Path("fake-model")
    device: str = "CPU"
    context_length: int = 2048
    calls: list[tuple[list[Message], GenerationSettings]] = field(default_factory=list)

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        settings = settings or GenerationSettings()
        cancel = cancel or threading.Event()
        self.calls.append(([dict(m) for m in messages], settings))  # type: ignore[misc]
        words = self.reply(messages).split(" ")
        produced = 0
        for index, word in enumerate(words):
            if cancel.is_set():
                break
            yield Chunk(text=word if index == 0 else " " + word)
            produced += 1
            if self.on_chunk is not None:
                self.on_chunk(index, cancel)
        finish = "cancelled" if cancel.is_set() else "eos"
        stats = ReplyStats(
            finish_reason=finish,
            prompt_tokens=sum(len(m["content"].split()) for m in messages),
            new_tokens=produced,
            ttft_s=0.01,
            decode_tok_s=100.0,
            trimmed_turns=self.trimmed_turns,
        )
        yield Chunk(stats=stats)
