"""A reply streamed into a saved conversation: what the page does on each turn, without the UI.

The reply is stored as it grows, so a closed tab or a crash keeps what was written; when the
consumer stops early (the Stop button interrupts the page's script) the text so far is kept
and marked as stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ovchat.chats.store import ConversationStore
from ovchat.engine import ReplyStats, StreamingEngine
from ovchat.engine.streaming import TokenLogprob
from ovchat.errors import OvchatError
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
    """The line under a reply on the page: its stats, and "stopped" for a reply the user stopped; for a
    reply cut short by an error, the error; for one saved while it streamed and never finished (its page
    process was killed, or it is still being written in another tab), that it is unfinished."""
    stats = ReplyStats.from_dict(meta)
    stopped = bool(meta.get("stopped"))
    if isinstance(meta.get("error"), str):
        return translate(language, "reply.failed", error=meta["error"])
    if stats is None:
        if meta.get("streaming"):
            return translate(language, "reply.unfinished")
        return translate(language, "reply.finish.stopped") if stopped else ""
    return stats.describe(finish_label="stopped" if stopped else None, language=language)


def stream_into_store(
    engine: StreamingEngine,
    store: ConversationStore,
    conversation_id: int,
    settings: GenerationSettings,
    cancel: threading.Event | None = None,
    on_saved: Callable[[], None] = lambda: None,
) -> Iterator[str]:
    """Yield the reply's text pieces while saving the reply in the conversation.

    Closing this generator (or an exception in its consumer) stops generation and keeps
    the partial reply, marked stopped. A reply stopped before any text leaves no message.
    An engine error (a remote server that went away, say) keeps the partial reply too, marked with the
    error. ``on_saved`` is called after each write to the store, so a page can count its own changes
    to the chat (each is one revision).
    """
    messages = store.get(conversation_id).chat_messages()
    stream = engine.stream(messages, settings, cancel)
    parts: list[str] = []
    stats: ReplyStats | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    message_id: int | None = None
    saved_at = 0.0
    error: str | None = None
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
                on_saved()
            elif now - saved_at >= SAVE_EVERY_S:
                store.update_message(message_id, "".join(parts), {"streaming": True})
                saved_at = now
                on_saved()
            yield chunk.text
    except OvchatError as failure:
        error = str(failure)
        raise
    finally:
        stream.close()  # ends the engine's worker at once when the consumer left early
        meta = reply_meta(stats, logprobs) if error is None else {"finish_reason": "error", "error": error}
        if message_id is not None:
            store.update_message(message_id, "".join(parts), meta)
            on_saved()
        elif stats is not None:  # a finished reply with no text is still a turn, with its metrics
            store.add_message(conversation_id, "assistant", "", meta)
            on_saved()
