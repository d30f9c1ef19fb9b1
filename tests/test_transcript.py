"""Chat files: what the terminal chat saves and loads; malformed files get a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovchat.chats.files import chat_to_markdown, load_chat, parse_chat, save_chat
from ovchat.errors import OvchatError

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "数学是被发明还是被发现的？ 😀"},
    {"role": "assistant", "content": "Both.\n\n```python\nprint(1)\n```"},
]


def test_save_and_load_round_trip_keeps_every_character(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "chat.json"
    save_chat(target, CHAT, title="Maths")
    assert load_chat(target) == (CHAT, "Maths")
    document = json.loads(target.read_text(encoding="utf-8"))
    assert (document["format"], document["version"]) == ("ovchat.chat", 1)
    assert "数学" in target.read_text(encoding="utf-8")  # readable, not \\u escapes
    assert [p.name for p in target.parent.iterdir()] == ["chat.json"]  # no temp file left


def test_a_bare_list_of_messages_is_accepted() -> None:
    messages, title = parse_chat(json.dumps(CHAT))
    assert messages == CHAT and title is None


def test_extra_keys_in_messages_are_dropped() -> None:
    messages, _ = parse_chat(json.dumps([{"role": "user", "content": "hi", "name": "x", "id": 3}]))
    assert messages == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "is not valid JSON"),
        ("", "is not valid JSON"),
        ('"a string"', "must hold a chat object or a list of messages"),
        ('{"messages": []}', "is not an ovchat chat"),
        ('{"format": "ovchat.chat", "version": 99, "messages": []}', "version 99"),
        ('{"format": "ovchat.chat", "version": 1}', "has no messages"),
        ('{"format": "ovchat.chat", "version": 1, "messages": {}}', "messages must be a list"),
        ('[{"role": "robot", "content": "x"}]', "message 0 has no valid role"),
        ('[{"role": "user", "content": "x"}, {"role": "user"}]', "message 1 has no text content"),
        ('[{"role": "user", "content": 5}]', "message 0 has no text content"),
        ('["hello"]', "message 0 has no valid role"),
    ],
)
def test_malformed_chats_get_a_clear_one_line_error(text: str, fragment: str) -> None:
    with pytest.raises(OvchatError) as caught:
        parse_chat(text, origin="chat.json")
    message = str(caught.value)
    assert fragment in message and message.startswith("chat.json") and "\n" not in message


def test_unreadable_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(OvchatError, match="does not exist"):
        load_chat(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(OvchatError, match="cannot read chat file"):
        load_chat(binary)


def test_a_failed_save_leaves_the_old_file_untouched(tmp_path: Path) -> None:
    target = tmp_path / "chat.json"
    save_chat(target, CHAT[:2])
    with pytest.raises(TypeError):
        save_chat(target, CHAT, title="x", not_serializable=object())
    assert load_chat(target)[0] == CHAT[:2]


def test_markdown_export_has_the_title_and_every_message() -> None:
    markdown = chat_to_markdown(CHAT, title="Maths")
    assert markdown.startswith("# Maths\n")
    for message in CHAT:
        assert message["content"] in markdown
    assert markdown.index("**System:**") < markdown.index("**You:**") < markdown.index("**Assistant:**")
