"""The chat page in a real browser: `streamlit run chat_streamlit.py` driven by Debian's Chromium through Playwright.

./run.sh installs /usr/bin/chromium with apt-get; Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re
import time
import warnings
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
    stop_button,
    wait_for_text,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "screenshot.png"
UPDATE_SCREENSHOT_ENV = "OVCHAT_UPDATE_SCREENSHOT"  # set to 1 to rewrite docs/screenshot.png
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chat_server(default_model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run chat_streamlit.py` on a free port; its URL.

    Its data folder links to the already exported default model, so the page starts without exporting,
    while the chats the page saves stay out of the session's shared default_model_home.
    """
    folder = tmp_path_factory.mktemp("browser")
    _, env = default_model_page_env(default_model_home, folder)
    with chat_page_server(folder, env) as server:
        yield server.url


@pytest.fixture
def page(browser: Browser, chat_server: str) -> Iterator[Page]:
    """A fresh browser context, so a fresh Streamlit session and a new chat, with the page loaded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(chat_server)
        page.locator(CHAT_INPUT).wait_for(timeout=MODEL_LOAD_MS)
        yield page
    finally:
        context.close()


def test_a_question_streams_an_answer_with_its_metrics(page: Page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    set_temperature_to_zero(page)
    reply = send(page, "What is the capital of France?")

    # Streaming: sample the reply's text length until the finished reply's caption shows. Honest caveat: the
    # answer is one short sentence (~8 tokens, a fraction of a second), so the sampling may miss every
    # intermediate state; then the only claim left is that a non-empty reply arrived.
    lengths: list[int] = []
    finished = reply.locator(CAPTION).filter(has_text="tok/s")
    deadline = time.monotonic() + REPLY_MS / 1000
    while time.monotonic() < deadline and not finished.count():
        lengths.append(len(reply_text(reply)))
        time.sleep(0.02)
    expect(finished).to_be_visible(timeout=5_000)  # fails here if the reply never finished
    text = reply_text(reply)
    seen = [n for n in lengths if n]  # the text's length each time it was sampled while the reply ran
    grew = bool(seen) and seen[0] < len(text)  # seen part-way through, longer at the end
    if not grew:
        warnings.warn(f"the reply finished before a partial text was seen: {lengths}", stacklevel=1)
    assert text
    assert "Paris" in text, text
    caption = finished.inner_text()
    assert re.search(r"\d+ tokens", caption), caption

    # The README's screenshot is refreshed on request only, so that test runs leave the work tree clean.
    targets = [tmp_path / "screenshot.png"] + ([SCREENSHOT] if os.environ.get(UPDATE_SCREENSHOT_ENV) else [])
    for path in targets:
        page.screenshot(path=str(path), full_page=True)
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000, (path, len(data))


def test_stop_keeps_the_partial_reply_marked_stopped(page: Page) -> None:
    from playwright.sync_api import expect

    reply = send(page, "Write a very long story about a dragon who learns to cook.")
    wait_for_text(reply)
    stop = stop_button(page)
    expect(stop, "the page shows a Stop button while a reply streams").to_be_visible(timeout=10_000)
    stop.click()
    stopped = reply.locator(CAPTION).filter(has_text="stopped")
    expect(stopped, "the stopped reply's caption says 'stopped'").to_be_visible(timeout=20_000)
    assert reply_text(reply)


def test_two_tabs_stream_their_replies_at_the_same_time(browser: Browser, chat_server: str) -> None:
    """Two sessions on one page server share one engine: the second tab's reply starts while the first
    tab's is still being written (with one reply at a time it could only start after it)."""
    from playwright.sync_api import expect

    contexts = [browser.new_context(viewport={"width": 1280, "height": 900}) for _ in range(2)]
    try:
        pages = [context.new_page() for context in contexts]
        for page in pages:
            page.goto(chat_server)
            page.locator(CHAT_INPUT).wait_for(timeout=MODEL_LOAD_MS)
        first = send(pages[0], "Write a very long story about a dragon who learns to cook.")
        wait_for_text(first)
        second = send(pages[1], "Write a very long story about a robot who wants to paint.")
        wait_for_text(second)
        first_finished = first.locator(CAPTION).filter(has_text="tok/s")
        assert not first_finished.count(), "the first tab's reply ended before the second tab's began"
        expect(stop_button(pages[0])).to_be_visible()
        expect(stop_button(pages[1])).to_be_visible()
        for page, reply in zip(pages, (first, second), strict=True):
            stop_button(page).click()
            expect(reply.locator(CAPTION).filter(has_text="stopped")).to_be_visible(timeout=20_000)
            assert reply_text(reply)
    finally:
        for context in contexts:
            context.close()


# Two different Chinese characters drawn in the page's own font: with a CJK font they are two glyphs; without
# one, Chromium draws the same empty box for both (what a user saw before fonts-noto-cjk was installed).
DRAW_CHARACTERS_JS = """([selector, characters]) => {
    const font = getComputedStyle(document.querySelector(selector)).font;
    return [...characters].map(character => {
        const canvas = document.createElement('canvas');
        canvas.width = 64; canvas.height = 64;
        const context = canvas.getContext('2d');
        context.font = font; context.textBaseline = 'top';
        context.fillText(character, 8, 8);
        return canvas.toDataURL();
    });
}"""
USER_TEXT = f'{MESSAGE} [data-testid="stMarkdownContainer"] p'
SCREENSHOTS = {
    "zh": ROOT / "docs" / "screenshot-zh-CN.png",
    "probabilities": ROOT / "docs" / "lab-probabilities.png",
    "explorer": ROOT / "docs" / "lab-explorer.png",
    "compare": ROOT / "docs" / "lab-compare.png",
}


def save_screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """Always into the test's folder (checked); into docs/ only when asked, so test runs leave the tree clean."""
    targets = [tmp_path / f"{name}.png"] + ([SCREENSHOTS[name]] if os.environ.get(UPDATE_SCREENSHOT_ENV) else [])
    for path in targets:
        page.screenshot(path=str(path), full_page=True)
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000, (path, len(data))


def test_the_page_in_chinese_shows_chinese_labels_and_text(page: Page, chat_server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    try:
        page.goto(f"{chat_server}/?lang=zh-CN")
        page.locator(CHAT_INPUT).wait_for(timeout=MODEL_LOAD_MS)
        expect(page.get_by_role("button", name="➕ 新对话")).to_be_visible()
        for header in ("对话", "模型", "采样"):
            expect(page.get_by_role("heading", name=header)).to_be_visible()
        expect(page.locator(CHAT_INPUT)).to_have_attribute("placeholder", "有问题，尽管问")
        set_temperature_to_zero(page, "温度")
        page.get_by_role("slider", name="最大生成长度").press("Home")  # 16 tokens: the model is slow in Chinese
        reply = send(page, "你好！请用中文介绍一下巴黎。")
        finished = reply.locator(CAPTION).filter(has_text="词元/秒")
        expect(finished).to_be_visible(timeout=REPLY_MS)
        assert reply_text(reply)
        question = page.locator(USER_TEXT).first
        assert question.inner_text() == "你好！请用中文介绍一下巴黎。"  # text in the page, not an image of it
        first, second, blank = page.evaluate(DRAW_CHARACTERS_JS, [USER_TEXT, "巴黎 "])
        assert first != blank, "巴 draws as nothing in the page's font"
        assert first != second, "巴 and 黎 draw the same: empty boxes, no CJK font"
        save_screenshot(page, "zh", tmp_path)
    finally:
        page.goto(f"{chat_server}/?lang=en")  # the choice is remembered in the server's data folder: undo it
        page.get_by_role("button", name="➕ New chat").wait_for(timeout=MODEL_LOAD_MS)


def test_the_sampling_lab_views(page: Page, tmp_path: Path) -> None:
    """A reply shaded by its tokens' probabilities, the next-token explorer on that chat, and a comparison."""
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 1280, "height": 1500})  # room for each view in its screenshot
    set_temperature_to_zero(page)
    page.get_by_text("Show token probabilities").click()
    reply = send(page, "What is the capital of France?")
    expect(reply.locator(CAPTION).filter(has_text="tok/s")).to_be_visible(timeout=REPLY_MS)
    tokens = reply.locator(".ovchat-token")
    expect(tokens.first).to_be_visible()
    assert "Paris" in reply.locator(".ovchat-shaded").inner_text()
    assert re.search(r"\d+\.\d%", tokens.first.get_attribute("title") or ""), "no probability on hover"
    save_screenshot(page, "probabilities", tmp_path)

    page.get_by_role("combobox", name="Preset").click()  # sampling again, so the filters have work to do
    page.get_by_role("option", name="Balanced").click()
    slider = page.locator('[data-testid="stSlider"]').filter(has_text="Temperature")
    slider.locator('[data-testid="stSliderThumbValue"]').filter(has_text="0.70").wait_for()
    views = page.locator(".st-key-lab_view")  # the segmented control: its emoji is an icon apart from the text
    views.get_by_role("radio", name="Next token").click()
    expect(page.get_by_text("Next-token explorer")).to_be_visible(timeout=MODEL_LOAD_MS)
    expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Tokens left")).to_be_visible()
    page.locator(".st-key-take_0 button").click()
    expect(page.get_by_text("1 tokens taken")).to_be_visible(timeout=30_000)
    save_screenshot(page, "explorer", tmp_path)

    views.get_by_role("radio", name="Compare settings").click()
    expect(page.get_by_role("button", name="▶ Compare")).to_be_visible(timeout=30_000)
    page.get_by_label("Samples per setting").fill("2")
    page.get_by_label("Max new tokens").last.fill("24")
    page.get_by_label("Max new tokens").last.press("Enter")
    page.get_by_role("button", name="▶ Compare").click()
    expect(page.get_by_role("button", name="Download CSV")).to_be_visible(timeout=REPLY_MS)
    expect(page.get_by_text("seed 1 ·")).to_have_count(3)  # 3 settings, each with seeds 0 and 1
    page.get_by_text("Diversity and likelihood").scroll_into_view_if_needed()
    save_screenshot(page, "compare", tmp_path)
