"""A reply streamed into a saved conversation: what the page does on each turn, without the UI.

The reply is stored as it grows, so a closed tab or a crash keeps what was written; when the
consumer stops early (the Stop button interrupts the page's script) the text so far is kept
and marked as stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from ovchat.engine import Chunk, StreamingEngine
from ovchat.settings import GenerationSettings
from ovchat.store import ConversationStore

# Save a growing reply at most this often; every chunk would be dozens of writes a second.
SAVE_EVERY_S = 1.0


def reply_meta(final: Chunk | None) -> dict[str, Any]:
    """The metrics stored with a reply; no final chunk means the reply was stopped."""
    if final is None:
        return {"finish_reason": "cancelled", "stopped": True}
    return {
        "finish_reason": final.finish_reason,
        "stopped": final.finish_reason == "cancelled",
        "prompt_tokens": final.prompt_tokens,
        "new_tokens": final.new_tokens,
        "ttft_s": final.ttft_s,
        "decode_tok_s": final.decode_tok_s,
        "trimmed_turns": final.trimmed_turns,
    }


def describe_reply(meta: dict[str, Any]) -> str:
    """The line under a reply on the page: its metrics, and "stopped" for a reply the user stopped."""
    if not meta:
        return ""
    return describe_metrics({**meta, "finish_reason": "stopped" if meta.get("stopped") else meta.get("finish_reason")})


def describe_metrics(meta: dict[str, Any]) -> str:
    """Tokens, time to first token, speed, how the reply ended, and any turns left out."""
    parts = []
    if meta.get("new_tokens") is not None:
        parts.append(f"{meta['new_tokens']} tokens")
    if meta.get("ttft_s") is not None:
        parts.append(f"first token {meta['ttft_s']:.2f} s")
    if meta.get("decode_tok_s") is not None:
        parts.append(f"{meta['decode_tok_s']:.1f} tok/s")
    parts.append(str(meta.get("finish_reason") or ""))
    if meta.get("trimmed_turns"):
        parts.append(f"{meta['trimmed_turns']} older turns left out to fit the context")
    return " · ".join(parts)


def stream_into_store(
    engine: StreamingEngine,
    store: ConversationStore,
    conversation_id: int,
    settings: GenerationSettings,
    cancel: threading.Event | None = None,
) -> Iterator[str]:
    """Yield the reply's text pieces while saving the reply in the conversation.

    Closing this generator (or an exception in its consumer) stops generation and keeps
    the partial reply, marked stopped. A reply stopped before any text leaves no message.
    """
    messages = store.get(conversation_id).chat_messages()
    stream = engine.stream(messages, settings, cancel)
    parts: list[str] = []
    final: Chunk | None = None
    message_id: int | None = None
    saved_at = 0.0
    try:
        for chunk in stream:
            if chunk.finish_reason is not None:
                final = chunk
                continue
            parts.append(chunk.text)
            now = time.monotonic()
            if message_id is None:
                message_id = store.add_message(conversation_id, "assistant", "".join(parts), {"streaming": True})
                saved_at = now
            elif now - saved_at >= SAVE_EVERY_S:
                store.update_message(message_id, "".join(parts), {"streaming": True})
                saved_at = now
            yield chunk.text
    finally:
        stream.close()  # ends the engine's worker at once when the consumer left early
        if message_id is not None:
            store.update_message(message_id, "".join(parts), reply_meta(final))
        elif final is not None:  # a finished reply with no text is still a turn, with its metrics
            store.add_message(conversation_id, "assistant", "", reply_meta(final))
