"""Prompt lookup and draft-model decoding: the same greedy replies as plain decoding, on the tiny model and the
real default model and on both openvino-genai loops; their bad options as one line; the CLI flags reaching the
engine; and the shape of ``ovchat bench --decoding``'s report on a tiny run (no timing is ever asserted)."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

import pytest
from test_cli import assert_one_line_error, ovchat

from ovchat import Engine, GenerationSettings, OvchatError
from ovchat.bench.decoding import (
    PROMPT_KINDS,
    DecodingPlan,
    PromptKind,
    accepted_share,
    fresh_chat,
    run_decoding_bench,
    summarize_decoding,
)
from ovchat.engine import Decoding
from ovchat.engine.decoding import DEFAULT_ASSISTANT_TOKENS, DEFAULT_NGRAM_SIZE, decoding_from_options

GREEDY = GenerationSettings(max_new_tokens=48, temperature=0.0, repetition_penalty=1.0)
LOOP_BACKENDS = ["batched", "genai"]
# A reply that copies from its prompt, so that prompt lookup's guesses are taken (the real model repeats the
# sentence; the tiny random model's babble copies less, but any greedy mismatch would show).
COPY_PROMPT = (
    "Repeat this sentence exactly: The Rosetta Stone was found in July 1799 near the town of Rashid in the Nile "
    "Delta by a French officer during the Napoleonic campaign in Egypt."
)
PROMPTS = [COPY_PROMPT, "def add(a, b):\n    return a + b\n\nRename add to plus.", "Why is the sky blue?"]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class StepRecorder:
    """Wraps an engine's backend and keeps the size of every hand-over of tokens (one per pipeline step)."""

    def __init__(self, engine: Engine) -> None:
        self.backend = engine.backend
        self.sizes: list[int] = []
        engine.backend = self  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def generate(self, request: Any, on_tokens: Any, should_stop: Any) -> None:
        def record(token_ids: list[int]) -> None:
            self.sizes.append(len(token_ids))
            on_tokens(token_ids)

        self.backend.generate(request, record, should_stop)


def replies(engine: Engine, prompts: list[str]) -> list[tuple[str, int, str]]:
    out = []
    for text in prompts:
        reply = engine.generate(chat(text), GREEDY)
        out.append((reply.text, reply.stats.new_tokens, reply.stats.finish_reason))
    return out


@pytest.mark.parametrize("backend", LOOP_BACKENDS)
def test_prompt_lookup_gives_the_tiny_models_greedy_replies(tiny_irs: dict[str, Path], backend: str) -> None:
    folder = tiny_irs["fp16"]
    plain = replies(Engine.load(folder, use_cache_dir=False, backend=backend), PROMPTS)
    looking = Engine.load(folder, use_cache_dir=False, backend=backend, decoding=Decoding("prompt-lookup"))
    assert looking.decoding.mode == "prompt-lookup"
    assert replies(looking, PROMPTS) == plain


@pytest.mark.parametrize("backend", LOOP_BACKENDS)
def test_prompt_lookup_gives_the_default_models_greedy_replies_several_tokens_a_step(
    default_model_ir: Path, backend: str
) -> None:
    plain_engine = Engine.load(default_model_ir, backend=backend)
    plain_steps = StepRecorder(plain_engine)
    plain = replies(plain_engine, PROMPTS)
    looking = Engine.load(default_model_ir, backend=backend, decoding=Decoding("prompt-lookup", assistant_tokens=4))
    steps = StepRecorder(looking)
    assert replies(looking, PROMPTS) == plain
    assert "Rosetta Stone" in plain[0][0]  # the reply copies, so guesses from the prompt can be taken
    assert set(plain_steps.sizes) == {1}
    assert 1 < max(steps.sizes) <= 4 + 1  # a step adds its own token and at most 4 kept guesses
    assert len(steps.sizes) < len(plain_steps.sizes)


@pytest.mark.parametrize("backend", LOOP_BACKENDS)
def test_a_draft_model_equal_to_the_model_gives_its_greedy_replies(tiny_irs: dict[str, Path], backend: str) -> None:
    folder = tiny_irs["fp16"]
    plain = replies(Engine.load(folder, use_cache_dir=False, backend=backend), PROMPTS)
    drafted = Engine.load(
        folder, use_cache_dir=False, backend=backend, decoding=Decoding("draft", draft_model=tiny_irs["int8"])
    )
    assert replies(drafted, PROMPTS) == plain
    same = Engine.load(folder, use_cache_dir=False, backend=backend, decoding=Decoding("draft", draft_model=folder))
    steps = StepRecorder(same)
    assert replies(same, PROMPTS) == plain
    assert max(steps.sizes) == DEFAULT_ASSISTANT_TOKENS + 1  # the model agrees with every guess of its twin


def test_a_draft_model_refuses_sampled_replies(tiny_irs: dict[str, Path]) -> None:
    folder = tiny_irs["fp16"]
    engine = Engine.load(folder, use_cache_dir=False, decoding=Decoding("draft", draft_model=folder))
    with pytest.raises(OvchatError, match="greedy only"):
        engine.generate(chat("Hello"), GenerationSettings(max_new_tokens=4))


def test_prompt_lookup_samples_stops_and_cancels(tiny_irs: dict[str, Path]) -> None:
    engine = Engine.load(tiny_irs["fp16"], use_cache_dir=False, decoding=Decoding("prompt-lookup"))
    sampled = engine.generate(chat(COPY_PROMPT), GenerationSettings(max_new_tokens=12, seed=7))
    assert sampled.stats.new_tokens >= 1 and sampled.stats.finish_reason in ("eos", "length")
    cancel = threading.Event()
    chunks = []
    for chunk in engine.stream(chat(COPY_PROMPT), GREEDY.with_changes(max_new_tokens=200), cancel):
        chunks.append(chunk)
        cancel.set()
    stats = chunks[-1].stats
    assert stats is not None and stats.finish_reason in ("cancelled", "eos")
    assert stats.finish_reason == "eos" or stats.new_tokens < 200


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"mode": "lookahead"}, "unknown decoding 'lookahead'; choose one of plain, prompt-lookup, draft"),
        ({"mode": "prompt-lookup", "assistant_tokens": 0}, "assistant tokens must be an integer in [1, 32], not 0"),
        ({"mode": "prompt-lookup", "ngram_size": 99}, "n-gram size must be an integer in [1, 16], not 99"),
        ({"mode": "draft"}, "give --draft-model FOLDER with --decoding draft"),
        ({"mode": "prompt-lookup", "draft_model": "/somewhere"}, "a draft model is used with the draft decoding"),
        ({"mode": "plain", "assistant_tokens": 3}, "--assistant-tokens applies to --decoding prompt-lookup or draft"),
        ({"mode": "draft", "draft_model": "/x", "ngram_size": 2}, "--ngram-size applies to --decoding prompt-lookup"),
        ({"draft_model": "/nowhere/draft"}, "draft model folder /nowhere/draft does not exist"),
    ],
)
def test_bad_decoding_options_are_one_line(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(OvchatError) as caught:
        decoding_from_options(**options)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_the_defaults_are_defined_once() -> None:
    assert decoding_from_options() == Decoding() and Decoding().mode == "plain" and not Decoding().guesses
    looking = decoding_from_options("prompt-lookup")
    assert (looking.assistant_tokens, looking.ngram_size) == (DEFAULT_ASSISTANT_TOKENS, DEFAULT_NGRAM_SIZE)


def test_a_folder_that_is_no_export_is_refused_as_a_draft(tmp_path: Path) -> None:
    with pytest.raises(OvchatError, match=r"is not an exported model: missing openvino_model.xml"):
        Decoding("draft", draft_model=tmp_path)


@pytest.mark.parametrize("backend", LOOP_BACKENDS)
def test_a_draft_of_another_vocabulary_is_refused_in_one_line(
    default_model_ir: Path, tiny_irs: dict[str, Path], backend: str
) -> None:
    with pytest.raises(OvchatError) as caught:
        Engine.load(default_model_ir, backend=backend, decoding=Decoding("draft", draft_model=tiny_irs["int8"]))
    message = str(caught.value)
    assert "tokens and" in message and "they must match" in message and "\n" not in message


def test_a_draft_of_another_tokenizer_with_as_many_tokens_is_refused(
    default_model_ir: Path, tiny_irs: dict[str, Path], tmp_path: Path
) -> None:
    """The tiny model with the default model's tokenizer put in: its config still says 400 tokens, as the tiny
    model's does, but its tokenizer splits text otherwise, so its guesses would be other tokens."""
    import shutil

    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_irs["int8"], other)
    for name in ("openvino_tokenizer.xml", "openvino_tokenizer.bin"):
        shutil.copy(default_model_ir / name, other / name)
    with pytest.raises(OvchatError) as caught:
        Engine.load(tiny_irs["fp16"], use_cache_dir=False, decoding=Decoding("draft", draft_model=other))
    message = str(caught.value)
    assert f"draft model {other} does not share" in message and "into other tokens" in message, message


def test_the_optimum_loop_refuses_guessing() -> None:
    with pytest.raises(OvchatError, match="the optimum loop decodes plainly only"):
        Engine.load(Path("/nowhere"), backend="optimum", decoding=Decoding("prompt-lookup"))


def test_the_cli_flags_reach_the_engine(tiny_irs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from ovchat import cli

    loaded: dict[str, Any] = {}

    def fake_load(folder: Path, **options: Any) -> Engine:
        loaded.update(options, folder=folder)
        raise OvchatError("stop here")

    monkeypatch.setattr(Engine, "load", staticmethod(fake_load))
    folder = str(tiny_irs["int8"])
    assert cli.main(["ask", "hi", "-m", folder, "--decoding", "prompt-lookup", "--assistant-tokens", "3"]) == 2
    assert loaded["decoding"] == Decoding("prompt-lookup", assistant_tokens=3)
    assert cli.main(["ask", "hi", "-m", folder, "--draft-model", folder]) == 2
    assert loaded["decoding"] == Decoding("draft", draft_model=Path(folder))
    from ovchat.server import command as serve_command

    monkeypatch.setattr(serve_command, "run", lambda args, folder, load: load())  # no port, no uvicorn
    assert cli.main(["serve", "-m", folder, "--decoding", "prompt-lookup", "--ngram-size", "2"]) == 2
    assert loaded["decoding"] == Decoding("prompt-lookup", ngram_size=2)
    parser = cli.build_parser()
    assert parser.parse_args(["chat", "--decoding", "draft", "--draft-model", "d"]).draft_model == Path("d")


def test_bad_decoding_flags_are_one_line_before_loading() -> None:
    assert_one_line_error(ovchat("ask", "hi", "--decoding", "plain", "--assistant-tokens", "4"), "--assistant-tokens")
    assert_one_line_error(ovchat("ask", "hi", "--decoding", "fast"), "argument --decoding: invalid choice: 'fast'")


def test_a_sampled_reply_with_a_draft_is_one_cli_line(tiny_irs: dict[str, Path]) -> None:
    folder = str(tiny_irs["fp16"])
    result = ovchat("ask", "hi", "-m", folder, "--draft-model", folder, "--max-new-tokens", "4")
    assert_one_line_error(result, "the draft-model decoding is greedy only")
    greedy = ovchat("ask", "hi", "-m", folder, "--draft-model", folder, "--max-new-tokens", "4", "--temperature", "0")
    assert greedy.returncode == 0, greedy.stderr


def test_accepted_share_counts_the_guesses_kept() -> None:
    assert accepted_share(new_tokens=1, steps=1, guesses_per_step=5) is None  # no guessing step
    assert accepted_share(new_tokens=11, steps=3, guesses_per_step=4) == pytest.approx(8 / 8)
    assert accepted_share(new_tokens=10, steps=10, guesses_per_step=5) == 0.0
    assert accepted_share(new_tokens=7, steps=4, guesses_per_step=3) == pytest.approx(3 / 9)


def test_the_summary_compares_each_decoding_with_plain() -> None:
    def run(text: str, reply_s: float, steps: int) -> dict[str, Any]:
        return {"text": text, "reply_s": reply_s, "new_tokens": 10, "ttft_s": 0.1, "decode_tok_s": 5.0, "steps": steps}

    runs = {"rewrite": {"plain": [run("a", 2.0, 10)], "prompt-lookup": [run("a", 1.0, 4)], "draft": [run("b", 4.0, 5)]}}
    kinds = summarize_decoding(runs, guesses_per_step=5)
    figures = kinds["rewrite"]["decodings"]
    assert kinds["rewrite"]["input_grounded"] is True
    assert figures["prompt-lookup"]["ratio_to_plain"]["speedup"] == 2.0
    assert figures["draft"]["ratio_to_plain"]["speedup"] == 0.5
    assert figures["prompt-lookup"]["tokens_per_step"] == 2.5 and figures["plain"]["accepted_share"] is None
    assert figures["prompt-lookup"]["same_text_as_plain"] is True and figures["draft"]["same_text_as_plain"] is False


def test_the_bench_report_on_a_tiny_run(tiny_irs: dict[str, Path]) -> None:
    # The tiny model's context (512) and 400-token vocabulary cannot take the real prompts: two short ones.
    kinds = (PromptKind("rewrite", f"Fix this: {COPY_PROMPT}", True), PromptKind("open", "Why is the sky blue?", False))
    plan = DecodingPlan(tiny_irs["fp16"], tiny_irs["fp16"], rounds=1, new_tokens=8, threads=1, kinds=kinds)
    report = run_decoding_bench(plan)
    assert set(report) == {"machine", "model", "settings", "load_s", "kinds"}
    assert report["settings"]["decodings"] == ["plain", "prompt-lookup", "draft"]
    assert {name: kind["input_grounded"] for name, kind in report["kinds"].items()} == {"rewrite": True, "open": False}
    for kind in report["kinds"].values():
        for decoding, figures in kind["decodings"].items():
            assert len(figures["runs"]) == 1 and 1 <= figures["new_tokens"] <= 8
            assert figures["reply_s"] > 0 and figures["tokens_per_step"] >= 1
            assert figures["same_text_as_plain"] is True, decoding  # greedy: every decoding says the same
            assert set(figures["ratio_to_plain"]) == {"decode_tok_s", "speedup"}


def test_the_bench_refuses_what_it_cannot_run(tiny_irs: dict[str, Path], tmp_path: Path) -> None:
    from ovchat.bench.decoding import decoding_bench

    args = argparse.Namespace(engines=None, variant=None, plot=None, draft_model=tmp_path, quick=True, threads=1)
    with pytest.raises(OvchatError, match="is not an exported model"):
        decoding_bench(args, [tiny_irs["fp16"]], console=None)
    with pytest.raises(OvchatError, match="--decoding takes one --model"):
        decoding_bench(args, [tiny_irs["fp16"], tiny_irs["int8"]], console=None)
    assert fresh_chat(PROMPT_KINDS[0]) != fresh_chat(PROMPT_KINDS[0])  # a fresh tag each time: no cached prompt
