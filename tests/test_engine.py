"""The engine on the tiny model: parity, cancel, errors, stop strings, threads, seeds, context, text safety."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from concurrently import at_once
from fakes import ScriptedBackend

from ovchat.engine import Engine, available_devices
from ovchat.engine.streaming import StopCutter
from ovchat.errors import OvchatError
from ovchat.settings import GenerationSettings

GREEDY = GenerationSettings(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0)
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def engine(tiny_irs: dict[str, Path]) -> Engine:
    return Engine.load(tiny_irs["fp16"], use_cache_dir=False, backend="optimum")


def test_stream_equals_plain_generate(engine: Engine) -> None:
    import torch

    prompt_ids = engine.encode(HELLO)
    plain = engine.backend.model.generate(
        input_ids=torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False, repetition_penalty=1.0
    )[0, len(prompt_ids) :].tolist()
    reply = engine.generate(HELLO, GREEDY)
    assert reply.stats.prompt_tokens == len(prompt_ids)
    assert reply.stats.new_tokens == len(plain)
    expected_text = engine.tokenizer.decode(plain, skip_special_tokens=True).replace("\ufffd", "")
    assert reply.text == expected_text
    assert reply.stats.finish_reason == ("eos" if plain[-1] in engine.eos_token_ids else "length")


def test_cancel_from_another_thread_keeps_the_text_so_far(engine: Engine) -> None:
    cancel = threading.Event()
    pieces = []
    final = None
    for chunk in engine.stream(HELLO, GREEDY.with_changes(max_new_tokens=400), cancel):
        if chunk.stats is None:
            pieces.append(chunk.text)
            threading.Thread(target=cancel.set).start()
        else:
            final = chunk
    assert final is not None and final.stats.finish_reason == "cancelled"
    assert "".join(pieces) and final.stats.new_tokens >= 1
    assert final.stats.new_tokens < 400


def test_an_error_in_generate_reaches_the_consumer(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_generate(*args: object, **kwargs: object) -> None:
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.backend.model, "generate", broken_generate)
    with pytest.raises(RuntimeError, match="device lost"):
        engine.generate(HELLO, GREEDY)


def test_stop_cutter_never_shows_a_stop_string_split_across_chunks() -> None:
    cutter = StopCutter(("User:",))
    shown = []
    stopped = False
    for piece in ["Sure. ", "Us", "e", "ful! ", "Us", "er", ":", " more"]:
        visible, stopped = cutter.feed(piece)
        shown.append(visible)
        if stopped:
            break
    assert stopped
    assert "".join(shown) == "Sure. Useful! "


def test_two_threads_streaming_at_once_get_their_own_replies(engine: Engine) -> None:
    prompts = {"a": [{"role": "user", "content": "Hello there"}], "b": [{"role": "user", "content": "def add(a, b):"}]}
    settings = GREEDY.with_changes(max_new_tokens=40)
    alone = {name: engine.generate(messages, settings) for name, messages in prompts.items()}
    assert alone["a"].text != alone["b"].text  # otherwise mixing could not be seen
    together = at_once(lambda name: list(engine.stream(prompts[name], settings)), prompts, 120)
    for name, chunks in together.items():
        final = chunks[-1]
        assert "".join(c.text for c in chunks[:-1]) == alone[name].text
        assert (final.stats.new_tokens, final.stats.finish_reason) == (
            alone[name].stats.new_tokens,
            alone[name].stats.finish_reason,
        )
    assert set(together) == {"a", "b"}


def test_same_seed_same_reply_and_other_seeds_differ(engine: Engine) -> None:
    sampled = GenerationSettings(max_new_tokens=24, temperature=1.0, top_p=1.0, top_k=0, seed=7)
    first = engine.generate(HELLO, sampled)
    again = engine.generate(HELLO, sampled)
    others = {engine.generate(HELLO, sampled.with_changes(seed=seed)).text for seed in (8, 9, 10)}
    assert first.text == again.text and first.stats.new_tokens == again.stats.new_tokens
    assert others - {first.text}, "three other seeds all gave the seed-7 reply: sampling ignores the seed"


def test_consumer_leaving_early_frees_the_engine(engine: Engine) -> None:
    stream = engine.stream(HELLO, GREEDY.with_changes(max_new_tokens=300))
    next(stream)
    stream.close()  # like a browser tab closed mid-reply
    reply = engine.generate(HELLO, GREEDY)
    assert reply.stats.new_tokens >= 1


def test_history_is_trimmed_to_fit_the_context(engine: Engine) -> None:
    long_turn = "The quick brown fox jumps over the lazy dog. " * 6
    history = []
    for index in range(12):
        history += [{"role": "user", "content": f"{index} {long_turn}"}, {"role": "assistant", "content": long_turn}]
    messages = [{"role": "system", "content": "Be brief."}, *history, {"role": "user", "content": "last question"}]
    settings = GREEDY.with_changes(max_new_tokens=100)
    assert len(engine.encode(messages)) + 100 > engine.context_length  # the test needs a chat that does not fit
    final = list(engine.stream(messages, settings))[-1]
    assert final.stats.trimmed_turns > 0
    assert final.stats.prompt_tokens + settings.max_new_tokens <= engine.context_length
    fitted = engine.fit(messages, settings)
    assert fitted.messages[0]["content"] == "Be brief." and fitted.messages[-1]["content"] == "last question"
    assert fitted.trimmed_turns == final.stats.trimmed_turns


def test_a_message_longer_than_the_context_is_an_error_not_a_truncation(engine: Engine) -> None:
    huge = [{"role": "user", "content": "hello " * engine.context_length}]
    with pytest.raises(OvchatError, match="too long"):
        engine.generate(huge, GREEDY)


def test_load_errors_name_what_is_wrong(tmp_path: Path, tiny_irs: dict[str, Path]) -> None:
    with pytest.raises(OvchatError, match="does not exist"):
        Engine.load(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_irs["int8"], broken)
    (broken / "openvino_model.bin").unlink()
    (broken / "config.json").unlink()
    with pytest.raises(OvchatError, match=r"missing openvino_model\.bin, config\.json"):
        Engine.load(broken)
    with pytest.raises(OvchatError, match="device NPU7 is not available here; available: CPU"):
        Engine.load(tiny_irs["int8"], device="NPU7")


def test_devices_list_the_cpu() -> None:
    devices = dict(available_devices())
    assert "CPU" in devices and devices["CPU"].strip()


# The rest drive the real Engine (tokenizer, detokenizer, stop cutter) with a scripted backend.


@pytest.fixture(scope="module")
def tokenizer(tiny_irs: dict[str, Path]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_irs["fp16"])


def scripted_engine(tokenizer, text: str, template: str = "auto", **backend_options: object) -> Engine:
    """The real Engine over a backend that replies ``text``, decoded as the optimum backend decodes it."""
    from ovchat.engine.backends.optimum import HfDetokenizer

    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    backend = ScriptedBackend(
        tokenizer, lambda: HfDetokenizer(tokenizer), ids, eos_id=tokenizer.eos_token_id, **backend_options
    )
    return Engine(backend, Path("scripted"), "CPU", template=template)


def test_cjk_and_emoji_stream_without_broken_characters(tokenizer) -> None:
    text = "数学是被发明还是被发现的？ 日本語のテキスト 😀👍🏽 done"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    split_chars = [i for i in ids if "\ufffd" in tokenizer.decode([i])]
    assert split_chars, "the tokenizer must split some characters across tokens for this test to mean anything"
    chunks = list(scripted_engine(tokenizer, text).stream(HELLO, GREEDY.with_changes(max_new_tokens=200)))
    assert all("\ufffd" not in chunk.text for chunk in chunks)
    assert "".join(chunk.text for chunk in chunks) == text
    assert chunks[-1].stats.finish_reason == "eos" and chunks[-1].stats.new_tokens == len(ids) + 1


def test_a_reply_cut_inside_a_character_shows_no_broken_text(tokenizer) -> None:
    text = "😀😀😀😀"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    cut = next(n for n in range(1, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd"))
    reply = scripted_engine(tokenizer, text).generate(HELLO, GREEDY.with_changes(max_new_tokens=cut))
    assert reply.stats.finish_reason == "length" and reply.stats.new_tokens == cut
    assert "\ufffd" not in reply.text and text.startswith(reply.text)


def test_fallback_template_stops_at_its_turn_marker(tokenizer) -> None:
    engine = scripted_engine(tokenizer, "Hi there!\nUser: and now I speak for you", template="plain")
    reply = engine.generate(HELLO, GREEDY.with_changes(max_new_tokens=200))
    assert (reply.text, reply.stats.finish_reason) == ("Hi there!", "stop")
    prompt = tokenizer.decode(engine.backend.prompts[0])
    assert prompt == "User: Hello there\nAssistant:"


def test_a_hung_generate_ends_with_an_error_instead_of_hanging(tokenizer) -> None:
    release = threading.Event()
    engine = scripted_engine(tokenizer, "never shown", block=release)
    engine.stall_timeout_s = 0.5
    try:
        with pytest.raises(OvchatError, match="produced nothing"):
            engine.generate(HELLO, GREEDY)
    finally:
        release.set()


# The openvino-genai backend: the same stream, cancel, stop and metrics over a C++ generation loop.


@pytest.fixture(scope="module")
def genai_engine(tiny_irs: dict[str, Path]) -> Engine:
    return Engine.load(tiny_irs["fp16"], use_cache_dir=False, backend="genai")


@pytest.mark.parametrize("repetition_penalty", [1.0, 1.3])
def test_genai_backend_gives_the_optimum_backends_greedy_reply(
    engine: Engine, genai_engine: Engine, repetition_penalty: float
) -> None:
    settings = GREEDY.with_changes(max_new_tokens=40, repetition_penalty=repetition_penalty)
    for messages in (HELLO, [{"role": "user", "content": "def add(a, b):"}]):
        expected, got = engine.generate(messages, settings), genai_engine.generate(messages, settings)
        assert (got.text, got.stats.finish_reason) == (expected.text, expected.stats.finish_reason)
        assert got.stats.new_tokens == expected.stats.new_tokens
        assert got.stats.prompt_tokens == expected.stats.prompt_tokens and got.stats.ttft_s and got.stats.ttft_s > 0


def test_genai_backend_cancel_stop_and_seed(genai_engine: Engine) -> None:
    cancel = threading.Event()
    chunks = []
    for chunk in genai_engine.stream(HELLO, GREEDY.with_changes(max_new_tokens=400), cancel):
        chunks.append(chunk)
        cancel.set()
    assert chunks[-1].stats.finish_reason == "cancelled" and chunks[-1].stats.new_tokens < 400
    full = genai_engine.generate(HELLO, GREEDY.with_changes(max_new_tokens=30)).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assume_visible = full[: full.index(stop)]
    stopped = genai_engine.generate(HELLO, GREEDY.with_changes(max_new_tokens=30, stop=(stop,)))
    assert (stopped.text, stopped.stats.finish_reason) == (assume_visible, "stop")
    sampled = GenerationSettings(max_new_tokens=24, temperature=1.0, top_p=1.0, top_k=0, seed=7)
    assert genai_engine.generate(HELLO, sampled).text == genai_engine.generate(HELLO, sampled).text
    unseeded = {genai_engine.generate(HELLO, sampled.with_changes(seed=None)).text for _ in range(3)}
    assert len(unseeded) > 1, "three unseeded samples were identical: regenerate would repeat itself"


def test_unknown_backend_is_an_error(tiny_irs: dict[str, Path]) -> None:
    with pytest.raises(OvchatError, match="unknown backend 'vllm'"):
        Engine.load(tiny_irs["fp16"], backend="vllm")
