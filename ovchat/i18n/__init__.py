"""The pages' texts in English and Simplified Chinese, and the language a page remembers.

One catalog, split into sections by page area so that two people can add texts without editing
the same file: each section (``ovchat/i18n/chat.py`` for chat_streamlit.py, ``ovchat/i18n/lab.py``
for the lab page) defines ``MESSAGES = {"en": {key: text}, "zh-CN": {key: text}}``, and this module
merges them into :data:`CATALOG`. A section not written yet is skipped; a key defined in two
sections is an error. Keys start with their section's name (``chat.new_chat``).

A text is a :meth:`str.format` template: ``translate("zh-CN", "chat.load_failed", detail=...)``.
Tests check that every key has a text in every language, with the same ``{placeholders}``.

The chosen language is kept in ``$OVCHAT_HOME/page.json`` (``{"language": "zh-CN"}``), written
atomically and read tolerantly: a missing or malformed file means no choice was made.
No Streamlit here: the pages call these functions.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from ovchat.paths import data_home, write_text_atomically

LANGUAGES = {"en": "English", "zh-CN": "简体中文"}  # code -> its name in that language, as the picker shows it
DEFAULT_LANGUAGE = "en"
SECTIONS = ("chat", "lab", "reply")  # modules of this package, each with a MESSAGES dict
PREFS_FILE = "page.json"  # under the data folder


def _merge_sections() -> dict[str, dict[str, str]]:
    catalog: dict[str, dict[str, str]] = {language: {} for language in LANGUAGES}
    owners: dict[str, str] = {}
    for section in SECTIONS:
        name = f"{__name__}.{section}"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # the section exists but imports something missing: a real error
                raise
            continue  # a section not written yet
        messages: dict[str, dict[str, str]] = module.MESSAGES
        unknown = set(messages) - set(LANGUAGES)
        if unknown:
            raise ValueError(f"{name} has texts in unknown languages: {sorted(unknown)}")
        for key in {key for texts in messages.values() for key in texts}:
            if key in owners:
                raise ValueError(f"message key {key!r} is defined in both {owners[key]} and {section}")
            owners[key] = section
        for language, texts in messages.items():
            catalog[language].update(texts)
    return catalog


CATALOG: dict[str, dict[str, str]] = _merge_sections()  # language -> key -> text


def translate(language: str, key: str, **params: object) -> str:
    """The text of ``key`` in ``language``, formatted with ``params``.

    An unknown language or key raises KeyError: it is a bug in a page, not something a user typed.
    """
    try:
        text = CATALOG[language][key]
    except KeyError:
        raise KeyError(f"no text for {key!r} in language {language!r}") from None
    return text.format(**params)


def language_from_locale(locale: str | None) -> str:
    """The page's language for a browser's locale (``navigator.language``, such as "zh-CN" or "en-US").

    Any Chinese locale gives Simplified Chinese: "zh", "zh-CN", "zh-Hans-CN", "zh_CN.UTF-8", and also
    Traditional ones ("zh-TW", "zh-Hant", "zh-HK"), since Simplified Chinese is the only Chinese the
    catalog has and is closer to those readers than English. Everything else, or none, gives English.
    """
    if not locale:
        return DEFAULT_LANGUAGE
    primary = locale.strip().replace("_", "-").split("-")[0].lower()
    return "zh-CN" if primary == "zh" else DEFAULT_LANGUAGE


# ----- the page's preferences: $OVCHAT_HOME/page.json -----


def prefs_path() -> Path:
    return data_home() / PREFS_FILE


def read_prefs() -> dict[str, object]:
    """The saved page preferences; empty when the file is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(prefs_path().read_text(encoding="utf-8"))
    # ValueError covers malformed JSON and bytes that are not UTF-8; RecursionError, JSON nested too deeply.
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def write_prefs(**updates: object) -> None:
    """Save ``updates`` over the saved preferences: a temporary file in the same folder, then renamed
    into place, so a reader never sees half a file."""
    write_text_atomically(prefs_path(), json.dumps({**read_prefs(), **updates}, ensure_ascii=False, indent=2))


def remembered_language() -> str | None:
    """The language last chosen on a page, if any (and still one of LANGUAGES)."""
    language = read_prefs().get("language")
    return language if isinstance(language, str) and language in LANGUAGES else None


def remember_language(language: str) -> bool:
    """Save the chosen language; False when the data folder cannot be written (the page goes on without)."""
    if language not in LANGUAGES:
        raise KeyError(f"unknown language {language!r}")
    try:
        write_prefs(language=language)
    except OSError:
        return False
    return True


def initial_language(locale: str | None) -> str:
    """A new page session's language: the remembered choice, else the browser's locale, else English."""
    return remembered_language() or language_from_locale(locale)
