"""The remote engine (any OpenAI-compatible server behind Engine.stream's API) against a real `ovchat serve`
subprocess on a loopback port, and `ovchat ask --endpoint` as a user runs it."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_cli import ovchat
from test_server import serve

from ovchat.engine import collect
from ovchat.engine.remote import API_KEY_ENV, ENDPOINT_ENV, RemoteEngine, context_length_of, estimate_tokens
from ovchat.errors import OvchatError
from ovchat.paths import HOME_ENV
from ovchat.server.process import ServerProcess, free_port
from ovchat.settings import GenerationSettings

if TYPE_CHECKING:
    from playwright.sync_api import Browser

KEY = "remote-test-key"
GREEDY = GenerationSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12)
QUESTION = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture(scope="module")
def tiny_server(tiny_irs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve(tiny_irs["int8"], tmp_path_factory.mktemp("remote"), "serve-remote", "--api-key", KEY) as process:
        yield process


@pytest.fixture(scope="module")
def remote(tiny_server: ServerProcess) -> RemoteEngine:
    return RemoteEngine.connect(f"{tiny_server.url}/v1", api_key=KEY)


def test_connect_reads_the_model_list_and_context(remote: RemoteEngine, tiny_irs: dict[str, Path]) -> None:
    assert remote.models == [remote.model] and remote.model
    assert remote.context_length == 512  # the tiny model's, from the server's max_model_len
    assert "key" not in repr(remote).lower(), repr(remote)  # the key stays inside the client


def test_a_streamed_reply_matches_the_local_engines(remote: RemoteEngine, tiny_irs: dict[str, Path]) -> None:
    from ovchat.engine import Engine

    chunks = list(remote.stream(QUESTION, GREEDY))
    reply = collect(iter(chunks))
    assert len(chunks) >= 2 and chunks[-1].stats is not None
    assert reply.stats.new_tokens > 0 and reply.stats.prompt_tokens > 0 and reply.stats.ttft_s is not None
    assert reply.stats.finish_reason in ("eos", "length")
    local = Engine.load(tiny_irs["int8"]).generate(QUESTION, GREEDY)
    assert reply.text == local.text  # greedy: the same model gives the same text over HTTP


def test_settings_stop_strings_and_logprobs_reach_the_server(remote: RemoteEngine) -> None:
    whole = remote.generate(QUESTION, GREEDY.with_changes(max_new_tokens=16))
    cut_at = whole.text[len(whole.text) // 2 :].strip()[:3]
    if not cut_at.strip():
        pytest.skip(f"no stop string to cut the tiny model's reply at: {whole.text!r}")
    cut = remote.generate(QUESTION, GREEDY.with_changes(max_new_tokens=16, stop=(cut_at,)))
    assert cut_at not in cut.text and whole.text.startswith(cut.text)
    scored = remote.generate(QUESTION, GREEDY.with_changes(logprobs=3))
    assert scored.logprobs and all(len(token.top) == 3 for token in scored.logprobs)
    assert remote.ignored == set()  # ovchat serve takes top_k and repetition_penalty


def test_cancel_closes_the_stream(remote: RemoteEngine) -> None:
    cancel = threading.Event()
    stream = remote.stream(QUESTION, GenerationSettings(max_new_tokens=200), cancel)
    next(stream)
    cancel.set()
    final = [chunk for chunk in stream if chunk.stats is not None][-1]
    assert final.stats is not None and final.stats.finish_reason == "cancelled"
    assert final.stats.new_tokens < 200


def test_each_error_is_one_clear_line(tiny_server: ServerProcess) -> None:
    with pytest.raises(OvchatError, match="refused the API key \\(401\\)"):
        RemoteEngine.connect(f"{tiny_server.url}/v1", api_key="wrong")
    with pytest.raises(OvchatError, match="has no model 'gpt-9'; it lists"):
        RemoteEngine.connect(f"{tiny_server.url}/v1", model="gpt-9", api_key=KEY)
    down = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(OvchatError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1: is the server running"):
        RemoteEngine.connect(down)
    with pytest.raises(OvchatError, match="must be an http:// or https:// address"):
        RemoteEngine.connect("localhost:8000")


def test_the_history_is_trimmed_to_the_servers_context(remote: RemoteEngine) -> None:
    long_turns = []
    for index in range(12):
        long_turns += [
            {"role": "user", "content": f"Question {index}: " + "tell me more " * 20},
            {"role": "assistant", "content": "Here is more. " * 20},
        ]
    chat = [*long_turns, {"role": "user", "content": "And finally?"}]
    reply = remote.generate(chat, GREEDY.with_changes(max_new_tokens=8))
    assert reply.stats.trimmed_turns > 0
    assert reply.stats.prompt_tokens + 8 <= remote.context_length


def test_ask_with_an_endpoint(tiny_server: ServerProcess) -> None:
    flags = ("--endpoint", f"{tiny_server.url}/v1", "--api-key", KEY, "--temperature", "0", "--max-new-tokens", "6")
    result = ovchat("ask", "Hello there", *flags, "--json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["new_tokens"] > 0 and reply["finish_reason"] in ("eos", "length")
    refused = ovchat("ask", "Hello", "--endpoint", f"{tiny_server.url}/v1", "--api-key", "wrong")
    assert refused.returncode == 2 and "refused the API key (401)" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    both = ovchat("ask", "Hello", "--endpoint", f"{tiny_server.url}/v1", "--model", "x")
    assert both.returncode == 2 and "--model applies to a local model" in both.stderr


def test_context_length_and_estimate() -> None:
    assert context_length_of({"id": "m", "max_model_len": 8192}) == 8192
    assert context_length_of({"id": "m", "meta": {"n_ctx_train": 2048}}) == 2048
    assert context_length_of({"id": "m"}) is None
    chinese, english = (
        estimate_tokens([{"role": "user", "content": "数学" * 30}]),
        estimate_tokens([{"role": "user", "content": "math" * 30}]),
    )
    assert chinese > english  # 3 bytes a character: about a token each


# ----- llama.cpp's own OpenAI-compatible server, on the default model's GGUF -----


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`python -m llama_cpp.server` (llama-cpp-python[server], the test extra) on the default model's GGUF, with
    a key and a short alias, as a real subprocess on a loopback port."""
    from ovchat.export.sources import default_gguf_path

    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf_path()), "--model_alias", "smollm2",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--api_key", KEY, "--n_threads", "2",
        "--chat_format", "chatml",  # SmolLM2's template, as the GGUF names it
    ]  # fmt: skip
    folder = tmp_path_factory.mktemp("llama-server")
    process = ServerProcess("llama-server", command, port, folder, health_path="/docs", start_timeout_s=120)
    with process:
        yield process


def test_llama_cpp_server_streams_stops_and_cancels(llama_server: ServerProcess) -> None:
    remote = RemoteEngine.connect(f"{llama_server.url}/v1", api_key=KEY)
    assert remote.models == ["smollm2"] and remote.model == "smollm2"
    reply = remote.generate([{"role": "user", "content": "What is the capital of France?"}], GREEDY)
    assert "Paris" in reply.text and reply.stats.new_tokens > 0
    cut = remote.generate(
        [{"role": "user", "content": "What is the capital of France?"}], GREEDY.with_changes(stop=("Paris",))
    )
    assert "Paris" not in cut.text and reply.text.startswith(cut.text.rstrip())
    cancel = threading.Event()
    stream = remote.stream([{"role": "user", "content": "Write a long story."}], GenerationSettings(), cancel)
    next(stream)
    cancel.set()
    final = [chunk for chunk in stream if chunk.stats is not None][-1]
    assert final.stats.finish_reason == "cancelled"
    with pytest.raises(OvchatError, match="refused the API key \\(401\\)"):
        RemoteEngine.connect(f"{llama_server.url}/v1", api_key="wrong")
    with pytest.raises(OvchatError, match="has no model 'gpt-9'; it lists smollm2"):
        RemoteEngine.connect(f"{llama_server.url}/v1", model="gpt-9", api_key=KEY)


# ----- the page chatting with a remote server (AppTest) -----


def test_the_page_chats_with_a_remote_server(
    tiny_server: ServerProcess, monkeypatch: pytest.MonkeyPatch, isolated_data_home: Path
) -> None:
    import streamlit as st
    from test_page import open_page, send

    st.cache_resource.clear()
    monkeypatch.setenv("OVCHAT_ENDPOINT", f"{tiny_server.url}/v1")
    monkeypatch.setenv("OVCHAT_API_KEY", KEY)
    app = open_page(timeout=120)
    source = next(radio for radio in app.sidebar.radio if radio.label == "Runs on")
    source.set_value("remote").run()
    assert not app.exception, app.exception
    assert next(s for s in app.sidebar.selectbox if s.label == "Model on the server").options == [
        RemoteEngine.connect(f"{tiny_server.url}/v1", api_key=KEY).model
    ]
    assert app.caption[0].value.endswith(f"{tiny_server.url}/v1 · context 512 tokens"), app.caption[0].value
    send(app, "Hello there")
    assert [message.name for message in app.chat_message] == ["user", "assistant"]
    assert app.chat_message[1].markdown[0].value
    assert "tokens" in app.chat_message[1].caption[0].value
    assert KEY not in dict(app.query_params).__repr__()
    saved = b"".join(path.read_bytes() for path in isolated_data_home.rglob("*") if path.is_file())
    assert KEY.encode() not in saved, "the API key was written to the data folder"
    key_box = next(box for box in app.sidebar.text_input if box.label == "API key")
    key_box.set_value("wrong").run()
    assert any("refused the API key (401)" in error.value for error in app.error), [e.value for e in app.error]
    st.cache_resource.clear()


# ----- the page chatting with llama.cpp's server in a real browser -----


@pytest.mark.slow
def test_the_page_in_a_browser_chats_with_llama_cpp_server(
    llama_server: ServerProcess, browser: Browser, tmp_path: Path
) -> None:
    """`OVCHAT_ENDPOINT=... streamlit run chat_streamlit.py` as README shows it, with an empty data folder (no
    local model is exported or loaded): a question answered by llama.cpp's server, then a long reply stopped."""
    from browsing import (
        CAPTION,
        CHAT_INPUT,
        MODEL_LOAD_MS,
        chat_page_server,
        reply_text,
        send,
        set_temperature_to_zero,
        stop_button,
        wait_for_text,
    )
    from playwright.sync_api import expect

    home = tmp_path / "home"
    env = {**os.environ, HOME_ENV: str(home), ENDPOINT_ENV: f"{llama_server.url}/v1", API_KEY_ENV: KEY}
    env.pop("OVCHAT_MODEL", None)
    with chat_page_server(tmp_path, env) as page_server:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.goto(page_server.url)
            page.locator(CHAT_INPUT).wait_for(timeout=MODEL_LOAD_MS)
            where = page.get_by_text(re.compile(f"smollm2 on {re.escape(llama_server.url)}/v1 · context \\d+ tokens"))
            expect(where, "the page opened on the server named by OVCHAT_ENDPOINT").to_be_visible()
            set_temperature_to_zero(page)
            reply = send(page, "What is the capital of France?")
            expect(reply.locator(CAPTION).filter(has_text="tok/s")).to_be_visible(timeout=60_000)
            assert "Paris" in reply_text(reply), reply_text(reply)

            story = send(page, "Write a very long story about a dragon who learns to cook.")
            wait_for_text(story)
            stop_button(page).click()
            expect(story.locator(CAPTION).filter(has_text="stopped")).to_be_visible(timeout=20_000)
            assert reply_text(story)
            assert KEY not in page.url
        finally:
            context.close()
    assert not (home / "models").exists(), "the page exported or loaded a local model while on a remote server"
    saved = b"".join(path.read_bytes() for path in home.rglob("*") if path.is_file())
    assert b"Paris" in saved, "the chat was not saved"
    assert KEY.encode() not in saved, "the API key was written to the data folder"
