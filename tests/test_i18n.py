"""The pages' message catalog (ovchat.i18n): complete in every language, used by every page string, and
the remembered language. The pages themselves in both languages are in test_page.py."""

from __future__ import annotations

import ast
import importlib
import json
import re
import string
import sys
import types
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

import ovchat.i18n
from ovchat.i18n import (
    CATALOG,
    DEFAULT_LANGUAGE,
    LANGUAGES,
    PREFS_FILE,
    SECTIONS,
    initial_language,
    language_from_locale,
    read_prefs,
    remember_language,
    remembered_language,
    translate,
    write_prefs,
)
from ovchat.paths import data_home

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(ROOT.glob("*_streamlit.py"))

# ----- the catalog is complete -----


def placeholders(text: str) -> set[str]:
    names = set()
    for _, field, _, _ in string.Formatter().parse(text):  # raises ValueError on a stray brace
        if field is not None:
            assert field, f"{text!r}: an unnamed {{}} (translate takes named parameters only)"
            names.add(re.split(r"[.\[]", field)[0])
    return names


def test_every_key_has_a_text_in_every_language_with_the_same_placeholders() -> None:
    assert set(CATALOG) == set(LANGUAGES)
    keys = set().union(*(CATALOG[language] for language in LANGUAGES))
    assert keys, "an empty catalog"
    for language in LANGUAGES:
        missing = sorted(keys - set(CATALOG[language]))
        assert not missing, f"no {LANGUAGES[language]} text for {missing}"
        empty = sorted(key for key, text in CATALOG[language].items() if not text.strip())
        assert not empty, f"empty {LANGUAGES[language]} texts: {empty}"
    for key in sorted(keys):
        expected = placeholders(CATALOG[DEFAULT_LANGUAGE][key])
        for language in LANGUAGES:
            assert placeholders(CATALOG[language][key]) == expected, f"{key} in {language}"


def test_keys_start_with_their_section() -> None:
    for section in SECTIONS:
        try:
            module = importlib.import_module(f"ovchat.i18n.{section}")
        except ModuleNotFoundError:
            continue
        for texts in module.MESSAGES.values():
            assert all(key.startswith(f"{section}.") for key in texts), section


def test_the_chinese_page_is_chinese() -> None:
    """A text copied over untranslated slips through the checks above; the Chinese catalog's texts must mostly
    differ from the English ones (names such as "Top-p" and "💬 ovchat" may stay)."""
    same = [key for key in CATALOG["en"] if CATALOG["en"][key] == CATALOG["zh-CN"][key]]
    assert len(same) <= len(CATALOG["en"]) // 10, same
    assert CATALOG["zh-CN"]["chat.new_chat"] == "➕ 新对话"


def test_translate_formats_and_an_unknown_key_is_a_bug() -> None:
    assert translate("en", "chat.load_failed", detail="no such folder") == "Could not load the model: no such folder"
    assert translate("zh-CN", "chat.load_failed", detail="no such folder") == "无法加载模型：no such folder"
    assert translate("zh-CN", "chat.step_done", step="加载", seconds=1.25) == "✓ 加载（1.2 秒）"
    with pytest.raises(KeyError, match=r"chat\.no_such_key"):
        translate("en", "chat.no_such_key")
    with pytest.raises(KeyError):
        translate("fr", "chat.new_chat")


@pytest.fixture
def fake_sections(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Sections ``one`` and ``two`` as modules in sys.modules; ``absent`` is not there at all."""
    one = types.ModuleType("ovchat.i18n.one")
    one.MESSAGES = {"en": {"one.a": "A"}, "zh-CN": {"one.a": "甲"}}  # type: ignore[attr-defined]
    two = types.ModuleType("ovchat.i18n.two")
    two.MESSAGES = {"en": {"two.b": "B"}, "zh-CN": {"two.b": "乙"}}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ovchat.i18n.one", one)
    monkeypatch.setitem(sys.modules, "ovchat.i18n.two", two)
    yield


def test_sections_merge_a_missing_one_is_skipped_and_a_key_in_two_is_an_error(
    fake_sections: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ovchat.i18n, "SECTIONS", ("one", "absent", "two"))
    assert ovchat.i18n._merge_sections() == {
        "en": {"one.a": "A", "two.b": "B"},
        "zh-CN": {"one.a": "甲", "two.b": "乙"},
    }
    sys.modules["ovchat.i18n.two"].MESSAGES["zh-CN"]["one.a"] = "丙"
    with pytest.raises(ValueError, match=r"'one\.a' is defined in both one and two"):
        ovchat.i18n._merge_sections()


def test_a_section_that_fails_to_import_is_not_taken_for_a_missing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name: str) -> types.ModuleType:
        raise ModuleNotFoundError("No module named 'nowhere'", name="nowhere")

    monkeypatch.setattr(ovchat.i18n, "SECTIONS", ("broken",))
    monkeypatch.setattr(ovchat.i18n.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="nowhere"):
        ovchat.i18n._merge_sections()


# ----- no page string bypasses the catalog -----

# Calls whose function is an attribute with one of these names are Streamlit elements (st.x, st.sidebar.x,
# a column's or a status's x): their positional arguments and TEXT_KEYWORDS are shown to the user.
ELEMENTS = frozenset(
    {
        "badge",
        "button",
        "caption",
        "chat_input",
        "checkbox",
        "color_picker",
        "date_input",
        "dialog",
        "download_button",
        "error",
        "expander",
        "file_uploader",
        "form_submit_button",
        "header",
        "info",
        "link_button",
        "markdown",
        "metric",
        "multiselect",
        "number_input",
        "pills",
        "popover",
        "progress",
        "radio",
        "segmented_control",
        "select_slider",
        "selectbox",
        "slider",
        "spinner",
        "status",
        "subheader",
        "success",
        "tabs",
        "text",
        "text_area",
        "text_input",
        "time_input",
        "title",
        "toast",
        "toggle",
        "warning",
        "write",
    }
)
TEXT_KEYWORDS = frozenset({"label", "help", "placeholder", "body", "value", "text", "delta", "options"})
# Only the label (the first argument) is text: the rest are data, file names, mime types, URLs, file types.
LABEL_ONLY = frozenset({"download_button", "file_uploader", "link_button"})
# Their options are shown as they are unless a format_func turns them into words.
CHOICES = frozenset({"multiselect", "pills", "radio", "segmented_control", "select_slider", "selectbox"})
# Keyword-only texts of calls that are not elements: a status's new label, a cache's spinner text.
OTHER_TEXTS = {"update": frozenset({"label"}), "cache_resource": frozenset({"show_spinner"})}
OTHER_TEXTS["cache_data"] = OTHER_TEXTS["cache_resource"]
CATALOG_CALLS = frozenset({"t", "translate"})
# printf-style format specs, as st.slider and st.number_input take them ("%d", "%.2f", "%0.1f%%").
FORMAT_SPEC = re.compile(r"(%[-+ 0#]*\d*(\.\d+)?[a-zA-Z%])+")
NOT_TEXT = frozenset({"primary", "secondary", "tertiary"})


def is_text(value: str) -> bool:
    """Words a user reads: any letter, in any script. Emoji, digits, punctuation and format specs are not."""
    value = value.strip()
    if value in NOT_TEXT or FORMAT_SPEC.fullmatch(value):
        return False
    return any(unicodedata.category(char).startswith("L") for char in value)


def literals(node: ast.AST) -> Iterator[tuple[int, str]]:
    """The string literals an argument's value may be: itself, an f-string's text, either side of an `if`
    expression, an `or`, a `+` or a `%`, "...".format(...), the items of a list, a lambda's result.
    A call to the catalog, or to anything else, and a variable are not literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.lineno, node.value
    elif isinstance(node, ast.JoinedStr):  # an f-string: its own text, not the values put in it
        text = "".join(part.value for part in node.values if isinstance(part, ast.Constant))
        yield node.lineno, text
    elif isinstance(node, ast.IfExp):
        yield from literals(node.body)
        yield from literals(node.orelse)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            yield from literals(value)
    elif isinstance(node, ast.BinOp):
        yield from literals(node.left)
        yield from literals(node.right)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        yield from literals(node.func.value)
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        for item in node.elts:
            yield from literals(item)
    elif isinstance(node, ast.Lambda):
        yield from literals(node.body)


def bypassing_strings(source: str) -> list[str]:
    """Every text in ``source`` that a Streamlit element shows without going through the catalog, as
    "line N: text"."""
    found: list[tuple[int, str]] = []

    def check(node: ast.AST) -> None:
        found.extend((lineno, value) for lineno, value in literals(node) if is_text(value))

    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        keywords = {keyword.arg: keyword.value for keyword in node.keywords if keyword.arg}
        if name in OTHER_TEXTS:
            for arg, value in keywords.items():
                if arg in OTHER_TEXTS[name]:
                    check(value)
            continue
        if name not in ELEMENTS:
            continue
        formatted = "format_func" in keywords
        positional = node.args[:1] if name in LABEL_ONLY else node.args
        for index, value in enumerate(positional):
            if name in CHOICES and index == 1 and formatted:
                continue  # options shown through format_func, which is checked below
            check(value)
        for arg, value in keywords.items():
            if arg == "options" and formatted:
                continue
            if arg in TEXT_KEYWORDS or arg == "format_func":
                check(value)
    return [f"line {lineno}: {value!r}" for lineno, value in sorted(found)]


BYPASSING = """
import streamlit as st
st.button("Save")
st.sidebar.info(f"{count} files imported")
left.button(label="Go")
st.slider(t("chat.size"), 0, 10, 5, help="How many")
st.radio(t("chat.pick"), ["One", "Two"])
st.markdown(text if text else "*(nothing)*")
with st.status(t("chat.working")) as status:
    status.update(label="Done")
st.selectbox(t("chat.model"), options, format_func=lambda v: "Other" if v is None else v)
st.error("Could not load: " + str(error))
st.caption("{} tokens".format(count))
st.text_input(t("chat.folder"), placeholder="/path/to/the/model")
st.chat_input("问点什么")
st.download_button("Download", data, "chat.json", "application/json")


@st.cache_resource(show_spinner="Loading...")
def load(): ...
"""

NOT_BYPASSING = """
import streamlit as st
st.button(t("chat.save"), key="save", type="primary")
st.button("⏹", key="stop")
st.button("🔄 " + t("chat.again"))
st.download_button(t("chat.download"), document, f"{name}.json", "application/json")
st.slider(t("chat.size"), 0, 10, 5, 1, "%d")
st.write(f"{a} · {b} (2/3)")
st.selectbox(t("chat.language"), ["en", "zh-CN"], format_func=LANGUAGES.__getitem__, key="language")
st.markdown(message.content)
st.error(t("chat.load_failed", detail=str(error)))
st.chat_message("assistant")
st.form("edit")
text = " · ".join(parts)
st.file_uploader(t("chat.import"), ["json"])


@st.cache_resource(show_spinner=False)
def load(): ...
"""


def test_the_checker_finds_every_bypassing_string_and_nothing_else() -> None:
    found = bypassing_strings(BYPASSING)
    lines = [int(item.split(":")[0].removeprefix("line ")) for item in found]
    assert lines == [3, 4, 5, 6, 7, 7, 8, 10, 11, 12, 13, 14, 15, 16, 19], found
    assert bypassing_strings(NOT_BYPASSING) == []


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_no_page_string_bypasses_the_catalog(page: Path) -> None:
    assert bypassing_strings(page.read_text(encoding="utf-8")) == [], f"{page.name} shows text not from the catalog"


def catalog_keys_named_in(source: str) -> set[str]:
    """The string literals shaped like a catalog key of one of the sections ("chat.new_chat"); the text of an
    f-string that builds a key (f"lab.preset_{name}") is a piece of one, not a key."""
    shape = re.compile(rf"({'|'.join(SECTIONS)})(\.[a-z0-9_]+)+")
    tree = ast.parse(source)
    pieces = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in pieces
        and shape.fullmatch(node.value)
    }


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_key_a_page_names_is_in_the_catalog(page: Path) -> None:
    source = page.read_text(encoding="utf-8")
    looked_up = {
        node.args[0].value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "t"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    unknown = sorted((looked_up | catalog_keys_named_in(source)) - set(CATALOG[DEFAULT_LANGUAGE]))
    assert not unknown, f"{page.name} names keys the catalog does not have: {unknown}"


def test_every_chat_text_is_used_by_the_chat_page() -> None:
    from ovchat.i18n.chat import MESSAGES

    used = catalog_keys_named_in((ROOT / "chat_streamlit.py").read_text(encoding="utf-8"))
    unused = sorted(set(MESSAGES[DEFAULT_LANGUAGE]) - used)
    assert not unused, f"texts chat_streamlit.py never shows: {unused}"


def test_the_package_has_no_streamlit() -> None:
    """ovchat/ is the product without a UI: the pages call it, never the other way round."""
    for path in sorted((ROOT / "ovchat").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(name.split(".")[0] == "streamlit" for name in names), f"{path} imports Streamlit"


# ----- the browser's locale -----


@pytest.mark.parametrize(
    ("locale", "language"),
    [
        ("zh", "zh-CN"),
        ("zh-CN", "zh-CN"),
        ("zh-cn", "zh-CN"),
        ("zh-Hans-CN", "zh-CN"),
        ("zh_CN", "zh-CN"),
        ("zh_CN.UTF-8", "zh-CN"),
        ("zh-SG", "zh-CN"),
        # Traditional Chinese gets Simplified too: the only Chinese there is, and closer than English.
        ("zh-TW", "zh-CN"),
        ("zh-Hant", "zh-CN"),
        ("zh-HK", "zh-CN"),
        ("en", "en"),
        ("en-US", "en"),
        ("en-GB", "en"),
        ("fr-FR", "en"),
        ("ja-JP", "en"),
        ("zu", "en"),
        ("", "en"),
        (None, "en"),
    ],
)
def test_language_from_locale(locale: str | None, language: str) -> None:
    assert language_from_locale(locale) == language


# ----- the remembered language -----


def prefs_file() -> Path:
    return data_home() / PREFS_FILE


def test_the_chosen_language_is_remembered() -> None:
    assert remembered_language() is None and not prefs_file().exists()
    assert initial_language("zh-CN") == "zh-CN"  # nothing remembered: the browser's
    assert initial_language(None) == "en"
    assert remember_language("zh-CN")
    assert remembered_language() == "zh-CN"
    assert json.loads(prefs_file().read_text(encoding="utf-8")) == {"language": "zh-CN"}
    assert initial_language("en-US") == "zh-CN"  # a choice beats the browser
    assert remember_language("en")
    assert remembered_language() == "en"
    assert initial_language("zh-CN") == "en"
    assert [path.name for path in prefs_file().parent.iterdir()] == [PREFS_FILE]  # no temporary file left
    with pytest.raises(KeyError):
        remember_language("fr")


def test_other_preferences_are_kept() -> None:
    write_prefs(theme="dark")
    remember_language("zh-CN")
    assert read_prefs() == {"theme": "dark", "language": "zh-CN"}


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"[1, 2]", b'"zh-CN"', b'{"language": "fr"}', b'{"language": 7}', b"\xff\xfe\x00garbage"],
    ids=["broken", "empty", "list", "string", "unknown language", "number", "not utf-8"],
)
def test_a_malformed_prefs_file_is_ignored(content: bytes) -> None:
    prefs_file().parent.mkdir(parents=True, exist_ok=True)
    prefs_file().write_bytes(content)
    assert remembered_language() is None
    assert initial_language("zh-TW") == "zh-CN"
    assert initial_language(None) == "en"
    assert remember_language("zh-CN")  # and a choice replaces it
    assert remembered_language() == "zh-CN"


def test_a_data_folder_that_cannot_be_written_loses_only_the_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("OVCHAT_HOME", str(blocker / "home"))
    assert remember_language("zh-CN") is False
    assert remembered_language() is None
