"""Scripted stand-ins for tests: models whose "generation" is a fixed token list, and a chat engine.

ScriptedModel (the optimum backend) and ScriptedPipeline (the genai backend) go inside the real
Engine (real tokenizer, streamer, stop cutter, cancel); FakeEngine replaces the engine for the
terminal chat and the page, like simonw/llm's MockModel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ovchat.chat import Message
from ovchat.engine import Chunk
from ovchat.settings import GenerationSettings


def system(content: str) -> Message:
    return {"role": "system", "content": content}


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


class ScriptedModel:
    """Answers every prompt with ``reply_ids``, one token at a time, as generate() would.

    ``block`` (an Event) makes generate wait before the first token, to imitate a hung device.
    """

    def __init__(self, reply_ids: list[int], eos_id: int, context: int = 512, block: threading.Event | None = None):
        self.reply_ids = reply_ids
        self.config = SimpleNamespace(max_position_embeddings=context)
        self.generation_config = SimpleNamespace(eos_token_id=eos_id)
        self.block = block
        self.calls: list[dict[str, Any]] = []

    def generate(self, input_ids: Any, streamer: Any, stopping_criteria: Any, max_new_tokens: int, **kwargs: Any):
        import torch

        self.calls.append({"input_ids": input_ids, "max_new_tokens": max_new_tokens, **kwargs})
        if self.block is not None:
            self.block.wait()
        streamer.put(input_ids)
        sequence = input_ids
        for token in self.reply_ids[:max_new_tokens]:
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
            streamer.put(torch.tensor([token]))
            if token in (kwargs.get("eos_token_id") or []) or any(c(sequence, None).all() for c in stopping_criteria):
                break
        streamer.end()
        return sequence


class ScriptedPipeline:
    """openvino-genai's LLMPipeline answering every prompt with ``reply_ids``, through the streamer it is given.

    Goes inside a real GenaiModel and Engine (real genai tokenizer, text streamer, stop cutter, cancel).
    """

    def __init__(self, tokenizer: Any, reply_ids: list[int], after_token: Callable[[int], object] | None = None):
        self.tokenizer = tokenizer
        self.reply_ids = reply_ids
        self.after_token = after_token  # called with each token's index; a test may block in it
        self.prompts: list[list[int]] = []

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, inputs: Any, config: Any, streamer: Any) -> None:
        import openvino_genai

        self.prompts.append(inputs.input_ids.data[0].tolist())
        for index, token in enumerate(self.reply_ids[: config.max_new_tokens]):
            status = streamer.write(token)
            if token in config.stop_token_ids or status != openvino_genai.StreamingStatus.RUNNING:
                break
            if self.after_token is not None:
                self.after_token(index)
        streamer.end()


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
        yield Chunk(
            finish_reason=finish,
            prompt_tokens=sum(len(m["content"].split()) for m in messages),
            new_tokens=produced,
            ttft_s=0.01,
            decode_tok_s=100.0,
            trimmed_turns=self.trimmed_turns,
        )
