"""Driving the chat page in a real browser: Debian's Chromium through Playwright (./run.sh installs
/usr/bin/chromium with apt-get; Playwright's own browser download is never used). Shared by the browser
tests of the page (test_browser.py) and of the lean install (test_lean_install.py)."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ovchat.paths import HOME_ENV
from ovchat.server.process import ServerProcess, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]

CHAT_INPUT = '[data-testid="stChatInputTextArea"]'
MESSAGE = '[data-testid="stChatMessage"]'
CAPTION = '[data-testid="stCaptionContainer"]'
# The reply's own text: the message's Markdown, less its caption and the labels of buttons inside it
# (the page renders its Stop button inside the streaming reply).
REPLY_TEXT_JS = """message => [...message.querySelectorAll('[data-testid="stMarkdownContainer"]')]
    .filter(el => !el.closest('[data-testid="stCaptionContainer"]') && !el.closest('button'))
    .map(el => el.innerText).join('\\n').trim()"""

SERVER_START_S = 60
MODEL_LOAD_MS = 180_000  # loading and compiling the model with an empty OpenVINO cache, with room to spare
REPLY_MS = 180_000  # a whole reply of at most 512 tokens on two cores


def reply_text(message: Locator) -> str:
    return message.evaluate(REPLY_TEXT_JS)


def send(page: Page, prompt: str) -> Locator:
    """Type a prompt in the chat input, press Enter; the assistant message that answers it."""
    messages = page.locator(MESSAGE)
    before = messages.count()
    chat_input = page.locator(CHAT_INPUT)
    chat_input.fill(prompt)
    chat_input.press("Enter")
    # The prompt's own message first, then the assistant's: index them, since the page reruns and
    # re-renders the whole chat when a reply ends.
    page.wait_for_function(
        "([selector, count]) => document.querySelectorAll(selector).length >= count",
        arg=[MESSAGE, before + 2],
        timeout=MODEL_LOAD_MS,
    )
    assert prompt in messages.nth(before).inner_text()
    return messages.nth(before + 1)


def wait_for_text(message: Locator, timeout_s: float = REPLY_MS / 1000) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = reply_text(message)
        if text:
            return text
        time.sleep(0.02)
    pytest.fail(f"no reply text in {timeout_s:.0f} s")


def set_temperature_to_zero(page: Page, label: str = "Temperature") -> None:
    """Greedy decoding, so the reply is the same every run (the slider's Home key goes to its minimum)."""
    page.get_by_role("slider", name=label).press("Home", timeout=MODEL_LOAD_MS)  # shown once loaded
    slider = page.locator('[data-testid="stSlider"]').filter(has_text=label)
    slider.locator('[data-testid="stSliderThumbValue"]').filter(has_text="0.00").wait_for()


def default_model_page_env(default_model_home: Path, folder: Path) -> tuple[Path, dict[str, str]]:
    """A data folder ``folder/home`` whose models link to the already exported default model (so the page
    starts without exporting, and its chats stay out of the session's shared home), and the environment that
    opens the page on that local model whatever the caller's environment names; the folder and the env."""
    home = folder / "home"
    home.mkdir()
    (home / "models").symlink_to(default_model_home / "models", target_is_directory=True)
    env = {**os.environ, HOME_ENV: str(home)}
    for name in ("OVCHAT_MODEL", "OVCHAT_ENDPOINT", "OVCHAT_API_KEY"):
        env.pop(name, None)
    return home, env


def chat_page_server(folder: Path, env: Mapping[str, str], port: int | None = None) -> ServerProcess:
    """`streamlit run chat_streamlit.py` on a loopback port (a free one unless given) with this environment,
    logging into folder; use it as a context manager."""
    port = port or free_port()
    command = [
        *(sys.executable, "-m", "streamlit", "run", "chat_streamlit.py"),
        *("--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1"),
        # No reruns or "source changed" banners if the page's file is edited during the run.
        *("--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"),
    ]
    return ServerProcess(
        "streamlit", command, port, folder, health_path="/_stcore/health", env=dict(env), cwd=ROOT,
        start_timeout_s=SERVER_START_S,
    )  # fmt: skip


def stop_button(page: Page) -> Locator:
    """The page's Stop button, not Streamlit's own: its status widget in the header can show a "Stop" button
    while a script runs (it stays hidden with this project's config today), and a chat input with
    submit_mode="stop" has a "Stop script" button that ends the script instead of the reply."""
    return page.get_by_role("button", name=re.compile("Stop")).and_(
        page.locator(':not([data-testid="stHeader"] *):not([data-testid="stChatInputStopButton"])')
    )
