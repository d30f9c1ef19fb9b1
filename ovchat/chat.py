"""Chat messages and prompt rendering with the tokenizer's own chat template."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from ovchat.errors import OvchatError

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


class Message(TypedDict):
    role: Role
    content: str


def validate_messages(messages: list[Message]) -> None:
    if not messages:
        raise OvchatError("a chat needs at least one message")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise OvchatError(f"message {index} has no valid role (system, user or assistant)")
        if not isinstance(message.get("content"), str):
            raise OvchatError(f"message {index} has no text content")


def render_prompt(tokenizer: Any, messages: list[Message]) -> str:
    """The prompt text for the next assistant turn, from the tokenizer's chat template."""
    validate_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        raise OvchatError("this model's tokenizer has no chat template")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
