"""The chat page under Streamlit's AppTest: a scripted engine for the UI logic, the real models for a turn."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeEngine

from ovchat.chats.store import ConversationStore
from ovchat.engine import Engine
from ovchat.i18n import CATALOG, PREFS_FILE, translate
from ovchat.lab import presets
from ovchat.paths import data_home
from ovchat.settings import GenerationSettings

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "chat_streamlit.py")
CAPTION = re.compile(r"^(\d+) tokens · first token [\d.]+ s( · [\d.]+ tok/s)? · (eos|length|stopped)")


@pytest.fixture(autouse=True)
def fresh_streamlit_caches() -> Iterator[None]:
    """Engines and stores are cached per process by st.cache_resource; each test starts clean."""
    import streamlit as st

    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


@pytest.fixture(autouse=True)
def one_script_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """`streamlit run` compiles the page once per server, under a lock, for every session; AppTest compiles
    it again on every run. Two tabs compiling at once in threads hit CPython 3.11's AST race (cpython
    #106905: "SystemError: AST constructor recursion depth mismatch"), so the tests share one cache too."""
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner

    shared = ScriptCache()
    monkeypatch.setattr(app_test, "ScriptCache", lambda: shared)
    monkeypatch.setattr(local_script_runner, "ScriptCache", lambda: shared)


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeEngine:
    engine = FakeEngine()
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, path, device="CPU", **kwargs: engine))
    monkeypatch.setenv("OVCHAT_MODEL", str(tmp_path / "fake-model"))
    return engine


def open_page(query: dict[str, str] | None = None, timeout: float = 60, locale: str | None = None):
    """A new browser tab on the page: ``query`` is the URL's, ``locale`` the browser's navigator.language."""
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(PAGE, default_timeout=timeout)
    for key, value in (query or {}).items():
        app.query_params[key] = value
    if locale is not None:
        app.context["locale"] = locale
    app.run()
    assert not app.exception, app.exception
    return app


def send(app, text: str):
    app.chat_input[0].set_value(text).run()
    assert not app.exception, app.exception
    return app


def button(app, label: str):
    return next(b for b in app.button if b.label == label)


def shown(app) -> list[tuple[str, str]]:
    return [(message.name, message.markdown[0].value) for message in app.chat_message]


def test_sliders_and_advanced_settings_reach_the_engine(fake_engine: FakeEngine) -> None:
    app = open_page()
    sliders = {s.label: s for s in app.sidebar.slider}
    assert list(sliders) == ["Temperature", "Top-p", "Top-k", "Max new tokens", "Repetition penalty"]
    assert all(s.help for s in sliders.values())
    sliders["Temperature"].set_value(0.3)
    sliders["Top-p"].set_value(0.5)
    sliders["Top-k"].set_value(7)
    sliders["Max new tokens"].set_value(64)
    sliders["Repetition penalty"].set_value(1.3)
    next(t for t in app.sidebar.text_input if t.label == "Seed").set_value("42")
    next(t for t in app.sidebar.text_area if t.label == "Stop strings").set_value("END\nUser:")
    send(app, "hello")
    assert fake_engine.calls[-1][1] == GenerationSettings(
        temperature=0.3, top_p=0.5, top_k=7, max_new_tokens=64, repetition_penalty=1.3, seed=42, stop=("END", "User:")
    )


def test_history_grows_and_every_reply_has_its_metrics(fake_engine: FakeEngine) -> None:
    app = open_page()
    send(app, "first question")
    send(app, "second question")
    assert shown(app) == [
        ("user", "first question"),
        ("assistant", "You said: first question"),
        ("user", "second question"),
        ("assistant", "You said: second question"),
    ]
    assert [m["role"] for m in fake_engine.calls[1][0]] == ["user", "assistant", "user"]
    for message in app.chat_message[1::2]:
        assert CAPTION.match(message.caption[0].value), message.caption[0].value


def test_system_prompt_is_sent_first_and_kept_with_the_chat(fake_engine: FakeEngine) -> None:
    app = open_page()
    next(t for t in app.sidebar.text_area if t.label == "System prompt").set_value("Answer in French.").run()
    send(app, "hello")
    assert fake_engine.calls[-1][0][0] == {"role": "system", "content": "Answer in French."}
    (chat,) = ConversationStore().list()
    assert ConversationStore().get(chat.id).system_prompt == "Answer in French."


def test_model_output_is_markdown_never_html(fake_engine: FakeEngine) -> None:
    fake_engine.reply = lambda messages: "<script>alert(1)</script> **bold**"
    app = open_page()
    send(app, "hi")
    element = app.chat_message[1].markdown[0]
    assert element.value == "<script>alert(1)</script> **bold**"
    assert element.proto.allow_html is False


def test_stop_keeps_the_partial_reply_marked_stopped(fake_engine: FakeEngine) -> None:
    import streamlit as st

    def click_stop(index: int, cancel: threading.Event) -> None:
        # Streamlit interrupts a running script when any button is clicked; st.stop() raises the same
        # StopException inside the script, here in the middle of the reply.
        if index == 2:
            st.stop()

    fake_engine.reply = lambda messages: "one two three four five six seven"
    fake_engine.on_chunk = click_stop
    app = open_page()
    send(app, "tell me a story")
    app.run()
    assert shown(app)[-1] == ("assistant", "one two three")
    assert app.chat_message[1].caption[0].value.endswith("stopped")
    (chat,) = ConversationStore().list()
    assert ConversationStore().get(chat.id).messages[-1].meta["stopped"] is True


def test_regenerate_replaces_the_last_reply(fake_engine: FakeEngine) -> None:
    replies = iter(["first answer", "second answer"])
    fake_engine.reply = lambda messages: next(replies)
    app = open_page()
    send(app, "question")
    button(app, "🔄 Regenerate").click().run()
    assert shown(app) == [("user", "question"), ("assistant", "second answer")]
    assert fake_engine.calls[1][0] == [{"role": "user", "content": "question"}]


def test_edit_the_last_message_and_resend(fake_engine: FakeEngine) -> None:
    app = open_page()
    send(app, "first")
    send(app, "wrong question")
    button(app, "✏️ Edit").click().run()
    assert app.text_area(key="edit_text").value == "wrong question"
    app.text_area(key="edit_text").set_value("right question")
    next(b for b in app.button if b.label == "Send").click().run()
    assert not app.exception
    texts = [text for _, text in shown(app)]
    assert texts == ["first", "You said: first", "right question", "You said: right question"]


def test_new_chat_switch_back_and_reload_keep_the_chats(fake_engine: FakeEngine) -> None:
    app = open_page()
    send(app, "about cats")
    first_id = app.query_params["chat"]
    button(app, "➕ New chat").click().run()
    assert shown(app) == [] and "chat" not in app.query_params
    send(app, "about dogs")
    assert shown(app)[0] == ("user", "about dogs")
    chats = app.sidebar.radio[0]
    assert chats.options == ["about dogs", "about cats"]  # the titles, newest first
    chats.set_value(int(first_id)).run()
    assert shown(app)[0] == ("user", "about cats")
    reloaded = open_page({"chat": first_id})  # a browser reload: a new session, the same URL
    assert shown(reloaded) == [("user", "about cats"), ("assistant", "You said: about cats")]


def test_rename_and_delete_a_chat(fake_engine: FakeEngine) -> None:
    app = open_page()
    send(app, "hello")
    title = app.sidebar.text_input(key=f"title_{app.query_params['chat']}")
    title.set_value("   ").run()
    assert app.sidebar.error[0].value == "Not saved: a chat's title cannot be empty"
    assert [c.title for c in ConversationStore().list()] == ["hello"]
    title.set_value("Greetings").run()
    assert [c.title for c in ConversationStore().list()] == ["Greetings"]
    button(app, "🗑 Delete chat").click().run()
    assert ConversationStore().list() != []  # asks first
    button(app, "Delete").click().run()
    assert ConversationStore().list() == [] and shown(app) == []


def test_download_json_and_markdown(fake_engine: FakeEngine) -> None:
    app = open_page()
    send(app, "数学 😀")
    downloads = {d.label: d for d in app.get("download_button")}
    assert set(downloads) == {"Download JSON", "Download Markdown"}


def test_import_a_chat_and_reject_a_malformed_one(fake_engine: FakeEngine) -> None:
    app = open_page()
    good = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    broken = b'{"format": "ovchat.chat", "version": 1, "messages": [{"role": "bot"}]}'
    app.sidebar.file_uploader[0].upload("broken.json", broken).run()
    assert "message 0 has no valid role" in app.sidebar.error[0].value
    assert ConversationStore().list() == []
    app.sidebar.file_uploader[0].upload("good.json", json.dumps(good).encode()).run()
    assert not app.exception
    assert shown(app) == [("user", "hi"), ("assistant", "hello")]
    (chat,) = ConversationStore().list()
    assert ConversationStore().get(chat.id).system_prompt == "Be brief."


def test_a_broken_model_folder_shows_the_error_and_the_page_stays_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken").mkdir()
    monkeypatch.setenv("OVCHAT_MODEL", str(tmp_path / "broken"))
    app = open_page()
    assert "missing openvino_model.xml" in app.error[0].value
    assert "export_ir.py" in app.info[0].value
    assert button(app, "➕ New chat") is not None and app.sidebar.selectbox  # the sidebar still works


def test_one_turn_on_the_tiny_model(tiny_irs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVCHAT_MODEL", str(tiny_irs["int8"]))
    app = open_page(timeout=120)
    next(s for s in app.sidebar.slider if s.label == "Max new tokens").set_value(16)
    send(app, "Hello there")
    assert [name for name, _ in shown(app)] == ["user", "assistant"]
    match = CAPTION.match(app.chat_message[1].caption[0].value)
    assert match and 1 <= int(match.group(1)) <= 16


@pytest.mark.slow
def test_one_turn_on_the_default_model(default_model_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVCHAT_HOME", str(default_model_home))
    monkeypatch.delenv("OVCHAT_MODEL", raising=False)
    app = open_page(timeout=180)
    next(s for s in app.sidebar.slider if s.label == "Temperature").set_value(0.0)
    send(app, "What is the capital of France?")
    assert "Paris" in shown(app)[1][1]
    assert CAPTION.match(app.chat_message[1].caption[0].value).group(3) == "eos"


def test_two_tabs_chatting_at_once_get_complete_separate_replies(
    tiny_irs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVCHAT_MODEL", str(tiny_irs["int8"]))
    prompts = ["Hello there", "def add(a, b):"]

    def greedy_tab():
        app = open_page(timeout=120)
        next(s for s in app.sidebar.slider if s.label == "Temperature").set_value(0.0)
        next(s for s in app.sidebar.slider if s.label == "Max new tokens").set_value(48)
        return app

    alone = [shown(send(greedy_tab(), prompt))[1][1] for prompt in prompts]
    assert alone[0] != alone[1]
    tabs = [greedy_tab() for _ in prompts]
    threads = [threading.Thread(target=send, args=(tab, prompt)) for tab, prompt in zip(tabs, prompts, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [shown(tab)[1][1] for tab in tabs] == alone
    assert len(ConversationStore().list()) == 4


def test_first_run_exports_the_default_model_with_progress_then_chats(
    tiny_irs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import ovchat.export

    exported: list[Path] = []

    def export_tiny_instead(source: object, output: Path, progress=None, **kwargs: object) -> None:
        # The real export takes a minute and is covered by the export tests and `ovchat prepare`;
        # here the tiny model stands in, with the same progress calls.
        for step in ("load", "convert", "compress", "save", "check"):
            progress(step, "start", None)
            progress(step, "done", 0.1)
        shutil.copytree(tiny_irs["int8"], output)
        exported.append(output)

    monkeypatch.setattr(ovchat.export, "export_model", export_tiny_instead)
    monkeypatch.delenv("OVCHAT_MODEL", raising=False)
    app = open_page(timeout=120)
    assert exported == [ovchat.export.default_model_folder()]
    assert app.status[0].label == "Default model exported"
    assert [m.value for m in app.status[0].markdown][:2] == ["✓ load (0.1 s)", "✓ convert (0.1 s)"]
    next(s for s in app.sidebar.slider if s.label == "Max new tokens").set_value(16)
    send(app, "Hello there")
    assert exported == [ovchat.export.default_model_folder()]  # once
    assert [name for name, _ in shown(app)] == ["user", "assistant"]


def test_model_and_device_pickers_list_what_is_there(
    tiny_irs: dict[str, Path], fake_engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from ovchat.paths import models_dir

    for name in ("tiny-int8", "tiny-int4"):
        shutil.copytree(tiny_irs["int8"], models_dir() / name)
    (models_dir() / "not-a-model").mkdir()
    monkeypatch.delenv("OVCHAT_MODEL")
    app = open_page()
    models = next(s for s in app.sidebar.selectbox if s.label == "Exported model")
    # The default model is offered for export, but an exported model is opened first.
    assert models.options == ["tiny-int4", "tiny-int8", "SmolLM2-135M-Instruct-gguf", "Other folder..."]
    assert models.value == str(models_dir() / "tiny-int4")
    # Under the picker, how the picked folder's weights were made (its manifest: the tiny checkpoint went
    # through optimum-intel to int8).
    assert "int8 by optimum-intel" in [caption.value for caption in app.sidebar.caption]
    devices = next(s for s in app.sidebar.selectbox if s.label == "Device")
    assert "CPU" in devices.options and devices.options[-1] == "AUTO"
    models.set_value(str(models_dir() / "tiny-int4")).run()
    assert "tiny-int4" in app.caption[0].value
    models.set_value("Other folder...").run()
    next(t for t in app.sidebar.text_input if t.label == "Folder").set_value(str(tiny_irs["fp16"])).run()
    assert tiny_irs["fp16"].name in app.caption[0].value


def test_the_page_is_served_on_localhost_without_telemetry() -> None:
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
    assert config["browser"]["gatherUsageStats"] is False


def test_a_note_shows_when_older_turns_were_left_out(fake_engine: FakeEngine) -> None:
    fake_engine.trimmed_turns = 3
    app = open_page()
    send(app, "hello")
    assert app.chat_message[1].caption[0].value.endswith("3 older turns left out to fit the context")


# ----- the page in Simplified Chinese -----

ZH = CATALOG["zh-CN"]
LANGUAGE_LABEL = "Language / 语言"
ZH_REPLY_CAPTION = re.compile(
    r"^(\d+) 个词元 · 首个词元 [\d.]+ 秒( · [\d.]+ 词元/秒)? · (自然结束|达到长度上限|已停止)"
)


def language_picker(app):
    return next(s for s in app.sidebar.selectbox if s.label == LANGUAGE_LABEL)


def remembered() -> str | None:
    path = data_home() / PREFS_FILE
    return json.loads(path.read_text(encoding="utf-8")).get("language") if path.exists() else None


def labels(app) -> list[str]:
    """The labels of the sidebar's widgets and the page's buttons, headers and expanders."""
    widgets = [*app.sidebar.selectbox, *app.sidebar.slider, *app.sidebar.text_input, *app.sidebar.text_area]
    widgets += [*app.sidebar.file_uploader, *app.button, *app.get("download_button"), *app.expander]
    return [widget.label for widget in widgets] + [header.value for header in app.sidebar.header]


def assert_chinese(app) -> None:
    """Every label is a Chinese text of the catalog (or one the same in both, such as "Top-p")."""
    english_only = set(CATALOG["en"].values()) - set(ZH.values())
    assert [label for label in labels(app) if label in english_only] == []
    assert set(labels(app)) - set(ZH.values()) <= {"batched"}  # the rest are names (a chat title, a device...)


def test_the_page_in_chinese_from_the_url(fake_engine: FakeEngine) -> None:
    app = open_page({"lang": "zh-CN"})
    assert language_picker(app).value == "zh-CN" and language_picker(app).options == ["English", "简体中文"]
    assert [header.value for header in app.sidebar.header] == [ZH["chat.chats"], ZH["chat.model"], ZH["chat.sampling"]]
    assert button(app, "➕ 新对话").label == ZH["chat.new_chat"]  # a literal too: a broken lookup cannot pass
    sliders = [ZH[key] for key in ("chat.temperature", "chat.top_p", "chat.top_k", "chat.max_new_tokens")]
    assert [s.label for s in app.sidebar.slider] == [*sliders, ZH["chat.repetition_penalty"]]
    assert app.sidebar.slider[0].label == "温度"
    assert app.sidebar.slider[0].help == ZH["chat.temperature_help"]
    selects = [s.label for s in app.sidebar.selectbox]
    assert selects == [LANGUAGE_LABEL, ZH["chat.exported_model"], ZH["chat.device"], ZH["chat.backend"], "预设"]
    assert [t.label for t in app.sidebar.text_input] == [ZH["chat.seed"], ZH["lab.preset_name"]]
    assert [t.label for t in app.sidebar.text_area] == [ZH["chat.stop_strings"], "系统提示词"]
    assert app.sidebar.text_area[1].placeholder == ZH["chat.system_prompt_placeholder"]
    assert app.sidebar.file_uploader[0].label == ZH["chat.import"]
    assert app.chat_input[0].placeholder == "有问题，尽管问"
    assert app.caption[0].value == translate(
        "zh-CN", "chat.model_line", folder="fake-model", device="CPU", context=2048
    )
    assert_chinese(app)

    send(app, "你好，请用中文回答。")
    assert shown(app) == [("user", "你好，请用中文回答。"), ("assistant", "You said: 你好，请用中文回答。")]
    assert ZH_REPLY_CAPTION.match(app.chat_message[1].caption[0].value), app.chat_message[1].caption[0].value
    assert button(app, ZH["chat.regenerate"]) and button(app, "✏️ 编辑")
    assert {d.label for d in app.get("download_button")} == {"下载 JSON", "下载 Markdown"}
    assert [e.label for e in app.expander] == [ZH["chat.this_chat"], ZH["chat.advanced"], ZH["chat.system_prompt"]]
    assert_chinese(app)

    assert remembered() == "zh-CN"
    again = open_page()  # a new tab without ?lang=: the choice was remembered
    assert language_picker(again).value == "zh-CN"
    assert button(again, "➕ 新对话") and again.sidebar.header[0].value == "对话"


def test_the_language_picker_switches_the_page_and_keeps_the_settings(fake_engine: FakeEngine) -> None:
    app = open_page()
    assert language_picker(app).value == "en" and remembered() is None  # English by default, nothing written
    next(s for s in app.sidebar.slider if s.label == "Temperature").set_value(0.3).run()
    next(t for t in app.sidebar.text_input if t.label == "Seed").set_value("7").run()
    language_picker(app).set_value("zh-CN").run()
    assert button(app, "➕ 新对话") and remembered() == "zh-CN"
    assert next(s for s in app.sidebar.slider if s.label == "温度").value == 0.3  # a new label, the same value
    assert next(t for t in app.sidebar.text_input if t.label == "随机种子").value == "7"
    assert_chinese(app)
    send(app, "数学是被发明的还是被发现的？")
    assert fake_engine.calls[-1][1].temperature == 0.3 and fake_engine.calls[-1][1].seed == 7
    language_picker(app).set_value("en").run()
    assert button(app, "➕ New chat") and button(app, "🔄 Regenerate") and remembered() == "en"
    assert CAPTION.match(app.chat_message[1].caption[0].value)
    assert open_page().sidebar.header[0].value == "Chats"


def test_the_picker_keeps_the_urls_lang_in_step(fake_engine: FakeEngine) -> None:
    app = open_page({"lang": "zh-CN"})
    language_picker(app).set_value("en").run()
    assert app.query_params["lang"] == "en" and button(app, "➕ New chat")
    app.run()  # the URL no longer says Chinese, so the page stays English
    assert button(app, "➕ New chat") and remembered() == "en"


def test_the_browsers_language_is_the_default_until_one_is_chosen(fake_engine: FakeEngine) -> None:
    app = open_page(locale="zh-CN")
    assert language_picker(app).value == "zh-CN" and button(app, "➕ 新对话")
    assert remembered() is None  # the browser's language is not a choice
    assert button(open_page(locale="en-US"), "➕ New chat")
    assert button(open_page(locale="zh-TW"), "➕ 新对话")
    language_picker(app).set_value("en").run()
    assert button(open_page(locale="zh-CN"), "➕ New chat")  # a choice beats the browser


def test_a_malformed_preferences_file_is_ignored(fake_engine: FakeEngine) -> None:
    (data_home() / PREFS_FILE).parent.mkdir(parents=True, exist_ok=True)
    (data_home() / PREFS_FILE).write_text("{not json", encoding="utf-8")
    assert button(open_page(), "➕ New chat")
    assert button(open_page(locale="zh-CN"), "➕ 新对话")


def test_errors_in_chinese_keep_the_packages_detail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken").mkdir()
    monkeypatch.setenv("OVCHAT_MODEL", str(tmp_path / "broken"))
    app = open_page({"lang": "zh-CN"})
    assert app.error[0].value.startswith("无法加载模型：") and "missing openvino_model.xml" in app.error[0].value
    assert app.info[0].value == ZH["chat.load_failed_hint"]
    broken = b'{"format": "ovchat.chat", "version": 1, "messages": [{"role": "bot"}]}'
    app.sidebar.file_uploader[0].upload("broken.json", broken).run()
    assert app.sidebar.error[0].value.startswith("无法导入对话：")
    assert "message 0 has no valid role" in app.sidebar.error[0].value


def test_a_stopped_reply_says_so_in_chinese(fake_engine: FakeEngine) -> None:
    import streamlit as st

    def click_stop(index: int, cancel: threading.Event) -> None:
        if index == 2:
            st.stop()

    fake_engine.reply = lambda messages: "一 二 三 四 五 六"
    fake_engine.on_chunk = click_stop
    app = open_page({"lang": "zh-CN"})
    send(app, "讲个故事")
    app.run()
    assert shown(app)[-1] == ("assistant", "一 二 三")
    assert app.chat_message[1].caption[0].value.endswith("已停止")


# ----- the sampling lab: presets and token probabilities in the chat, the explorer and the comparison -----


@pytest.fixture
def tiny_page_model(monkeypatch: pytest.MonkeyPatch, tiny_irs: dict[str, Path]) -> Path:
    monkeypatch.setenv("OVCHAT_MODEL", str(tiny_irs["int8"]))
    return tiny_irs["int8"]


def preset_picker(app):
    return next(s for s in app.sidebar.selectbox if s.label in ("Preset", ZH["lab.preset"]))


def test_a_preset_sets_the_sliders_and_reaches_the_engine(fake_engine: FakeEngine) -> None:
    app = open_page()
    preset_picker(app).set_value("Creative").run()
    values = {s.label: s.value for s in app.sidebar.slider}
    creative = presets.BUILT_IN_PRESETS["Creative"]
    assert values["Temperature"] == creative["temperature"] and values["Top-k"] == creative["top_k"]
    send(app, "tell me a story")
    settings = fake_engine.calls[-1][1]
    assert (settings.temperature, settings.top_p, settings.top_k) == (1.1, 0.98, 100)
    assert settings.logprobs is None  # token probabilities are off unless asked for


def test_saving_a_preset_offers_it_in_the_picker(fake_engine: FakeEngine) -> None:
    app = open_page()
    next(s for s in app.sidebar.slider if s.label == "Temperature").set_value(1.4).run()
    next(t for t in app.sidebar.text_input if t.label == "Save the current settings as").set_value("Wild").run()
    next(b for b in app.sidebar.button if b.label == "Save preset").click().run()
    assert presets.load_presets()["Wild"]["temperature"] == 1.4
    assert "Wild" in preset_picker(open_page()).options


def test_the_probabilities_toggle_asks_the_engine_for_them(fake_engine: FakeEngine) -> None:
    app = open_page()
    next(t for t in app.sidebar.toggle if t.label == "Show token probabilities").set_value(True).run()
    send(app, "hello")
    assert fake_engine.calls[-1][1].logprobs == 5


@pytest.mark.parametrize("language", ["en", "zh-CN"])
def test_the_explorer_on_the_tiny_model(tiny_page_model: Path, language: str) -> None:
    app = open_page({"view": "explore", "lang": language}, timeout=120)
    text = CATALOG[language]
    assert app.subheader[0].value == text["lab.explore_title"]
    assert [m.label for m in app.metric] == [
        text["lab.explore_kept"], text["lab.explore_entropy"], text["lab.explore_entropy_final"],
    ]  # fmt: skip
    table = app.dataframe[0].value
    assert len(table) == 15 and table.columns[0] == text["lab.col_token"]
    kept = int(app.metric[0].value.split(" / ")[0])
    assert 1 <= kept <= GenerationSettings().top_k
    next(b for b in app.button if b.key == "take_0").click().run()
    assert any(text["lab.explore_taken"].format(count=1) in caption.value for caption in app.caption)
    next(b for b in app.button if b.label == text["lab.take_undo"]).click().run()
    assert text["lab.explore_taken"].format(count=1) not in "".join(c.value for c in app.caption)


@pytest.mark.parametrize("language", ["en", "zh-CN"])
def test_compare_on_the_tiny_model(tiny_page_model: Path, language: str) -> None:
    app = open_page({"view": "compare", "lang": language}, timeout=120)
    text = CATALOG[language]
    assert app.subheader[0].value == text["lab.compare_title"]
    numbers = {n.label: n for n in app.number_input}
    numbers[text["lab.compare_count"]].set_value(2)
    numbers[text["lab.compare_samples"]].set_value(2)
    numbers[text["lab.compare_max_tokens"]].set_value(8)
    app.run()
    next(b for b in app.button if b.label == text["lab.compare_run"]).click().run(timeout=300)
    assert not app.exception, app.exception
    summary = app.dataframe[0].value
    assert len(summary) == 2 and list(summary[text["lab.col_samples"]]) == [2, 2]
    assert {d.label for d in app.get("download_button")} == {
        text["lab.compare_download_csv"], text["lab.compare_download_json"],
    }  # fmt: skip
    seeds = [c.value for c in app.caption if c.value.startswith(text["lab.compare_seed"].split("{")[0])]
    assert len(seeds) == 4
