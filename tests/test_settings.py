"""GenerationSettings: validation of every field, immutability, changes and the kwargs handed to ``generate``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GenerationConfig

from ovchat.errors import OvchatError
from ovchat.settings import GenerationSettings

FIELDS = [field.name for field in dataclasses.fields(GenerationSettings)]
SAMPLING_PARAMS = ("temperature", "top_p", "top_k")


def test_defaults_are_valid_and_sample() -> None:
    defaults = GenerationSettings()
    assert defaults.stop == ()
    assert defaults.seed is None
    assert not defaults.greedy
    # The defaults themselves satisfy the constructor's checks when given explicitly.
    assert GenerationSettings(**{name: getattr(defaults, name) for name in FIELDS}) == defaults


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_new_tokens", 0),
        ("max_new_tokens", -1),
        ("max_new_tokens", 32769),
        ("max_new_tokens", 1.0),
        ("max_new_tokens", 512.0),
        ("max_new_tokens", "512"),
        ("max_new_tokens", None),
        ("temperature", -0.01),
        ("temperature", 5.01),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("top_p", 0.0),
        ("top_p", -0.5),
        ("top_p", 1.01),
        ("top_p", math.nan),
        ("top_k", -1),
        ("top_k", 10001),
        ("top_k", 40.0),
        ("top_k", "40"),
        ("top_k", None),
        ("repetition_penalty", 0.49),
        ("repetition_penalty", 3.01),
        ("repetition_penalty", math.nan),
        ("seed", -1),
        ("seed", 2**32),
        ("seed", 1.5),
        ("seed", "7"),
    ],
)
def test_out_of_range_or_wrong_type_is_rejected_naming_the_field(name: str, value: Any) -> None:
    with pytest.raises(OvchatError, match=name):
        GenerationSettings(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_new_tokens", 1),
        ("max_new_tokens", 32768),
        ("temperature", 0.0),
        ("temperature", 0),
        ("temperature", 5.0),
        ("temperature", 5),
        ("top_p", 1.0),
        ("top_p", 1e-9),
        ("top_k", 0),
        ("top_k", 10000),
        ("repetition_penalty", 0.5),
        ("repetition_penalty", 3.0),
        ("seed", 0),
        ("seed", 2**32 - 1),
        ("seed", None),
    ],
)
def test_in_range_edge_values_are_accepted(name: str, value: Any) -> None:
    assert getattr(GenerationSettings(**{name: value}), name) == value


@pytest.mark.parametrize("name", ["max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed"])
def test_a_bool_is_not_a_number(name: str) -> None:
    with pytest.raises(OvchatError, match=name):
        GenerationSettings(**{name: True})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", "0.7"),
        ("temperature", None),
        ("top_p", "0.9"),
        ("top_p", None),
        ("repetition_penalty", "1.1"),
        ("repetition_penalty", None),
        ("stop", None),
        ("stop", 5),
    ],
)
def test_a_wrong_type_raises_ovchat_error_not_type_error(name: str, value: Any) -> None:
    with pytest.raises(OvchatError, match=name):
        GenerationSettings(**{name: value})


def test_settings_are_frozen() -> None:
    settings_ = GenerationSettings()
    for name in FIELDS:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings_, name, getattr(settings_, name))
    assert settings_ == GenerationSettings()


def test_settings_are_hashable_and_equal_by_value() -> None:
    first = GenerationSettings(temperature=0.2, stop=["\n\n", "END"])
    second = GenerationSettings(temperature=0.2, stop=("\n\n", "END"))
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second, GenerationSettings()}) == 2
    assert {first: "cached"}[second] == "cached"


def test_stop_list_becomes_a_tuple_in_order() -> None:
    settings_ = GenerationSettings(stop=["\nUser:", "###", "\nUser:"])
    assert isinstance(settings_.stop, tuple)
    assert settings_.stop == ("\nUser:", "###", "\nUser:")


@pytest.mark.parametrize("stop", [[""], ["ok", ""], [1], ["ok", None], [b"bytes"]])
def test_empty_or_non_text_stop_strings_are_rejected(stop: list[Any]) -> None:
    with pytest.raises(OvchatError, match="stop"):
        GenerationSettings(stop=stop)


def test_a_single_stop_string_is_not_split_into_characters() -> None:
    try:
        settings_ = GenerationSettings(stop="User:")  # type: ignore[arg-type]
    except OvchatError:
        return  # rejecting a bare string would be fine too
    assert settings_.stop == ("User:",)


def test_with_changes_returns_a_new_validated_object() -> None:
    original = GenerationSettings()
    changed = original.with_changes(temperature=0.0, max_new_tokens=64, stop=["</s>"])
    assert changed is not original
    assert (changed.temperature, changed.max_new_tokens, changed.stop) == (0.0, 64, ("</s>",))
    assert changed.greedy
    # Everything else is carried over and the original is untouched.
    assert changed.top_p == original.top_p and changed.top_k == original.top_k
    assert original == GenerationSettings()


@pytest.mark.parametrize(
    "changes",
    [{"max_new_tokens": 0}, {"temperature": 6.0}, {"top_p": 0.0}, {"top_k": -1}, {"seed": -1}, {"stop": [""]}],
)
def test_with_changes_rejects_invalid_changes(changes: dict[str, Any]) -> None:
    original = GenerationSettings()
    (name,) = changes
    with pytest.raises(OvchatError, match=name):
        original.with_changes(**changes)
    assert original == GenerationSettings()


def test_with_changes_rejects_unknown_fields() -> None:
    with pytest.raises(TypeError, match="colour"):
        GenerationSettings().with_changes(colour="blue")


def test_greedy_kwargs_have_no_sampling_params() -> None:
    kwargs = GenerationSettings(temperature=0.0, top_p=0.5, top_k=7, max_new_tokens=33, stop=["x"]).to_generate_kwargs()
    assert kwargs["do_sample"] is False
    for name in SAMPLING_PARAMS:
        assert kwargs.get(name) is None, name
    assert kwargs["max_new_tokens"] == 33
    assert kwargs["repetition_penalty"] == GenerationSettings().repetition_penalty


def test_sampling_kwargs_carry_the_sampling_params() -> None:
    settings_ = GenerationSettings(temperature=1.3, top_p=0.8, top_k=0, repetition_penalty=1.0, max_new_tokens=7)
    kwargs = settings_.to_generate_kwargs()
    assert kwargs["do_sample"] is True
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["top_k"]) == (1.3, 0.8, 0)
    assert (kwargs["max_new_tokens"], kwargs["repetition_penalty"]) == (7, 1.0)


valid_settings = st.builds(
    GenerationSettings,
    max_new_tokens=st.integers(1, 32768),
    temperature=st.one_of(st.just(0.0), st.floats(0.0, 5.0)),
    top_p=st.floats(0.0, 1.0, exclude_min=True),
    top_k=st.integers(0, 10000),
    repetition_penalty=st.floats(0.5, 3.0),
    seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    stop=st.lists(st.text(min_size=1, max_size=5), max_size=3),
)


@settings(max_examples=100, deadline=None)
@given(valid_settings)
def test_generate_kwargs_match_the_settings(settings_: GenerationSettings) -> None:
    kwargs = settings_.to_generate_kwargs()
    assert kwargs["max_new_tokens"] == settings_.max_new_tokens
    assert kwargs["repetition_penalty"] == settings_.repetition_penalty
    assert kwargs["do_sample"] is (settings_.temperature != 0)
    for name in SAMPLING_PARAMS:
        assert kwargs.get(name) == (None if settings_.greedy else getattr(settings_, name))
    # Stop strings are the engine's job: generate never sees them, under any name.
    assert not any("stop" in key for key in kwargs)
    # transformers itself finds nothing inconsistent in them (e.g. a temperature with do_sample=False).
    GenerationConfig(**kwargs).validate(strict=True)
