"""Chats as files: the JSON the terminal chat saves and loads, and a Markdown export.

The JSON is ``{"format": "ovchat.chat", "version": 1, "title": ..., "messages": [...]}``.
Loading also accepts a bare list of ``{"role", "content"}`` messages (the OpenAI shape),
so chats from other tools can be brought in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ovchat.errors import OvchatError
from ovchat.paths import write_text_atomically
from ovchat.prompt import Message, check_message_list, unicode_problem

CHAT_FORMAT = "ovchat.chat"
CHAT_FORMAT_VERSION = 1
# The largest chat file imported. A chat's text is tiny next to it (a model's whole context is well under 1 MB of
# text, and a year of daily chats a few MB), while a bigger file is most likely the wrong file (a data set, a log):
# refused at once with its size, not parsed into memory, stored and then sent to the page message by message.
MAX_CHAT_FILE_BYTES = 16_000_000


def chat_to_dict(messages: list[Message], title: str | None = None, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"format": CHAT_FORMAT, "version": CHAT_FORMAT_VERSION}
    if title:
        document["title"] = title
    document.update(extra)
    document["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
    return document


def parse_chat(text: str, origin: str = "the chat") -> tuple[list[Message], str | None]:
    """Messages and title from a chat file's text; a clear error for anything malformed."""
    if len(text) > MAX_CHAT_FILE_BYTES:  # a character is at least one byte in the file
        raise OvchatError(
            f"{origin} is too large to import ({len(text) / 1e6:.1f} million characters); "
            f"a chat file can be at most {MAX_CHAT_FILE_BYTES / 1e6:.0f} MB"
        )
    try:
        # A byte order mark, which Windows editors write at the start of a UTF-8 file, is no part of the JSON.
        document = json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as error:
        raise OvchatError(f"{origin} is not valid JSON: {error.msg} at line {error.lineno}") from None
    except RecursionError:  # Python's json recurses once per level: [[[[...]]]] 100 000 deep ends it
        raise OvchatError(f"{origin} is not a chat: its JSON is nested too deeply") from None
    title = None
    if isinstance(document, dict):
        if document.get("format") != CHAT_FORMAT:
            raise OvchatError(f'{origin} is not an ovchat chat (no "format": "{CHAT_FORMAT}")')
        version = document.get("version")
        if not isinstance(version, int) or version > CHAT_FORMAT_VERSION:
            raise OvchatError(f"{origin} has chat format version {version!r}; this ovchat reads up to 1")
        if "messages" not in document:
            raise OvchatError(f"{origin} has no messages")
        raw_title = document.get("title")
        title = raw_title if isinstance(raw_title, str) else None
        problem = unicode_problem(title or "")
        if problem is not None:
            raise OvchatError(f"{origin}: the title is not valid Unicode text: {problem}")
        document = document["messages"]
    elif not isinstance(document, list):
        raise OvchatError(f"{origin} must hold a chat object or a list of messages")
    try:
        messages = check_message_list(document)
    except OvchatError as error:
        raise OvchatError(f"{origin}: {error}") from None
    return [{"role": m["role"], "content": m["content"]} for m in messages], title


def load_chat(path: Path) -> tuple[list[Message], str | None]:
    try:
        size = path.stat().st_size  # before reading: a file too large is refused without being read
        if size > MAX_CHAT_FILE_BYTES:
            raise OvchatError(
                f"{path} is too large to import ({size / 1e6:.1f} MB); "
                f"a chat file can be at most {MAX_CHAT_FILE_BYTES / 1e6:.0f} MB"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OvchatError(f"chat file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise OvchatError(f"cannot read chat file {path}: {error}") from None
    return parse_chat(text, origin=str(path))


def save_chat(path: Path, messages: list[Message], title: str | None = None, **extra: Any) -> None:
    """Write the chat atomically: a crash mid-write never leaves a half file behind."""
    path = path.expanduser()
    # Text that is not Unicode (a lone surrogate) would fail in the UTF-8 encoder half-way through the write.
    try:
        check_message_list(messages)
        problem = unicode_problem(title or "")
        if problem is not None:
            raise OvchatError(f"the title is not valid Unicode text: {problem}")
    except OvchatError as error:
        raise OvchatError(f"cannot save the chat to {path}: {error}") from None
    text = json.dumps(chat_to_dict(messages, title, **extra), ensure_ascii=False, indent=2) + "\n"
    try:
        write_text_atomically(path, text)
    except OSError as error:
        raise OvchatError(f"cannot save the chat to {path}: {error.strerror or error}") from None


def chat_file_name(title: str | None, suffix: str = ".json") -> str:
    """A file name for a chat's download made from its title: letters and digits only, so that a title such as
    "../../x" or "C:\\x" names a file, never a place."""
    stem = "".join(c if c.isalnum() else "-" for c in title or "").strip("-")[:40].strip("-")
    return f"{stem or 'chat'}{suffix}"


def chat_to_markdown(messages: list[Message], title: str | None = None) -> str:
    names = {"system": "System", "user": "You", "assistant": "Assistant"}
    parts = [f"# {title}\n"] if title else []
    parts += [f"**{names[m['role']]}:**\n\n{m['content']}\n" for m in messages]
    return "\n".join(parts)
