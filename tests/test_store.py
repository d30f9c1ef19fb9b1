"""ConversationStore: the page's saved chats in a real SQLite file, its migrations, threads and errors."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ovchat.chats import store as store_module
from ovchat.chats.files import chat_to_dict, chat_to_markdown, parse_chat
from ovchat.chats.schema import MIGRATIONS, SCHEMA_VERSION
from ovchat.chats.store import (
    STORE_FILE,
    Conversation,
    ConversationInfo,
    ConversationStore,
    StoredMessage,
    title_from,
)
from ovchat.errors import OvchatError
from ovchat.prompt import Message

CHINESE = "数学是被发明还是被发现的？"
EMOJI = "😀👍🏽👨‍👩‍👧"


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    return ConversationStore(tmp_path / "chats.sqlite3")


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to look at (or build) the file behind the store's back."""
    with closing(sqlite3.connect(path)) as connection, connection:
        yield connection


def user_version(path: Path) -> int:
    with raw(path) as connection:
        return connection.execute("PRAGMA user_version").fetchone()[0]


def message_columns(path: Path) -> list[str]:
    with raw(path) as connection:
        return [row[1] for row in connection.execute("PRAGMA table_info(messages)")]


def test_default_store_lives_in_ovchat_home_and_uses_wal(isolated_data_home: Path) -> None:
    assert not isolated_data_home.exists()
    store = ConversationStore()
    assert store.path == isolated_data_home / STORE_FILE
    assert store.path.is_file()
    with raw(store.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert user_version(store.path) == SCHEMA_VERSION == len(MIGRATIONS) == 3


def test_create_get_and_list_newest_changed_first(store: ConversationStore) -> None:
    assert store.list() == []
    first = store.create("First", system_prompt="Be brief.")
    second = store.create()
    assert [info.id for info in store.list()] == [second, first]

    store.add_message(first, "user", "hello")
    listed = store.list()
    assert [info.id for info in listed] == [first, second]
    assert [(info.title, info.message_count) for info in listed] == [("First", 1), ("New chat", 0)]
    assert listed[0].updated_at > listed[1].updated_at >= listed[1].created_at

    conversation = store.get(first)
    assert isinstance(conversation, Conversation)
    assert conversation.info == listed[0]
    assert conversation.system_prompt == "Be brief."
    assert conversation.messages == [StoredMessage(conversation.messages[0].id, "user", "hello", {})]


def test_the_chat_changed_last_is_first_even_when_the_clock_stands_still(
    store: ConversationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "time", SimpleNamespace(time=lambda: 1_000_000.0))
    chats = [store.create(str(index)) for index in range(3)]
    assert [info.id for info in store.list()] == chats[::-1]
    store.add_message(chats[0], "user", "touched")
    store.set_system_prompt(chats[1], "touched later")
    assert [info.id for info in store.list()] == [chats[1], chats[0], chats[2]]
    assert len({info.updated_at for info in store.list()}) == 3


def test_what_the_store_returns_is_immutable(store: ConversationStore) -> None:
    conversation = store.get(store.create())
    with pytest.raises(dataclasses.FrozenInstanceError):
        conversation.system_prompt = "changed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        conversation.info.title = "changed"  # type: ignore[misc]


def test_a_blank_title_on_create_becomes_the_default(store: ConversationStore) -> None:
    assert store.get(store.create("  \n ")).info.title == "New chat"


def test_rename_cleans_the_title_keeps_the_order_and_refuses_an_empty_one(store: ConversationStore) -> None:
    old = store.create("old")
    new = store.create("new")
    store.rename(old, "  Trip\n to   Kyoto ")
    assert store.get(old).info.title == "Trip to Kyoto"
    assert [info.id for info in store.list()] == [new, old]  # a rename is not a change of the chat
    with pytest.raises(OvchatError, match="title cannot be empty"):
        store.rename(old, " \t ")
    assert store.get(old).info.title == "Trip to Kyoto"


def test_delete_removes_the_chat_and_its_messages_only(store: ConversationStore) -> None:
    doomed = store.create("doomed")
    kept = store.create("kept")
    for text in ("a", "b", "c"):
        store.add_message(doomed, "user", text)
    store.add_message(kept, "user", "stays")

    store.delete(doomed)
    assert [info.id for info in store.list()] == [kept]
    with raw(store.path) as connection:
        assert (
            connection.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (doomed,)).fetchone()[0] == 0
        )
        assert connection.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
    with pytest.raises(OvchatError, match=f"chat {doomed} does not exist"):
        store.get(doomed)
    # Another tab may still hold the deleted id: it must never name a new chat.
    assert store.create("fresh") not in (doomed, kept)


def test_add_and_update_messages(store: ConversationStore) -> None:
    chat = store.create()
    question = store.add_message(chat, "user", "Why is the sky blue?")
    reply = store.add_message(chat, "assistant", "Rayl", {"streaming": True})
    assert reply != question

    store.update_message(reply, "Rayleigh scatter")  # no meta: the old one stays
    assert store.get(chat).messages[1].meta == {"streaming": True}
    store.update_message(reply, "Rayleigh scattering.", {"finish_reason": "cancelled", "stopped": True})

    messages = store.get(chat).messages
    assert [(m.id, m.role, m.content) for m in messages] == [
        (question, "user", "Why is the sky blue?"),
        (reply, "assistant", "Rayleigh scattering."),
    ]
    assert messages[0].meta == {}
    assert messages[1].meta == {"finish_reason": "cancelled", "stopped": True}


def test_updating_a_reply_moves_its_chat_to_the_top(store: ConversationStore) -> None:
    older = store.create()
    reply = store.add_message(older, "assistant", "")
    newer = store.create()
    store.update_message(reply, "grown")
    assert [info.id for info in store.list()] == [older, newer]


@pytest.mark.parametrize(
    ("role", "content", "meta", "error"),
    [
        ("system", "hi", None, "must be user or assistant"),
        ("tool", "hi", None, "must be user or assistant"),
        ("user", None, None, "content must be text"),
        ("user", "hi", ["not", "a", "dict"], "meta must be a dict"),
        ("user", "hi", {"when": object()}, "cannot be saved as JSON"),
    ],
)
def test_add_message_rejects_bad_input_and_writes_nothing(
    store: ConversationStore, role: str, content: Any, meta: Any, error: str
) -> None:
    chat = store.create()
    with pytest.raises(OvchatError, match=error):
        store.add_message(chat, role, content, meta)
    assert store.get(chat).messages == []


def test_truncate_keeps_the_first_messages_and_appending_continues_after_them(store: ConversationStore) -> None:
    chat = store.create()
    for index, role in enumerate(["user", "assistant", "user", "assistant"]):
        store.add_message(chat, role, f"m{index}")

    store.truncate(chat, 10)  # more than there are: nothing to drop
    assert len(store.get(chat).messages) == 4
    store.truncate(chat, 3)  # regenerate: drop the last reply
    assert [m.content for m in store.get(chat).messages] == ["m0", "m1", "m2"]
    store.truncate(chat, 2)  # edit: drop from the last user message on
    store.add_message(chat, "user", "edited")
    assert [m.content for m in store.get(chat).messages] == ["m0", "m1", "edited"]
    store.truncate(chat, 0)
    assert store.get(chat).messages == []
    assert store.get(chat).info.message_count == 0
    with pytest.raises(OvchatError, match="at least 0"):
        store.truncate(chat, -1)


def test_chat_messages_puts_a_non_blank_system_prompt_first(store: ConversationStore) -> None:
    chat = store.create()
    store.add_message(chat, "user", "hi")
    store.add_message(chat, "assistant", "hello")
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert store.get(chat).chat_messages() == plain

    store.set_system_prompt(chat, "   \n")
    assert store.get(chat).chat_messages() == plain

    store.set_system_prompt(chat, "Answer in French.")
    assert store.get(chat).system_prompt == "Answer in French."
    assert store.get(chat).chat_messages() == [{"role": "system", "content": "Answer in French."}, *plain]


def test_import_joins_system_messages_and_names_the_chat_after_the_first_question(store: ConversationStore) -> None:
    messages: list[Message] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France, and why is it Paris?"},
        {"role": "system", "content": "Use metric units."},
        {"role": "assistant", "content": "Paris."},
    ]
    chat = store.import_chat(messages, None)
    conversation = store.get(chat)
    assert conversation.system_prompt == "Be brief.\n\nUse metric units."
    assert [(m.role, m.content) for m in conversation.messages] == [
        ("user", "What is the capital of France, and why is it Paris?"),
        ("assistant", "Paris."),
    ]
    assert conversation.info.title == "What is the capital of France, and why…"
    assert store.list()[0].id == chat

    assert store.get(store.import_chat(messages, "  Geography ")).info.title == "Geography"
    assert store.get(store.import_chat([], None)).info.title == "New chat"


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ("not a list", "must be a list"),
        ([{"role": "user", "content": "ok"}, {"role": "robot", "content": "x"}], "message 1 has no valid role"),
        ([{"role": "user", "content": "ok"}, {"role": "assistant"}], "message 1 has no text content"),
        ([{"role": "user", "content": "ok"}, "hello"], "message 1 has no valid role"),
    ],
)
def test_a_malformed_import_leaves_the_store_unchanged(store: ConversationStore, messages: Any, error: str) -> None:
    store.create("existing")
    before = store.list()
    with pytest.raises(OvchatError, match=error):
        store.import_chat(messages, "bad")
    assert store.list() == before
    with raw(store.path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 1


def test_export_round_trips_through_the_chat_file_format(store: ConversationStore) -> None:
    chat = store.create("Maths", system_prompt="Be brief.")
    store.add_message(chat, "user", f"{CHINESE} {EMOJI}")
    store.add_message(chat, "assistant", "Both.\n\n```python\nprint(1)\n```", {"new_tokens": 9})

    messages, title = store.export_chat(chat)
    assert title == "Maths"
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert parse_chat(json.dumps(chat_to_dict(messages, title), ensure_ascii=False)) == (messages, title)
    assert chat_to_markdown(messages, title).startswith("# Maths\n")

    loaded, loaded_title = parse_chat(json.dumps(chat_to_dict(messages, title)))
    copy = store.import_chat(loaded, loaded_title)
    assert copy != chat
    assert store.export_chat(copy) == (messages, "Maths")


UNKNOWN = 4242
CALLS: list[tuple[str, Callable[[ConversationStore], object]]] = [
    ("get", lambda s: s.get(UNKNOWN)),
    ("rename", lambda s: s.rename(UNKNOWN, "x")),
    ("delete", lambda s: s.delete(UNKNOWN)),
    ("set_system_prompt", lambda s: s.set_system_prompt(UNKNOWN, "x")),
    ("add_message", lambda s: s.add_message(UNKNOWN, "user", "x")),
    ("truncate", lambda s: s.truncate(UNKNOWN, 0)),
    ("export_chat", lambda s: s.export_chat(UNKNOWN)),
]


@pytest.mark.parametrize("call", [call for _, call in CALLS], ids=[name for name, _ in CALLS])
def test_an_unknown_chat_id_is_a_clear_error_and_changes_nothing(
    store: ConversationStore, call: Callable[[ConversationStore], object]
) -> None:
    store.create("existing")
    before = store.list()
    with pytest.raises(OvchatError, match=f"^chat {UNKNOWN} does not exist") as raised:
        call(store)
    assert "\n" not in str(raised.value)
    assert store.list() == before


def test_an_unknown_message_id_is_a_clear_error(store: ConversationStore) -> None:
    chat = store.create()
    gone = store.add_message(chat, "assistant", "partial")
    store.truncate(chat, 0)  # another tab regenerated while this reply was streaming
    with pytest.raises(OvchatError, match=f"^message {gone} does not exist"):
        store.update_message(gone, "more")
    assert store.get(chat).messages == []


def test_unicode_round_trips_everywhere(store: ConversationStore) -> None:
    chat = store.create(f"{CHINESE} {EMOJI}", system_prompt=f"用中文回答 {EMOJI}")
    message = store.add_message(chat, "user", f"{CHINESE}\n{EMOJI}\x00 after a NUL", {"note": f"{CHINESE} {EMOJI}"})
    conversation = store.get(chat)
    assert conversation.info.title == f"{CHINESE} {EMOJI}"
    assert conversation.system_prompt == f"用中文回答 {EMOJI}"
    assert conversation.messages == [
        StoredMessage(message, "user", f"{CHINESE}\n{EMOJI}\x00 after a NUL", {"note": f"{CHINESE} {EMOJI}"})
    ]


def build_v1_database(path: Path) -> None:
    """A chat store as the first schema version wrote it, with a chat and two messages."""
    with raw(path) as connection:
        connection.executescript(MIGRATIONS[0])
        connection.execute(
            "INSERT INTO conversations (id, title, system_prompt, created_at, updated_at)"
            " VALUES (7, 'Old chat', 'Be kind.', 1000.0, 2000.0)"
        )
        connection.executemany(
            "INSERT INTO messages (conversation_id, position, role, content) VALUES (7, ?, ?, ?)",
            [(0, "user", "hi"), (1, "assistant", "hello")],
        )
        connection.execute("PRAGMA user_version = 1")


def test_a_v1_database_is_migrated_and_its_chats_stay_usable(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    build_v1_database(path)
    assert user_version(path) == 1
    assert "meta" not in message_columns(path)

    store = ConversationStore(path)
    assert user_version(path) == SCHEMA_VERSION
    assert "meta" in message_columns(path)
    assert store.list() == [ConversationInfo(7, "Old chat", 1000.0, 2000.0, 2, 0)]  # revision 0 from v3
    old = store.get(7)
    assert old.chat_messages() == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    assert [m.meta for m in old.messages] == [{}, {}]

    added = store.add_message(7, "user", "still here?", {"edited": True})
    assert [(m.id, m.content, m.meta) for m in store.get(7).messages][-1] == (added, "still here?", {"edited": True})
    # Opening it again finds nothing to do.
    assert ConversationStore(path).get(7).info.message_count == 3


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.sqlite3"
    build_v1_database(path)
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, "ALTER TABLE no_such_table ADD COLUMN x TEXT;"))
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        ConversationStore(path)
    # v2 ran before v3 failed, but all pending migrations are one transaction.
    assert user_version(path) == 1
    assert "meta" not in message_columns(path)


def test_a_database_from_a_newer_ovchat_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    with raw(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(OvchatError) as raised:
        ConversationStore(path)
    assert str(raised.value) == (
        f"the chat store {path} was written by a newer ovchat (schema 99, this one reads up to {SCHEMA_VERSION})"
    )
    assert user_version(path) == 99


@pytest.mark.parametrize("content", [b"not a database at all\n" * 200, b"SQLite format 3\x00" + b"\xff" * 4096])
def test_a_file_that_is_not_a_database_is_a_one_line_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "chats.sqlite3"
    path.write_bytes(content)
    with pytest.raises(OvchatError) as raised:
        ConversationStore(path)
    message = str(raised.value)
    assert str(path) in message
    assert "\n" not in message
    assert path.read_bytes() == content  # left alone for the user to look at


def test_another_programs_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with raw(path) as connection:
        connection.execute("CREATE TABLE conversations (whatever TEXT)")
    with pytest.raises(OvchatError, match="another program"):
        ConversationStore(path)


def test_a_folder_in_place_of_the_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "chats.sqlite3"
    path.mkdir()
    with pytest.raises(OvchatError, match=f"cannot use the chat store {path}"):
        ConversationStore(path)


def test_two_threads_write_to_one_store_at_once(store: ConversationStore) -> None:
    chats = [store.create("left"), store.create("right")]
    start = threading.Barrier(len(chats))
    errors: list[BaseException] = []

    def write(chat: int) -> None:
        try:
            start.wait()
            for index in range(50):
                store.add_message(chat, "user" if index % 2 == 0 else "assistant", f"{chat}:{index}")
        except BaseException as error:  # surfaced by the assertion below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=write, args=(chat,)) for chat in chats]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    for chat in chats:
        assert [m.content for m in store.get(chat).messages] == [f"{chat}:{index}" for index in range(50)]
    # A second store on the same file (another page process) sees it all too.
    assert sum(info.message_count for info in ConversationStore(store.path).list()) == 100


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("Hello", 40, "Hello"),
        ("  Hello \t  there\n", 40, "Hello there"),
        ("\n\n   \nSecond line first\nthird", 40, "Second line first"),
        ("", 40, "New chat"),
        (" \n\t ", 40, "New chat"),
        ("x" * 40, 40, "x" * 40),
        ("Explain the difference between a list and a tuple in Python", 40, "Explain the difference between a list…"),
        ("Hello, world, and everyone else in it", 20, "Hello, world, and…"),
        ("Hello, world, everyone", 14, "Hello, world…"),
        ("a " + "b" * 60, 20, "a " + "b" * 17 + "…"),
        ("https://example.com/" + "x" * 50, 20, "https://example.com…"),
        (CHINESE * 3, 10, CHINESE[:9] + "…"),
        (f"{EMOJI} party time tonight", 15, f"{EMOJI} party…"),
        ("Hello there", 1, "…"),
    ],
)
def test_title_from(text: str, limit: int, expected: str) -> None:
    title = title_from(text, limit)
    assert title == expected
    assert len(title) <= max(limit, len("New chat"))


def test_title_from_needs_room() -> None:
    with pytest.raises(ValueError):
        title_from("anything", 0)
