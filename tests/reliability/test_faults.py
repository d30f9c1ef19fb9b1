"""Faults, and what survives them: a page or a server killed with SIGKILL in the middle of a streamed reply,
a page server restarted under an open tab, a full disk and a read-only data folder.

Each is real: subprocesses killed with SIGKILL, Chromium through Playwright, a 2 MB tmpfs filled to the last
byte and remounted read-only (mounting needs root, which ./run.sh's machines have; elsewhere those tests say
why they skip). The claim each time: every earlier turn intact, the partial reply saved as far as it was
flushed, a clear message, and the chat goes on.
"""

from __future__ import annotations

import errno
import gc
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browsing import (
    CAPTION,
    CHAT_INPUT,
    MESSAGE,
    MODEL_LOAD_MS,
    REPLY_MS,
    chat_page_server,
    default_model_page_env,
    reply_text,
    send,
    set_temperature_to_zero,
    wait_for_text,
)
from test_page import fake_engine, fresh_streamlit_caches, one_script_cache, open_page, shown
from test_server import serve

from ovchat.chats import ConversationStore, describe_reply, stream_into_store
from ovchat.chats.store import STORE_FILE
from ovchat.engine.remote import RemoteEngine
from ovchat.errors import OvchatError
from ovchat.i18n import translate
from ovchat.paths import HOME_ENV
from ovchat.server.process import free_port
from ovchat.settings import GenerationSettings

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["fake_engine", "fresh_streamlit_caches", "one_script_cache"]  # the page tests' fixtures, used here

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=40)
LONG = GenerationSettings(temperature=0.0, max_new_tokens=400)
STORY = "Write a very long story about a dragon who learns to cook."


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def saved_at_least_twice(store: ConversationStore, chat: int, turns: int, timeout_s: float = 120) -> str:
    """Wait until the streaming reply (message number ``turns``) was saved and then saved again as it grew
    (the recorder saves once a second), so that a kill after this has something flushed to keep; its text."""
    first = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        messages = store.get(chat).messages
        if len(messages) > turns:
            content = messages[turns].content
            if first is None:
                first = content
            elif content != first:
                return content
        time.sleep(0.1)
    pytest.fail(f"the streaming reply was not saved twice in {timeout_s:.0f} s")


# ----- a page killed with SIGKILL mid-reply, then restarted under the open tab -----


@pytest.mark.slow
def test_a_page_killed_mid_reply_keeps_every_turn_and_the_restarted_page_goes_on(
    default_model_home: Path, browser: Browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    home, env = default_model_page_env(default_model_home, tmp_path)
    store = ConversationStore(home / STORE_FILE)
    port = free_port()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        tab = context.new_page()
        with chat_page_server(tmp_path / "first", env, port) as page_server:
            tab.goto(page_server.url)
            tab.locator(CHAT_INPUT).wait_for(timeout=MODEL_LOAD_MS)
            set_temperature_to_zero(tab)
            answer = send(tab, "What is the capital of France?")
            expect(answer.locator(CAPTION).filter(has_text="tok/s")).to_be_visible(timeout=REPLY_MS)
            story = send(tab, STORY)
            wait_for_text(story)
            [info] = store.list()
            flushed = saved_at_least_twice(store, info.id, turns=3)
            page_server.kill()

        messages = store.get(info.id).messages
        assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
        assert messages[0].content == "What is the capital of France?" and "Paris" in messages[1].content
        assert messages[1].meta["new_tokens"] > 0 and messages[2].content == STORY
        partial = messages[3]
        assert partial.content.startswith(flushed) and partial.meta == {"streaming": True}
        assert integrity(store.path) == "ok"

        # While the page is down, another tab or process adds a turn; the open tab must not erase it.
        store.add_message(info.id, "user", "written elsewhere")
        store.add_message(info.id, "assistant", "answered elsewhere")

        with chat_page_server(tmp_path / "second", env, port) as page_server:
            # The old tab reconnects by itself, runs the page again and shows the chat as it now is.
            expect(tab.get_by_text("written elsewhere")).to_be_visible(timeout=MODEL_LOAD_MS)
            reply = send(tab, "Thank you.")
            expect(reply.locator(CAPTION).filter(has_text="tok/s")).to_be_visible(timeout=REPLY_MS)
            messages = store.get(info.id).messages
            assert [m.content for m in messages[:6]] == [
                "What is the capital of France?", messages[1].content, STORY, partial.content,
                "written elsewhere", "answered elsewhere",
            ]  # fmt: skip
            assert [m.role for m in messages[6:]] == ["user", "assistant"] and messages[6].content == "Thank you."
            texts = tab.locator(MESSAGE).all_inner_texts()
            assert any("written elsewhere" in text for text in texts)  # the tab shows the newer chat
            unfinished = translate("en", "reply.unfinished")
            assert describe_reply(partial.meta) == unfinished
            expect(tab.locator(CAPTION).filter(has_text=unfinished)).to_be_visible()
            assert reply_text(reply)
    finally:
        context.close()
    assert integrity(store.path) == "ok"


# ----- a server killed with SIGKILL mid-reply -----


@pytest.mark.slow
def test_a_server_killed_mid_reply_leaves_the_partial_reply_saved(default_model_ir: Path, tmp_path: Path) -> None:
    """The page (or terminal) on a remote server: the server dies mid-reply; what arrived is saved, marked
    with the error, every earlier turn is intact, and the chat goes on with a restarted server."""
    store = ConversationStore()
    chat = store.create("a server that dies")
    with serve(default_model_ir, tmp_path / "first", "serve-killed") as server:
        remote = RemoteEngine.connect(f"{server.url}/v1")
        store.add_message(chat, "user", "What is the capital of France?")
        first_reply = "".join(stream_into_store(remote, store, chat, GREEDY))
        store.add_message(chat, "user", STORY)
        pieces = stream_into_store(remote, store, chat, LONG)
        received = [next(pieces)]
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # past one periodic save
            received.append(next(pieces))
        server.kill()
        with pytest.raises(OvchatError) as failure:
            received.extend(pieces)
    message = str(failure.value)
    assert "\n" not in message and server.url in message, message
    messages = store.get(chat).messages
    assert [(m.role, m.content) for m in messages[:3]] == [
        ("user", "What is the capital of France?"), ("assistant", first_reply), ("user", STORY),
    ]  # fmt: skip
    assert messages[3].content == "".join(received) and messages[3].content
    assert messages[3].meta == {"finish_reason": "error", "error": message}
    assert describe_reply(messages[3].meta) == translate("en", "reply.failed", error=message)

    with serve(default_model_ir, tmp_path / "second", "serve-restarted") as server:
        store.add_message(chat, "user", "Thank you.")
        remote = RemoteEngine.connect(f"{server.url}/v1")
        assert "".join(stream_into_store(remote, store, chat, GREEDY))
    assert [m.role for m in store.get(chat).messages] == ["user", "assistant"] * 3
    assert integrity(store.path) == "ok"


# ----- a full disk and a read-only data folder (a real 2 MB tmpfs) -----


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted afterwards. Mounting needs root (./run.sh's machines run as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(f"as root in CI, mounting a tmpfs failed: {mounted.stderr.decode().strip()}")
        pytest.skip(f"mounting a 2 MB tmpfs needs root: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; the file, to delete when the disk should have room again."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:  # unbuffered: the write that fails is this one, not close()
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return filler


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True)


def test_a_full_disk_refuses_a_write_and_keeps_the_chat(small_disk: Path) -> None:
    store = ConversationStore(small_disk / STORE_FILE)
    chat = store.create("before the disk filled")
    store.add_message(chat, "user", "kept")
    filler = fill(small_disk)
    with pytest.raises(OvchatError, match="database or disk is full") as failure:
        store.add_message(chat, "user", "x" * 100_000)
    assert "\n" not in str(failure.value)
    assert [m.content for m in store.get(chat).messages] == ["kept"]
    filler.unlink()
    store.add_message(chat, "user", "x" * 100_000)
    assert [m.content[:4] for m in store.get(chat).messages] == ["kept", "xxxx"]
    assert integrity(store.path) == "ok"


def test_the_page_on_a_full_disk_keeps_the_chat_and_the_unsent_prompt(
    fake_engine, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(small_disk))
    app = open_page()
    app.chat_input[0].set_value("first").run()
    chat = app.query_params["chat"]
    filler = fill(small_disk)
    prompt = "second " + "x" * 100_000  # more than the pages SQLite keeps free
    app.chat_input[0].set_value(prompt).run()
    assert not app.exception, app.exception
    [warning] = [w.value for w in app.warning]
    assert warning.startswith("Not saved: cannot use the chat store") and "disk is full" in warning, warning
    assert shown(app) == [("user", "first"), ("assistant", "You said: first")]  # the chat is still shown
    assert app.chat_input[0].value == prompt, "the prompt that could not be saved was dropped"
    filler.unlink()
    app.chat_input[0].set_value(prompt).run()
    assert [text for _, text in shown(app)][2:] == [prompt, f"You said: {prompt}"]
    assert app.query_params["chat"] == chat and not app.warning


def test_the_page_on_a_read_only_data_folder_shows_the_chats_and_says_why_it_cannot_save(
    fake_engine, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data folder that is read-only when the page starts (a folder cannot turn read-only under a running
    page: a read-only remount is refused while the store's file is open for writing)."""
    import streamlit as st

    monkeypatch.setenv(HOME_ENV, str(small_disk))
    app = open_page()
    app.chat_input[0].set_value("first").run()
    chat = app.query_params["chat"]
    st.cache_resource.clear()  # the page server stopped: its store closed
    gc.collect()
    remount(small_disk, "ro")
    try:
        tab = open_page({"chat": chat})
        assert shown(tab) == [("user", "first"), ("assistant", "You said: first")]
        tab.chat_input[0].set_value("second").run()
        assert not tab.exception, tab.exception
        [warning] = [w.value for w in tab.warning]
        assert warning.startswith("Not saved: cannot use the chat store") and "folder is read-only" in warning
        assert shown(tab) == [("user", "first"), ("assistant", "You said: first")]
        assert tab.chat_input[0].value == "second"
    finally:
        remount(small_disk, "rw")
    tab.chat_input[0].set_value("second").run()
    assert [text for _, text in shown(tab)] == ["first", "You said: first", "second", "You said: second"]
