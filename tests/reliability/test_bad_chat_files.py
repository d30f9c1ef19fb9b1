"""Bad chat files to import: malformed JSON, wrong types, unknown roles, a 50 MB file, JSON nested 100 000 deep, and
titles and file names that look like paths. Each is refused in one line naming the file, before anything is written,
with the chats already stored untouched; or it is imported whole. A title is only ever text, never a path.

A chat file over 16 MB (MAX_CHAT_FILE_BYTES) is refused with its size, unread when it is a file: a whole model
context is well under 1 MB of text, so a file that size is most likely the wrong file (a data set, a log), and
importing it would fill the store and the page with messages no model can read back."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, ovchat

from ovchat.chats import ConversationStore
from ovchat.chats.files import MAX_CHAT_FILE_BYTES, chat_file_name, load_chat, parse_chat, save_chat
from ovchat.errors import OvchatError
from ovchat.prompt import Message

HEADER = '"format": "ovchat.chat", "version": 1'
ORIGIN = "upload.json"
KEPT: list[Message] = [{"role": "user", "content": "an earlier chat"}, {"role": "assistant", "content": "kept"}]


def chat(messages: str, extra: str = "") -> str:
    return "{" + HEADER + extra + ', "messages": ' + messages + "}"


# (id, the file's text, the error's words after "upload.json")
BAD_FILES: list[tuple[str, str, str]] = [
    ("empty", "", " is not valid JSON: Expecting value at line 1"),
    ("truncated", chat('[{"role": "user", "content": "hi"}')[:-2], " is not valid JSON: Expecting ',' delimiter"),
    ("trailing-comma", chat('[{"role": "user", "content": "hi"},]'), " is not valid JSON: "),
    ("single-quotes", "{'format': 'ovchat.chat'}", " is not valid JSON: Expecting property name enclosed in double"),
    ("not-json-at-all", "Hello, this is a chat.", " is not valid JSON: Expecting value at line 1"),
    ("null", "null", " must hold a chat object or a list of messages"),
    ("a-number", "42", " must hold a chat object or a list of messages"),
    ("a-string", '"chat"', " must hold a chat object or a list of messages"),
    ("no-format", '{"messages": []}', ' is not an ovchat chat (no "format": "ovchat.chat")'),
    ("another-format", '{"format": "chatgpt", "messages": []}', ' is not an ovchat chat (no "format": "ovchat.chat")'),
    ("newer-version", '{"format": "ovchat.chat", "version": 2, "messages": []}', " has chat format version 2; this"),
    ("version-a-string", '{"format": "ovchat.chat", "version": "1", "messages": []}', " has chat format version '1'"),
    ("no-messages", "{" + HEADER + "}", " has no messages"),
    ("messages-an-object", chat('{"role": "user"}'), ": messages must be a list"),
    ("messages-null", chat("null"), ": messages must be a list"),
    ("message-a-string", chat('["hi"]'), ": message 0 has no valid role (system, user or assistant)"),
    ("message-a-list", chat('[["user", "hi"]]'), ": message 0 has no valid role"),
    ("role-tool", chat('[{"role": "tool", "content": "42"}]'), ": message 0 has no valid role"),
    ("role-function", chat('[{"role": "user", "content": "a"}, {"role": "function", "content": "b"}]'), ": message 1"),
    ("role-capitalized", chat('[{"role": "User", "content": "hi"}]'), ": message 0 has no valid role"),
    ("role-empty", chat('[{"role": "", "content": "hi"}]'), ": message 0 has no valid role"),
    ("role-a-number", chat('[{"role": 1, "content": "hi"}]'), ": message 0 has no valid role"),
    ("role-missing", chat('[{"content": "hi"}]'), ": message 0 has no valid role"),
    ("content-missing", chat('[{"role": "user"}]'), ": message 0 has no text content"),
    ("content-null", chat('[{"role": "user", "content": null}]'), ": message 0 has no text content"),
    ("content-a-number", chat('[{"role": "user", "content": 7}]'), ": message 0 has no text content"),
    ("content-parts", chat('[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]'), ": message 0 has no"),
    ("content-an-object", chat('[{"role": "user", "content": {"text": "hi"}}]'), ": message 0 has no text content"),
    ("content-lone-surrogate", chat('[{"role": "user", "content": "a\\ud800b"}]'),
     ": message 0 is not valid Unicode text: a lone surrogate (U+D800) at character 1"),
    ("title-lone-surrogate", chat('[{"role": "user", "content": "hi"}]', ', "title": "\\udfff"'),
     ": the title is not valid Unicode text: a lone surrogate (U+DFFF) at character 0"),
    ("nested-100000-deep", "[" * 100_000 + "]" * 100_000, " is not a chat: its JSON is nested too deeply"),
    ("nested-deep-in-messages", chat("[" * 100_000), " is not a chat: its JSON is nested too deeply"),
    ("bare-list-of-bad-messages", '[{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]',
     ": message 1 has no valid role"),
]  # fmt: skip


@pytest.fixture
def store(isolated_data_home: Path) -> ConversationStore:
    store = ConversationStore()
    store.import_chat(KEPT, "Kept")
    return store


def stored(store: ConversationStore) -> list[tuple[str, list[Message]]]:
    return [(info.title, store.get(info.id).chat_messages()) for info in store.list()]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_bad_chat_file_is_refused_in_one_line(store: ConversationStore, text: str, message: str) -> None:
    before = stored(store)
    with pytest.raises(OvchatError) as refused:
        store.import_chat(*parse_chat(text, origin=ORIGIN))  # what the page does with an upload
    assert str(refused.value).startswith(ORIGIN + message), str(refused.value)
    assert "\n" not in str(refused.value)
    assert stored(store) == before == [("Kept", KEPT)]  # nothing written, nothing lost


# (id, the file's text, the messages and title imported): odd but sound files import whole.
GOOD_FILES: list[tuple[str, str, list[Message], str | None]] = [
    ("bare-openai-list", '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]',
     [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], None),
    ("byte-order-mark", "\ufeff" + chat('[{"role": "user", "content": "hi"}]', ', "title": "BOM"'),
     [{"role": "user", "content": "hi"}], "BOM"),
    ("unknown-keys-dropped", chat('[{"role": "user", "content": "hi", "name": "x", "tool_calls": []}]', ', "x": 1'),
     [{"role": "user", "content": "hi"}], None),
    ("title-not-a-string", chat('[{"role": "user", "content": "hi"}]', ', "title": ["a"]'),
     [{"role": "user", "content": "hi"}], None),
    ("control-characters", chat('[{"role": "user", "content": "a\\u0000b\\u001b[31m\\r\\n"}]'),
     [{"role": "user", "content": "a\x00b\x1b[31m\r\n"}], None),
    ("cjk-emoji-rtl", chat('[{"role": "user", "content": "数学 😀 مرحبا e\\u0301"}]', ', "title": "数学"'),
     [{"role": "user", "content": "数学 😀 مرحبا e\u0301"}], "数学"),
    ("no-messages-at-all", chat("[]"), [], None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "messages", "title"), [c[1:] for c in GOOD_FILES], ids=[c[0] for c in GOOD_FILES])
def test_an_odd_but_sound_chat_file_imports_whole(
    store: ConversationStore, text: str, messages: list[Message], title: str | None
) -> None:
    parsed = parse_chat(text, origin=ORIGIN)
    assert parsed == (messages, title)
    new_id = store.import_chat(*parsed)
    assert store.get(new_id).chat_messages() == messages
    assert ("Kept", KEPT) in stored(store)


PATH_TITLES = ["../../x", "/etc/passwd", "..\\..\\windows\\system32", "~/.ssh/id_rsa", "a/../../b", "CON", "..", "."]


@pytest.mark.parametrize("title", PATH_TITLES)
def test_a_title_that_looks_like_a_path_stays_text(
    store: ConversationStore, isolated_data_home: Path, tmp_path: Path, title: str
) -> None:
    """A title is shown and saved as text: importing, exporting and naming a download never use it as a path."""
    text = json.dumps({"format": "ovchat.chat", "version": 1, "title": title, "messages": [KEPT[0]]})
    before = sorted(tmp_path.rglob("*"))
    new_id = store.import_chat(*parse_chat(text, origin=f"{title}.json"))
    assert store.export_chat(new_id) == ([KEPT[0]], title)
    name = chat_file_name(title)
    assert "/" not in name and "\\" not in name and not name.startswith(".") and name.endswith(".json")
    assert Path(name).name == name  # one plain file name, in whatever folder the browser saves to
    # The store's database files are the only things written, and only inside the data folder.
    written = [path for path in sorted(tmp_path.rglob("*")) if path not in before]
    assert all(path.is_relative_to(isolated_data_home) for path in written), written


def test_a_bad_upload_name_is_only_shown(store: ConversationStore, tmp_path: Path) -> None:
    """The page passes the uploaded file's name as the origin: it appears in the message and nowhere else."""
    name = "../../../etc/cron.d/x.json"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(OvchatError, match=r"^\.\./\.\./\.\./etc/cron\.d/x\.json is not valid JSON"):
        parse_chat("{", origin=name)
    assert sorted(tmp_path.rglob("*")) == before


def write_big_chat(path: Path, size: int) -> None:
    """A well-formed chat file of about ``size`` bytes: turns of 10 kB."""
    turn = (
        json.dumps({"role": "user", "content": "x" * 10_000})
        + ", "
        + json.dumps({"role": "assistant", "content": "y" * 10_000})
    )
    count = size // (len(turn) + 2)
    with path.open("w", encoding="utf-8") as file:
        file.write("{" + HEADER + ', "messages": [')
        file.write(", ".join([turn] * count))
        file.write("]}")


def test_a_50_mb_chat_file_is_refused_unread(store: ConversationStore, tmp_path: Path, record_property) -> None:
    big = tmp_path / "big.json"
    write_big_chat(big, 50_000_000)
    size = big.stat().st_size
    assert size > 49_000_000
    before = stored(store)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(OvchatError) as refused:
            load_chat(big)  # the terminal's `ovchat chat -i`
        record_property("load_chat_seconds", round(time.perf_counter() - started, 4))
        # Refused from its size alone: reading it would have taken 50 MB, parsing it ten times that.
        assert tracemalloc.get_traced_memory()[1] < 1_000_000
    finally:
        tracemalloc.stop()
    assert str(refused.value) == f"{big} is too large to import ({size / 1e6:.1f} MB); a chat file can be at most 16 MB"
    text = big.read_text(encoding="utf-8")  # what the page has in memory after an upload
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(OvchatError, match=r"^big\.json is too large to import \(\d+\.\d million characters\)"):
            parse_chat(text, origin="big.json")
        record_property("parse_chat_seconds", round(time.perf_counter() - started, 4))
        assert tracemalloc.get_traced_memory()[1] < 1_000_000  # not parsed
    finally:
        tracemalloc.stop()
    assert stored(store) == before


def test_a_chat_file_under_the_limit_imports_whole(store: ConversationStore, tmp_path: Path) -> None:
    large = tmp_path / "large.json"
    write_big_chat(large, MAX_CHAT_FILE_BYTES - 100_000)
    messages, _ = load_chat(large)
    new_id = store.import_chat(messages)
    assert len(store.get(new_id).chat_messages()) == len(messages) > 1000
    assert ("Kept", KEPT) in stored(store)


# (id, the chat file given to `ovchat chat -i`, the error's words): refused before any model loads.
CLI_FILES: list[tuple[str, str | bytes, str]] = [
    ("malformed", '{"format": "ovchat.chat",', "is not valid JSON: Expecting property name"),
    ("unknown-role", chat('[{"role": "tool", "content": "42"}]'), "message 0 has no valid role"),
    ("nested-100000-deep", "[" * 100_000, "is not a chat: its JSON is nested too deeply"),
    ("not-utf8", b'{"format": "ovchat.chat", "title": "caf\xe9"}', "cannot read chat file"),
]


@pytest.mark.parametrize(("content", "message"), [c[1:] for c in CLI_FILES], ids=[c[0] for c in CLI_FILES])
def test_chat_input_file_errors_are_one_line(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "chat.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    assert_one_line_error(ovchat("chat", "-i", str(path)), message)
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode("utf-8"))


def test_chat_refuses_a_50_mb_input_file(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as file:  # sparse: the size is what is checked, before a byte is read
        file.truncate(50 * 1024 * 1024)
    assert_one_line_error(ovchat("chat", "-i", str(big)), "is too large to import (52.4 MB); a chat file can be at")


def test_a_saved_chat_is_never_half_written(tmp_path: Path) -> None:
    """Saving over a chat file writes a new file and renames it: the old text stays whole until the new is."""
    path = tmp_path / "chat.json"
    save_chat(path, KEPT, "Kept")
    before = os.stat(path).st_ino
    save_chat(path, [*KEPT, {"role": "user", "content": "more"}], "Kept")
    assert os.stat(path).st_ino != before and load_chat(path)[0][-1]["content"] == "more"
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]  # no temporary file left


# (id, the messages, the title, the error's words): text no UTF-8 encoder takes, refused before the file is touched.
UNSAVEABLE: list[tuple[str, list[Message], str | None, str]] = [
    ("lone-surrogate-in-a-message", [*KEPT, {"role": "user", "content": "a\ud800"}], None,
     "message 2 is not valid Unicode text: a lone surrogate (U+D800) at character 1"),
    ("byte-not-utf8-in-the-title", KEPT, "caf\udce9",
     "the title is not valid Unicode text: the byte 0xE9, which is not UTF-8, at character 3"),
]  # fmt: skip


@pytest.mark.parametrize(("messages", "title", "message"), [c[1:] for c in UNSAVEABLE], ids=[c[0] for c in UNSAVEABLE])
def test_a_chat_that_cannot_be_written_leaves_the_saved_file_whole(
    tmp_path: Path, messages: list[Message], title: str | None, message: str
) -> None:
    path = tmp_path / "chat.json"
    save_chat(path, KEPT, "Kept")
    before = path.read_bytes()
    with pytest.raises(OvchatError) as refused:
        save_chat(path, messages, title)
    assert str(refused.value) == f"cannot save the chat to {path}: {message}"
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["chat.json"]
