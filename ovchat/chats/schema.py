"""The chat store's SQLite schema, versioned with ``PRAGMA user_version``.

``MIGRATIONS[i]`` brings a store from version ``i`` to ``i + 1``. A migration is only ever
added at the end, never changed: files written by older ovchat versions are migrated in place.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator

MIGRATIONS: tuple[str, ...] = (
    # v1: conversations and their messages.
    """
    CREATE TABLE conversations (
        -- AUTOINCREMENT so that a deleted chat's id is never reused: another tab may still
        -- hold it and must get "does not exist", not someone else's chat.
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT NOT NULL,
        system_prompt TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX conversations_by_update ON conversations (updated_at);
    CREATE TABLE messages (
        -- AUTOINCREMENT for the same reason: a reply still streaming into a message that
        -- another tab truncated away must not overwrite a newer message.
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content TEXT NOT NULL,
        UNIQUE (conversation_id, position)
    );
    """,
    # v2: per-message metadata as a JSON object (reply metrics, whether a reply was stopped).
    """
    ALTER TABLE messages ADD COLUMN meta TEXT NOT NULL DEFAULT '{}';
    """,
    # v3: a chat's revision, one more with every change, so that a tab acting on an older view of a chat
    # (changed or cut in another tab meanwhile) is refused instead of erasing the newer history.
    """
    ALTER TABLE conversations ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def statements(script: str) -> Iterator[str]:
    """The SQL statements of a script, split where SQLite itself says one is complete."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if re.sub(r"--[^\n]*", "", pending).strip(" \t\r\n;"):
                yield pending
            pending = ""
