"""The chat page, driven by Streamlit's AppTest on a real (tiny) exported model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_one_turn_streams_a_reply_with_metrics(tiny_irs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("OVCHAT_MODEL", str(tiny_irs["int8"]))
    app = AppTest.from_file(str(ROOT / "chat_streamlit.py"), default_timeout=120)
    app.run()
    assert not app.exception
    assert [s.label for s in app.sidebar.slider] == ["Temperature", "Top-p", "Top-k", "Max new tokens"]
    app.sidebar.slider[3].set_value(16)
    app.chat_input[0].set_value("Hello there").run()
    assert not app.exception
    roles = [message.name for message in app.chat_message]
    assert roles == ["user", "assistant"]
    caption = app.chat_message[1].caption[0].value
    match = re.match(r"(\d+) tokens, first token [\d.]+ s(, [\d.]+ tok/s)? · (eos|length)$", caption)
    assert match, caption
    assert 1 <= int(match.group(1)) <= 16
    assert app.session_state["messages"][1]["role"] == "assistant"
    assert app.session_state["messages"][1]["content"].strip()


def test_a_broken_model_folder_shows_an_error_and_the_page_stays_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    (tmp_path / "broken").mkdir()
    monkeypatch.setenv("OVCHAT_MODEL", str(tmp_path / "broken"))
    app = AppTest.from_file(str(ROOT / "chat_streamlit.py"), default_timeout=60)
    app.run()
    assert not app.exception
    assert "missing openvino_model.xml" in app.error[0].value
