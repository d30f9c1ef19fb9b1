"""A reply streamed into the conversation store: saved as it grows, kept when stopped."""

from __future__ import annotations

import threading

import pytest
from fakes import FakeEngine

from ovchat.chats.recording import describe_reply, stream_into_store
from ovchat.chats.store import ConversationStore
from ovchat.engine import Chunk, ReplyStats
from ovchat.errors import OvchatError
from ovchat.settings import GenerationSettings

SETTINGS = GenerationSettings(temperature=0.0)


@pytest.fixture
def store() -> ConversationStore:
    return ConversationStore()


def new_chat(store: ConversationStore, text: str = "hello", system: str = "") -> int:
    chat_id = store.create("test", system)
    store.add_message(chat_id, "user", text)
    return chat_id


def test_a_finished_reply_is_saved_with_its_metrics(store: ConversationStore) -> None:
    engine = FakeEngine(trimmed_turns=2)
    chat_id = new_chat(store, system="Be brief.")
    pieces = list(stream_into_store(engine, store, chat_id, SETTINGS))
    assert "".join(pieces) == "You said: hello"
    assert engine.calls[0][0] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    reply = store.get(chat_id).messages[-1]
    assert (reply.role, reply.content) == ("assistant", "You said: hello")
    assert reply.meta["finish_reason"] == "eos" and reply.meta["stopped"] is False
    assert reply.meta["new_tokens"] == 3 and reply.meta["trimmed_turns"] == 2
    assert describe_reply(reply.meta) == (
        "3 tokens · first token 0.01 s · 100.0 tok/s · eos · 2 older turns left out to fit the context"
    )


def test_the_reply_is_in_the_store_while_it_streams(store: ConversationStore) -> None:
    seen: list[str] = []
    chat_id = new_chat(store)

    def look(index: int, cancel: threading.Event) -> None:
        seen.append(store.get(chat_id).messages[-1].content)

    engine = FakeEngine(reply=lambda messages: "a b c", on_chunk=look)
    list(stream_into_store(engine, store, chat_id, SETTINGS))
    assert seen[0] == "a"  # saved with the first piece, before the consumer even saw it
    assert store.get(chat_id).messages[-1].content == "a b c"


def test_closing_the_stream_keeps_the_partial_reply_marked_stopped(store: ConversationStore) -> None:
    chat_id = new_chat(store)
    pieces = stream_into_store(FakeEngine(reply=lambda messages: "one two three four"), store, chat_id, SETTINGS)
    assert next(pieces) + next(pieces) == "one two"
    pieces.close()  # what the page does when the Stop click interrupts its script
    reply = store.get(chat_id).messages[-1]
    assert reply.content == "one two" and reply.meta == {"finish_reason": "cancelled", "stopped": True}
    assert describe_reply(reply.meta) == "stopped"


def test_cancel_from_the_engine_is_marked_stopped_too(store: ConversationStore) -> None:
    def cancel_after_first(index: int, cancel: threading.Event) -> None:
        cancel.set()

    chat_id = new_chat(store)
    engine = FakeEngine(reply=lambda messages: "one two", on_chunk=cancel_after_first)
    list(stream_into_store(engine, store, chat_id, SETTINGS, threading.Event()))
    reply = store.get(chat_id).messages[-1]
    assert reply.content == "one" and reply.meta["stopped"] is True and reply.meta["new_tokens"] == 1


def test_a_stop_before_any_text_leaves_no_message(store: ConversationStore) -> None:
    chat_id = new_chat(store)
    pieces = stream_into_store(FakeEngine(), store, chat_id, SETTINGS)
    pieces.close()
    assert [m.role for m in store.get(chat_id).messages] == ["user"]


class SilentEngine(FakeEngine):
    """Ends its reply at once (eos as the first token): a final chunk and no text."""

    def stream(self, messages, settings=None, cancel=None):  # type: ignore[override]
        yield Chunk(stats=ReplyStats(finish_reason="eos", prompt_tokens=3, new_tokens=1, ttft_s=0.01))


def test_a_finished_reply_without_text_is_still_a_turn(store: ConversationStore) -> None:
    chat_id = new_chat(store)
    assert list(stream_into_store(SilentEngine(), store, chat_id, SETTINGS)) == []
    reply = store.get(chat_id).messages[-1]
    assert (reply.role, reply.content, reply.meta["finish_reason"]) == ("assistant", "", "eos")


def test_an_engine_error_reaches_the_caller_and_stores_nothing(store: ConversationStore) -> None:
    def too_long(messages: list) -> str:
        raise OvchatError("the message is too long")

    chat_id = new_chat(store)
    with pytest.raises(OvchatError, match="too long"):
        list(stream_into_store(FakeEngine(reply=too_long), store, chat_id, SETTINGS))
    assert [m.role for m in store.get(chat_id).messages] == ["user"]
