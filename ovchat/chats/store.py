"""The chat page's saved conversations: one SQLite file under ``$OVCHAT_HOME``.

Every browser tab runs the page in its own thread, so the store opens a fresh connection for
each operation instead of sharing one: a ``ConversationStore`` object can be used from any
number of threads, and several pages (or processes) can use one file. The file is in WAL
mode, so readers never wait for a writer and writers queue behind a busy timeout.

The schema and its migrations are in :mod:`ovchat.chats.schema`; all pending migrations run
in one transaction when a store opens.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from ovchat.chats.schema import MIGRATIONS, statements
from ovchat.errors import OvchatError
from ovchat.paths import data_home
from ovchat.prompt import Message, check_message_list, unicode_problem

STORE_FILE = "chats.sqlite3"
DEFAULT_TITLE = "New chat"
BUSY_TIMEOUT_S = 10.0
LOW_DISK_BYTES = 1 << 20  # below this much free space, a failed write is reported as a full disk

MessageRole = Literal["user", "assistant"]
MESSAGE_ROLES: tuple[str, ...] = ("user", "assistant")


# Errors from the file or the machine rather than from ovchat's SQL: the user can act on them.
_ENVIRONMENT_ERRORS = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_READONLY",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_PERM",
    "SQLITE_PROTOCOL",
    "SQLITE_NOTADB",
    "SQLITE_CORRUPT",
)
# updated_at must grow with every change even when the clock stands still or steps back,
# so that the chat touched last is always first in the list.
_TICK_S = 0.001


class ChatChanged(OvchatError):
    """A change asked for on an older view of a chat: another tab changed it since. Nothing was written."""


@dataclass(frozen=True)
class ConversationInfo:
    """A chat as the sidebar lists it. Times are Unix seconds (UTC). ``revision`` grows by one with each
    change to the chat (each call that writes it), so a caller that knows the revision it showed and
    counts its own writes can tell whether anyone else changed the chat since."""

    id: int
    title: str
    created_at: float
    updated_at: float
    message_count: int
    revision: int


@dataclass(frozen=True)
class StoredMessage:
    id: int
    role: MessageRole
    content: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class Conversation:
    info: ConversationInfo
    system_prompt: str
    messages: list[StoredMessage]

    def chat_messages(self) -> list[Message]:
        """What the engine takes: the system prompt (unless blank) first, then the messages."""
        chat: list[Message] = []
        if self.system_prompt.strip():
            chat.append({"role": "system", "content": self.system_prompt})
        chat.extend({"role": message.role, "content": message.content} for message in self.messages)
        return chat


def title_from(text: str, limit: int = 40) -> str:
    """A one-line chat title from a message: its first non-blank line, cut to ``limit`` characters."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    line = next((" ".join(line.split()) for line in text.splitlines() if line.strip()), "")
    if not line:
        return DEFAULT_TITLE
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]  # room for the ellipsis
    if line[limit - 1] != " ":  # else the cut already ends a word
        space = cut.rfind(" ")
        # A word boundary only when it keeps most of the room; one long word or unspaced
        # text (Chinese, a URL) is cut where the room ends.
        if space >= (limit - 1) // 2:
            cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


class ConversationStore:
    """Saved chats in a SQLite file; safe to share between threads."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else data_home() / STORE_FILE
        self._keeper: weakref.finalize | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OvchatError(f"cannot create the folder for the chat store {self.path}: {error.strerror}") from None
        with self._sqlite_errors():
            try:
                with closing(self._open()) as connection:
                    # WAL is a property of the file, kept once set; it cannot change inside a transaction.
                    connection.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as error:
                if not (_cannot_write(error) and self.path.is_file() and self._read_only_folder()):
                    raise
                # A read-only data folder: its chats can still be read (each write says why it cannot
                # be made), if this ovchat reads their schema.
                with closing(self._open(immutable=True)) as connection:
                    _check_schema_version(self.path, connection.execute("PRAGMA user_version").fetchone()[0])
                return
        self._migrate()
        # One connection held open for the store's life keeps the WAL and its shared-memory index in place:
        # without it the last connection to close removes them, and the next one must create them again,
        # which fails on a full disk, so that even reading the chats would fail there.
        with self._sqlite_errors():
            keeper = self._open(check_same_thread=False)
        self._keeper = weakref.finalize(self, keeper.close)

    def close(self) -> None:
        """Close the connection that keeps the WAL in place; also done when the store is garbage-collected.
        The store still works after it, opening a connection for each call as always."""
        if self._keeper is not None:
            self._keeper()

    # -- conversations ------------------------------------------------------------------

    def create(self, title: str = DEFAULT_TITLE, system_prompt: str = "") -> int:
        """A new empty chat, first in the list; its id. A blank title becomes the default one."""
        _check_text("the title", title)
        _check_text("the system prompt", system_prompt)
        title = _one_line(title) or DEFAULT_TITLE
        now = time.time()
        with self._connect(write=True) as connection:
            cursor = connection.execute(
                "INSERT INTO conversations (title, system_prompt, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (title, system_prompt, now, _next_update_time(connection, now)),
            )
            return cast(int, cursor.lastrowid)

    def list(self) -> builtins.list[ConversationInfo]:
        """Every chat, the one changed last first."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT c.id, c.title, c.created_at, c.updated_at, c.revision,"
                " (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count"
                " FROM conversations c ORDER BY c.updated_at DESC, c.id DESC"
            ).fetchall()
        return [_info(row) for row in rows]

    def get(self, conversation_id: int) -> Conversation:
        # One read transaction, so the chat and its messages come from the same moment.
        with self._connect() as connection:
            row = connection.execute(
                "SELECT id, title, system_prompt, created_at, updated_at, revision,"
                " (SELECT COUNT(*) FROM messages WHERE conversation_id = :id) AS message_count"
                " FROM conversations WHERE id = :id",
                {"id": conversation_id},
            ).fetchone()
            if row is None:
                raise _missing_conversation(conversation_id)
            messages = connection.execute(
                "SELECT id, role, content, meta FROM messages WHERE conversation_id = ? ORDER BY position",
                (conversation_id,),
            ).fetchall()
        return Conversation(
            info=_info(row),
            system_prompt=row["system_prompt"],
            messages=[
                StoredMessage(m["id"], cast(MessageRole, m["role"]), m["content"], json.loads(m["meta"]))
                for m in messages
            ],
        )

    def rename(self, conversation_id: int, title: str, expected_revision: int | None = None) -> None:
        """Give a chat a new title; it keeps its place in the list, since its content is unchanged.

        Here and in every method that changes a chat, ``expected_revision`` (the revision the caller's view
        of the chat has) makes the change conditional: if the chat has another revision, ChatChanged is
        raised and nothing is written."""
        _check_text("the title", title)
        clean = _one_line(title)
        if not clean:
            raise OvchatError("a chat's title cannot be empty")
        with self._connect(write=True) as connection:
            _check_revision(connection, conversation_id, expected_revision)
            connection.execute(
                "UPDATE conversations SET title = ?, revision = revision + 1 WHERE id = ?", (clean, conversation_id)
            )

    def delete(self, conversation_id: int, expected_revision: int | None = None) -> None:
        """Delete a chat and all its messages."""
        with self._connect(write=True) as connection:
            _check_revision(connection, conversation_id, expected_revision)
            connection.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def set_system_prompt(self, conversation_id: int, text: str, expected_revision: int | None = None) -> None:
        _check_text("the system prompt", text)
        with self._connect(write=True) as connection:
            _touch(connection, conversation_id, expected_revision)
            connection.execute("UPDATE conversations SET system_prompt = ? WHERE id = ?", (text, conversation_id))

    # -- messages -------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        meta: dict[str, Any] | None = None,
        expected_revision: int | None = None,
    ) -> int:
        """Append a message to a chat; its id. The chat moves to the top of the list."""
        if role not in MESSAGE_ROLES:
            raise OvchatError(
                f"a saved message's role must be user or assistant, not {role!r}; "
                "the system prompt is a setting of the chat"
            )
        _check_text("a message's content", content)
        meta_json = _meta_json(meta or {})
        with self._connect(write=True) as connection:
            _touch(connection, conversation_id, expected_revision)
            cursor = connection.execute(
                "INSERT INTO messages (conversation_id, position, role, content, meta)"
                " VALUES (:id, (SELECT COALESCE(MAX(position), -1) + 1 FROM messages WHERE conversation_id = :id),"
                " :role, :content, :meta)",
                {"id": conversation_id, "role": role, "content": content, "meta": meta_json},
            )
            return cast(int, cursor.lastrowid)

    def update_message(self, message_id: int, content: str, meta: dict[str, Any] | None = None) -> None:
        """Replace a message's text, and its meta unless ``meta`` is None (then the old one stays)."""
        _check_text("a message's content", content)
        meta_json = None if meta is None else _meta_json(meta)
        with self._connect(write=True) as connection:
            row = connection.execute("SELECT conversation_id FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise OvchatError(
                    f"message {message_id} does not exist (its chat may have been changed or deleted in another tab)"
                )
            _touch(connection, row["conversation_id"])
            connection.execute(
                "UPDATE messages SET content = ?, meta = COALESCE(?, meta) WHERE id = ?",
                (content, meta_json, message_id),
            )

    def truncate(self, conversation_id: int, keep: int, expected_revision: int | None = None) -> None:
        """Keep only the first ``keep`` messages: regenerate drops the last reply, edit drops from a message on."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise OvchatError(f"the number of messages to keep must be a whole number of at least 0, not {keep!r}")
        with self._connect(write=True) as connection:
            _touch(connection, conversation_id, expected_revision)
            # Counted by order, not by position value, so it holds whatever the positions are.
            connection.execute(
                "DELETE FROM messages WHERE conversation_id = :id AND position >= ("
                " SELECT position FROM messages WHERE conversation_id = :id ORDER BY position LIMIT 1 OFFSET :keep)",
                {"id": conversation_id, "keep": keep},
            )

    # -- files ------------------------------------------------------------------------------

    def import_chat(self, messages: builtins.list[Message], title: str | None = None) -> int:
        """A new chat from a chat file's messages; system messages become its system prompt.

        The title defaults to one made from the first user message. Nothing is written
        unless every message is valid.
        """
        check_message_list(messages)
        system_prompt = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        first_user = next((m["content"] for m in turns if m["role"] == "user"), "")
        _check_text("the title", title or "")
        clean_title = _one_line(title or "") or title_from(first_user)
        now = time.time()
        with self._connect(write=True) as connection:
            conversation_id = cast(
                int,
                connection.execute(
                    "INSERT INTO conversations (title, system_prompt, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    (clean_title, system_prompt, now, _next_update_time(connection, now)),
                ).lastrowid,
            )
            connection.executemany(
                "INSERT INTO messages (conversation_id, position, role, content) VALUES (?, ?, ?, ?)",
                [(conversation_id, position, m["role"], m["content"]) for position, m in enumerate(turns)],
            )
        return conversation_id

    def export_chat(self, conversation_id: int) -> tuple[builtins.list[Message], str]:
        """The chat's messages (system prompt first) and title, for ``ovchat.transcript``."""
        conversation = self.get(conversation_id)
        return conversation.chat_messages(), conversation.info.title

    # -- plumbing ---------------------------------------------------------------------------

    def _open(self, immutable: bool = False, check_same_thread: bool = True) -> sqlite3.Connection:
        """A connection; ``immutable`` reads a file on a read-only folder, where SQLite cannot make the WAL's
        shared-memory file that a normal reader needs (safe only because nobody can write there either)."""
        target = f"{self.path.resolve().as_uri()}?immutable=1" if immutable else str(self.path)
        # isolation_level=None: transactions are begun explicitly in _connect, never implicitly.
        connection = sqlite3.connect(
            target, uri=immutable, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=check_same_thread
        )
        connection.row_factory = sqlite3.Row
        try:
            # Per-connection settings; foreign keys make deleting a chat delete its messages.
            connection.execute("PRAGMA foreign_keys = ON")
            # In WAL mode NORMAL cannot corrupt the file; it skips an fsync per commit, which a
            # reply saved as it streams would otherwise pay many times.
            connection.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            connection.close()
            raise
        return connection

    def _open_for(self, write: bool) -> sqlite3.Connection:
        if write:
            return self._open()
        try:
            connection = self._open()
        except sqlite3.OperationalError as error:  # the first statement opens the file and the WAL's index
            if not (_cannot_write(error) and self._read_only_folder()):
                raise
            return self._open(immutable=True)
        return connection

    def _read_only_folder(self) -> bool:
        return not os.access(self.path.parent, os.W_OK)

    def _hint(self) -> str:
        """What SQLite's "disk I/O error" or "unable to open" may mean here, when the folder says it."""
        if self._read_only_folder():
            return "; its folder is read-only"
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(self.path.parent).free
            if free < LOW_DISK_BYTES:
                return f"; the disk is full ({free // 1024} KiB free)"
        return ""

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection inside one transaction, committed on success and closed either way."""
        with self._sqlite_errors(), closing(self._open_for(write)) as connection:
            # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then
            # writes can fail at once with "database is locked" instead of waiting its turn.
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield connection
            except BaseException:
                # Some errors (a full disk, say) have already rolled the transaction back.
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """SQLite errors the user can fix, as one-line OvchatErrors; errors in ovchat's SQL stay bugs."""
        try:
            yield
        except sqlite3.Error as error:
            name = getattr(error, "sqlite_errorname", "") or ""
            if name.startswith("SQLITE_NOTADB"):
                raise OvchatError(
                    f"{self.path} is not a SQLite database, so it cannot hold ovchat's chats; move it aside"
                ) from None
            if name.startswith("SQLITE_CORRUPT"):
                raise OvchatError(f"the chat store {self.path} is damaged: {error}") from None
            if name.startswith(_ENVIRONMENT_ERRORS):
                raise OvchatError(f"cannot use the chat store {self.path}: {error}{self._hint()}") from None
            raise

    def _migrate(self) -> None:
        # Under the write lock, so two pages opening an old file at once migrate it only once.
        with self._connect(write=True) as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            latest = len(MIGRATIONS)
            _check_schema_version(self.path, version)
            if version == 0 and connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                raise OvchatError(f"{self.path} is a SQLite database of another program, not ovchat's chat store")
            for script in MIGRATIONS[version:]:
                # executescript would commit the transaction first, so statements run one by one.
                for statement in statements(script):
                    connection.execute(statement)
            if version < latest:
                connection.execute(f"PRAGMA user_version = {latest:d}")


def _check_schema_version(path: Path, version: int) -> None:
    if version > len(MIGRATIONS):
        raise OvchatError(
            f"the chat store {path} was written by a newer ovchat "
            f"(schema {version}, this one reads up to {len(MIGRATIONS)})"
        )


def _cannot_write(error: sqlite3.Error) -> bool:
    """SQLite's errors for a file it may not write or whose WAL index it cannot create."""
    return (getattr(error, "sqlite_errorname", "") or "").startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY"))


def _check_text(what: str, text: object) -> None:
    """Text SQLite can store as UTF-8: a str with no lone surrogates (what a message is checked for too)."""
    if not isinstance(text, str):
        raise OvchatError(f"{what} must be text")
    problem = unicode_problem(text)
    if problem:
        raise OvchatError(f"{what} is not valid Unicode text: {problem}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _meta_json(meta: dict[str, Any]) -> str:
    if not isinstance(meta, dict):
        raise OvchatError(f"a message's meta must be a dict, not {type(meta).__name__}")
    try:
        return json.dumps(meta, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise OvchatError(f"a message's meta cannot be saved as JSON: {error}") from None


def _info(row: sqlite3.Row) -> ConversationInfo:
    return ConversationInfo(
        row["id"], row["title"], row["created_at"], row["updated_at"], row["message_count"], row["revision"]
    )


def _missing_conversation(conversation_id: int) -> OvchatError:
    return OvchatError(f"chat {conversation_id} does not exist (it may have been deleted in another tab)")


def _next_update_time(connection: sqlite3.Connection, now: float) -> float:
    latest = connection.execute("SELECT MAX(updated_at) FROM conversations").fetchone()[0]
    return now if latest is None else max(now, latest + _TICK_S)


def _check_revision(connection: sqlite3.Connection, conversation_id: int, expected: int | None) -> None:
    """Raise if the chat does not exist, or if ``expected`` is given and is not its revision."""
    row = connection.execute("SELECT revision FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
    if row is None:
        raise _missing_conversation(conversation_id)
    if expected is not None and row["revision"] != expected:
        raise ChatChanged(
            f"chat {conversation_id} was changed in another tab or window since this one showed it; "
            "nothing was changed here"
        )


def _touch(connection: sqlite3.Connection, conversation_id: int, expected_revision: int | None = None) -> None:
    """Mark a chat as changed now (first in the list, one revision more), or raise if it does not exist
    or is not at the expected revision."""
    _check_revision(connection, conversation_id, expected_revision)
    updated_at = _next_update_time(connection, time.time())
    connection.execute(
        "UPDATE conversations SET updated_at = ?, revision = revision + 1 WHERE id = ?", (updated_at, conversation_id)
    )
