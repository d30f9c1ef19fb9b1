"""The engine's stream on the tiny model: parity with plain generate, cancel, errors, stop strings."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ovchat.engine import Engine, _StopCutter
from ovchat.settings import GenerationSettings

GREEDY = GenerationSettings(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0)
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def engine(tiny_irs: dict[str, Path]) -> Engine:
    return Engine.load(tiny_irs["fp16"], use_cache_dir=False)


def test_stream_equals_plain_generate(engine: Engine) -> None:
    import torch

    prompt_ids = engine.encode(HELLO)
    plain = engine.model.generate(
        input_ids=torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False, repetition_penalty=1.0
    )[0, len(prompt_ids) :].tolist()
    reply = engine.generate(HELLO, GREEDY)
    assert reply.prompt_tokens == len(prompt_ids)
    assert reply.new_tokens == len(plain)
    expected_text = engine.tokenizer.decode(plain, skip_special_tokens=True).replace("\ufffd", "")
    assert reply.text == expected_text
    assert reply.finish_reason == ("eos" if plain[-1] in engine.eos_token_ids else "length")


def test_cancel_from_another_thread_keeps_the_text_so_far(engine: Engine) -> None:
    cancel = threading.Event()
    pieces = []
    final = None
    for chunk in engine.stream(HELLO, GREEDY.with_changes(max_new_tokens=2000), cancel):
        if chunk.finish_reason is None:
            pieces.append(chunk.text)
            threading.Thread(target=cancel.set).start()
        else:
            final = chunk
    assert final is not None and final.finish_reason == "cancelled"
    assert "".join(pieces) and final.new_tokens >= 1
    assert final.new_tokens < 2000


def test_an_error_in_generate_reaches_the_consumer(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_generate(*args: object, **kwargs: object) -> None:
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.model, "generate", broken_generate)
    with pytest.raises(RuntimeError, match="device lost"):
        engine.generate(HELLO, GREEDY)


def test_stop_cutter_never_shows_a_stop_string_split_across_chunks() -> None:
    cutter = _StopCutter(("User:",))
    shown = []
    stopped = False
    for piece in ["Sure. ", "Us", "e", "ful! ", "Us", "er", ":", " more"]:
        visible, stopped = cutter.feed(piece)
        shown.append(visible)
        if stopped:
            break
    assert stopped
    assert "".join(shown) == "Sure. Useful! "
