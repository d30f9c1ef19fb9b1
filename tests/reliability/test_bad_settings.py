"""Bad sampling settings: every GenerationSettings field out of range and of the wrong type, from the library and
from `ovchat ask`/`ovchat chat`'s flags, and the page's saved presets and preferences when their files are
malformed. Each ends in one line naming the setting, or (for the page's files) in the bad entry being left out, and
the good settings still work afterwards."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, ovchat

from ovchat import i18n
from ovchat.engine import Engine
from ovchat.errors import OvchatError
from ovchat.lab import presets
from ovchat.settings import GenerationSettings

NAN, INF = math.nan, math.inf
DEEP_JSON = "[" * 100_000  # Python's json recurses once per level, so this raises RecursionError unless caught

# (field, value, the message's words); one row per bad value.
LIBRARY_CASES = [
    ("max_new_tokens", 0, "max_new_tokens must be an integer in [1, 32768], not 0"),
    ("max_new_tokens", -5, "max_new_tokens must be an integer in [1, 32768], not -5"),
    ("max_new_tokens", 32769, "max_new_tokens must be an integer in [1, 32768], not 32769"),
    ("max_new_tokens", 1.5, "max_new_tokens must be an integer in [1, 32768], not 1.5"),
    ("max_new_tokens", "100", "max_new_tokens must be an integer in [1, 32768], not '100'"),
    ("max_new_tokens", True, "max_new_tokens must be an integer in [1, 32768], not True"),
    ("max_new_tokens", None, "max_new_tokens must be an integer in [1, 32768], not None"),
    ("temperature", -0.1, "temperature must be a number in [0, 5], not -0.1"),
    ("temperature", 5.01, "temperature must be a number in [0, 5], not 5.01"),
    ("temperature", NAN, "temperature must be a number in [0, 5], not nan"),
    ("temperature", INF, "temperature must be a number in [0, 5], not inf"),
    ("temperature", "hot", "temperature must be a number in [0, 5], not 'hot'"),
    ("temperature", True, "temperature must be a number in [0, 5], not True"),
    ("temperature", None, "temperature must be a number in [0, 5], not None"),
    ("top_p", 0.0, "top_p must be a number in (0, 1], not 0.0"),
    ("top_p", -1, "top_p must be a number in (0, 1], not -1"),
    ("top_p", 1.01, "top_p must be a number in (0, 1], not 1.01"),
    ("top_p", NAN, "top_p must be a number in (0, 1], not nan"),
    ("top_p", "0.9", "top_p must be a number in (0, 1], not '0.9'"),
    ("top_k", -1, "top_k must be an integer in [0, 10000], not -1"),
    ("top_k", 10001, "top_k must be an integer in [0, 10000], not 10001"),
    ("top_k", 2.5, "top_k must be an integer in [0, 10000], not 2.5"),
    ("top_k", "40", "top_k must be an integer in [0, 10000], not '40'"),
    ("top_k", False, "top_k must be an integer in [0, 10000], not False"),
    ("repetition_penalty", 0.49, "repetition_penalty must be a number in [0.5, 3], not 0.49"),
    ("repetition_penalty", 3.5, "repetition_penalty must be a number in [0.5, 3], not 3.5"),
    ("repetition_penalty", -INF, "repetition_penalty must be a number in [0.5, 3], not -inf"),
    ("repetition_penalty", "1.1", "repetition_penalty must be a number in [0.5, 3], not '1.1'"),
    ("frequency_penalty", -2.1, "frequency_penalty must be a number in [-2, 2], not -2.1"),
    ("frequency_penalty", 2.1, "frequency_penalty must be a number in [-2, 2], not 2.1"),
    ("frequency_penalty", INF, "frequency_penalty must be a number in [-2, 2], not inf"),
    ("frequency_penalty", [0.5], "frequency_penalty must be a number in [-2, 2], not [0.5]"),
    ("presence_penalty", -2.5, "presence_penalty must be a number in [-2, 2], not -2.5"),
    ("presence_penalty", 2.5, "presence_penalty must be a number in [-2, 2], not 2.5"),
    ("presence_penalty", NAN, "presence_penalty must be a number in [-2, 2], not nan"),
    ("presence_penalty", None, "presence_penalty must be a number in [-2, 2], not None"),
    ("seed", -1, "seed must be an integer in [0, 4294967295], not -1"),
    ("seed", 2**32, "seed must be an integer in [0, 4294967295], not 4294967296"),
    ("seed", 1.0, "seed must be an integer in [0, 4294967295], not 1.0"),
    ("seed", "42", "seed must be an integer in [0, 4294967295], not '42'"),
    ("seed", True, "seed must be an integer in [0, 4294967295], not True"),
    ("stop", "", "stop strings must be a list of non-empty texts"),
    ("stop", [""], "stop strings must be a list of non-empty texts"),
    ("stop", ["ok", 1], "stop strings must be a list of non-empty texts"),
    ("stop", [None], "stop strings must be a list of non-empty texts"),
    ("stop", 5, "stop strings must be a list of non-empty texts"),
    ("stop", {"a"}, "stop strings must be a list of non-empty texts"),
    ("stop", None, "stop strings must be a list of non-empty texts"),
    ("logprobs", -1, "logprobs must be an integer in [0, 20], not -1"),
    ("logprobs", 21, "logprobs must be an integer in [0, 20], not 21"),
    ("logprobs", 2.0, "logprobs must be an integer in [0, 20], not 2.0"),
    ("logprobs", True, "logprobs must be an integer in [0, 20], not True"),
]


@pytest.mark.parametrize(("field", "value", "message"), LIBRARY_CASES, ids=[f"{f}={v!r}" for f, v, _ in LIBRARY_CASES])
def test_a_bad_setting_is_refused_by_name(field: str, value: object, message: str) -> None:
    with pytest.raises(OvchatError) as built:
        GenerationSettings(**{field: value})
    base = GenerationSettings(temperature=0.3)
    with pytest.raises(OvchatError) as changed:
        base.with_changes(**{field: value})
    for error in (built.value, changed.value):
        assert str(error) == message and "\n" not in str(error)
    assert base == GenerationSettings(temperature=0.3)  # the settings it was to change are as they were


# The bounds themselves are allowed: the checks refuse only what is out of range.
EDGE_VALUES = [
    {"max_new_tokens": 1}, {"max_new_tokens": 32768}, {"temperature": 0}, {"temperature": 5.0}, {"top_p": 1e-9},
    {"top_p": 1}, {"top_k": 0}, {"top_k": 10000}, {"repetition_penalty": 0.5}, {"repetition_penalty": 3},
    {"frequency_penalty": -2}, {"presence_penalty": 2.0}, {"seed": 0}, {"seed": 2**32 - 1},
    {"stop": "x"}, {"stop": ["a", "b"]}, {"logprobs": 0}, {"logprobs": 20},
]  # fmt: skip


@pytest.mark.parametrize("changes", EDGE_VALUES, ids=[f"{k}={v!r}" for c in EDGE_VALUES for k, v in c.items()])
def test_a_setting_at_its_bound_is_accepted(changes: dict[str, object]) -> None:
    [(field, value)] = changes.items()
    expected = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else value
    assert getattr(GenerationSettings().with_changes(**changes), field) == expected


@pytest.mark.parametrize(
    ("max_new_tokens", "message"),
    [
        (512, "max new tokens (512) must be below the model's context length (512)"),
        (32768, "max new tokens (32768) must be below the model's context length (512)"),
    ],
    ids=["context", "largest"],
)
def test_more_new_tokens_than_the_context_is_refused_before_generating(
    tiny_engine: Engine, max_new_tokens: int, message: str
) -> None:
    settings = GenerationSettings(max_new_tokens=max_new_tokens)  # valid settings; too many for this model
    with pytest.raises(OvchatError) as refused:
        list(tiny_engine.stream([{"role": "user", "content": "Hello"}], settings))
    assert str(refused.value) == message
    reply = tiny_engine.generate([{"role": "user", "content": "Hello"}], settings.with_changes(max_new_tokens=4))
    assert 1 <= reply.stats.new_tokens <= 4  # the engine still answers


# (command line after `ovchat`, the message's words). The flags are parsed and checked before any model loads.
CLI_CASES = [
    (["ask", "hi", "--max-new-tokens", "0"], "max_new_tokens must be an integer in [1, 32768], not 0"),
    (["ask", "hi", "--max-new-tokens", "ten"], "argument --max-new-tokens: invalid int value: 'ten'"),
    (["ask", "hi", "--temperature", "nan"], "temperature must be a number in [0, 5], not nan"),
    (["ask", "hi", "--temperature", "warm"], "argument --temperature: invalid float value: 'warm'"),
    (["ask", "hi", "--top-p", "0"], "top_p must be a number in (0, 1], not 0.0"),
    (["ask", "hi", "--top-k", "10001"], "top_k must be an integer in [0, 10000], not 10001"),
    (["ask", "hi", "--top-k", "2.5"], "argument --top-k: invalid int value: '2.5'"),
    (["ask", "hi", "--repetition-penalty", "3.5"], "repetition_penalty must be a number in [0.5, 3], not 3.5"),
    (["ask", "hi", "--seed", "4294967296"], "seed must be an integer in [0, 4294967295], not 4294967296"),
    (["ask", "hi", "--stop", ""], "stop strings must be a list of non-empty texts"),
    (["ask", "hi", "--logprobs", "21"], "logprobs must be an integer in [0, 20], not 21"),
    (["chat", "--temperature", "inf"], "temperature must be a number in [0, 5], not inf"),
    (["chat", "--seed", "-3"], "seed must be an integer in [0, 4294967295], not -3"),
    (["chat", "--max-new-tokens", "40000"], "max_new_tokens must be an integer in [1, 32768], not 40000"),
]


@pytest.mark.parametrize(("args", "message"), CLI_CASES, ids=[" ".join(args) for args, _ in CLI_CASES])
def test_a_bad_flag_gets_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    assert_one_line_error(ovchat(*args), message)


def test_too_many_new_tokens_for_the_model_from_the_cli(tiny_irs: dict[str, Path]) -> None:
    result = ovchat("ask", "hi", "--model", str(tiny_irs["int8"]), "--max-new-tokens", "600")
    assert_one_line_error(result, "max new tokens (600) must be below the model's context length (512)")
    assert result.stdout == ""


# ----- the page's saved presets ($OVCHAT_HOME/presets.json) -----

GOOD_PRESET = {"temperature": 0.4, "top_p": 0.7, "top_k": 30, "repetition_penalty": 1.2}
# (what presets.json holds, the saved presets expected to load). A malformed file is ignored, a bad entry skipped.
PRESET_FILES: list[tuple[str, bytes | str, set[str]]] = [
    ("not-json", '{"Mine": {"temperature": 0.5}', set()),
    ("not-utf8", b"\xff\xfe{}", set()),
    ("deeply-nested", DEEP_JSON, set()),
    ("a-list", json.dumps([GOOD_PRESET]), set()),
    ("a-number", "42", set()),
    ("entry-not-object", json.dumps({"x": 5, "Mine": GOOD_PRESET}), {"Mine"}),
    ("entry-a-string", json.dumps({"x": "hot", "Mine": GOOD_PRESET}), {"Mine"}),
    ("entry-a-list", json.dumps({"x": [0.5], "Mine": GOOD_PRESET}), {"Mine"}),
    ("temperature-beyond-settings", json.dumps({"x": {"temperature": 99}, "Mine": GOOD_PRESET}), {"Mine"}),
    # Valid settings, but beyond the page's sliders, which Streamlit would refuse ("greater than the max_value").
    ("temperature-beyond-slider", json.dumps({"x": {"temperature": 4.0}, "Mine": GOOD_PRESET}), {"Mine"}),
    ("top-p-below-slider", json.dumps({"x": {"top_p": 0.01}, "Mine": GOOD_PRESET}), {"Mine"}),
    ("top-k-beyond-slider", json.dumps({"x": {"top_k": 500}, "Mine": GOOD_PRESET}), {"Mine"}),
    ("penalty-below-slider", json.dumps({"x": {"repetition_penalty": 0.8}, "Mine": GOOD_PRESET}), {"Mine"}),
    ("top-k-a-float", json.dumps({"x": {"top_k": 5.5}, "Mine": GOOD_PRESET}), {"Mine"}),
    ("top-k-a-string", json.dumps({"x": {"top_k": "5"}, "Mine": GOOD_PRESET}), {"Mine"}),
    ("top-k-true", json.dumps({"x": {"top_k": True}, "Mine": GOOD_PRESET}), {"Mine"}),
    ("temperature-nan", '{"x": {"temperature": NaN}, "Mine": ' + json.dumps(GOOD_PRESET) + "}", {"Mine"}),
    ("temperature-null", json.dumps({"x": {"temperature": None}, "Mine": GOOD_PRESET}), {"Mine"}),
    ("a-built-in-name", json.dumps({"Precise": {"temperature": 2.0}, "Mine": GOOD_PRESET}), {"Mine"}),
    ("name-too-long", json.dumps({"n" * 41: GOOD_PRESET, "Mine": GOOD_PRESET}), {"Mine"}),
    ("name-blank", json.dumps({"  ": GOOD_PRESET, "Mine": GOOD_PRESET}), {"Mine"}),
    ("unknown-fields-only", json.dumps({"Mine": {"warmth": 3}}), {"Mine"}),  # the defaults: harmless
]


@pytest.mark.parametrize(("content", "expected"), [row[1:] for row in PRESET_FILES], ids=[r[0] for r in PRESET_FILES])
def test_a_malformed_presets_file_never_stops_the_page(
    isolated_data_home: Path, content: bytes | str, expected: set[str]
) -> None:
    path = presets.presets_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    loaded = presets.load_presets()
    assert {name: loaded[name] for name in presets.BUILT_IN_PRESETS} == presets.BUILT_IN_PRESETS
    assert set(loaded) - set(presets.BUILT_IN_PRESETS) == expected
    for values in loaded.values():  # whatever loads fits the page's sliders, floats as floats
        for field, (low, high) in presets.PRESET_RANGES.items():
            assert low <= values[field] <= high and isinstance(values[field], int if field == "top_k" else float)
    # Saving a preset still works, and loses nothing: the file's other entries are kept as they were, and a file
    # that is not a JSON object at all is moved aside, not overwritten.
    presets.save_preset("Later", GenerationSettings(temperature=0.9))
    assert presets.load_presets()["Later"]["temperature"] == 0.9
    try:
        before = json.loads(content)
    except (ValueError, RecursionError):
        before = None
    after = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(before, dict):
        assert {key: value for key, value in after.items() if key != "Later"} == json.loads(content)
    else:
        assert (path.parent / "presets.json.broken").read_bytes() == (
            content if isinstance(content, bytes) else content.encode("utf-8")
        )


def test_a_preset_the_sliders_cannot_show_is_not_saved(isolated_data_home: Path) -> None:
    with pytest.raises(OvchatError, match=r"^a preset's temperature must be in \[0, 2\], the page's range, not 4.0$"):
        presets.save_preset("Hot", GenerationSettings(temperature=4.0))
    assert not presets.presets_path().exists()


def test_a_presets_path_that_is_a_folder_is_ignored(isolated_data_home: Path) -> None:
    presets.presets_path().mkdir(parents=True)
    assert presets.load_presets() == presets.BUILT_IN_PRESETS


# ----- the page's preferences ($OVCHAT_HOME/page.json) -----

# (what page.json holds, the language remembered). Unreadable means no choice was made.
PREFS_FILES: list[tuple[str, bytes | str, str | None]] = [
    ("not-json", '{"language": "zh-CN"', None),
    ("not-utf8", b'{"language": "\xff"}', None),
    ("deeply-nested", DEEP_JSON, None),
    ("a-list", '["zh-CN"]', None),
    ("language-a-number", '{"language": 5}', None),
    ("language-unknown", '{"language": "fr"}', None),
    ("language-null", '{"language": null}', None),
    ("language-a-list", '{"language": ["zh-CN"]}', None),
    ("valid", '{"language": "zh-CN", "other": 1}', "zh-CN"),
]


@pytest.mark.parametrize(("content", "language"), [row[1:] for row in PREFS_FILES], ids=[r[0] for r in PREFS_FILES])
def test_malformed_page_preferences_mean_no_choice(
    isolated_data_home: Path, content: bytes | str, language: str | None
) -> None:
    path = i18n.prefs_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    assert i18n.remembered_language() == language
    assert i18n.initial_language("en-US") == (language or "en")
    assert i18n.remember_language("zh-CN")  # choosing again works, and keeps the other preferences
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["language"] == "zh-CN" and i18n.remembered_language() == "zh-CN"
    if language is not None:
        assert saved["other"] == 1
