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

from ovchat.chats.store import ConversationStore
from ovchat.engine import ReplyStats, StreamingEngine
from ovchat.engine.streaming import TokenLogprob
from ovchat.i18n import translate
from ovchat.settings import GenerationSettings

# Save a growing reply at most this often; every chunk would be dozens of writes a second.
SAVE_EVERY_S = 1.0
LOGPROBS_META = "logprobs"


def reply_meta(stats: ReplyStats | None, logprobs: tuple[TokenLogprob, ...] | None = None) -> dict[str, Any]:
    """The meta stored with a reply: its stats, whether it was stopped (no stats: stopped early), and
    its tokens' log-probabilities when they were asked for (the page shades the reply with them)."""
    if stats is None:
        return {"finish_reason": "cancelled", "stopped": True}
    meta = {**stats.to_dict(), "stopped": stats.finish_reason == "cancelled"}
    if logprobs is not None:
        meta[LOGPROBS_META] = [token.to_dict() for token in logprobs]
    return meta


def reply_logprobs(meta: dict[str, Any]) -> tuple[TokenLogprob, ...] | None:
    """The log-probabilities saved with a reply, if any (a malformed entry is treated as none)."""
    saved = meta.get(LOGPROBS_META)
    if not isinstance(saved, list):
        return None
    try:
        return tuple(TokenLogprob.from_dict(item) for item in saved)
    except (KeyError, TypeError, ValueError):
        return None


def describe_reply(meta: dict[str, Any], language: str = "en") -> str:
    """The line under a reply on the page: its stats, and "stopped" for a reply the user stopped."""
    stats = ReplyStats.from_dict(meta)
    stopped = bool(meta.get("stopped"))
    if stats is None:
        return translate(language, "reply.finish.stopped") if stopped else ""
    return stats.describe(finish_label="stopped" if stopped else None, language=language)


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
    stats: ReplyStats | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    message_id: int | None = None
    saved_at = 0.0
    try:
        for chunk in stream:
            if chunk.stats is not None:
                stats, logprobs = chunk.stats, chunk.logprobs
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
            store.update_message(message_id, "".join(parts), reply_meta(stats, logprobs))
        elif stats is not None:  # a finished reply with no text is still a turn, with its metrics
            store.add_message(conversation_id, "assistant", "", reply_meta(stats, logprobs))
