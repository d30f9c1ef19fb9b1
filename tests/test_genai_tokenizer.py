"""The genai backend without transformers: prompts and token ids exactly as the Hugging Face tokenizer
makes them, whole characters in the stream, and no transformers or torch imported on the way."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from fakes import ScriptedBackend, assistant, system, user

from ovchat.engine import Engine
from ovchat.engine.backends.genai_tokenizer import GenaiDetokenizer, GenaiTokenizer
from ovchat.errors import OvchatError
from ovchat.paths import HOME_ENV
from ovchat.prompt import CHATML, LLAMA2, MODEL_TEMPLATE, PLAIN, ChatTemplate, Message, choose_template, render_prompt
from ovchat.settings import GenerationSettings

GREEDY = GenerationSettings(max_new_tokens=200, temperature=0.0, repetition_penalty=1.0)
HELLO: list[Message] = [{"role": "user", "content": "Hello there"}]
TEMPLATES = (MODEL_TEMPLATE, CHATML, LLAMA2, PLAIN)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "openvino_tokenizer.xml",
    "openvino_tokenizer.bin",
    "openvino_detokenizer.xml",
    "openvino_detokenizer.bin",
)


CHATS: list[list[Message]] = [
    [user("Hello there")],
    [system("Be brief."), user("hi"), assistant("Hello! 😀"), user("数学是被发明还是被发现的？ 日本語")],
    [
        system("You are SmolLM.\n  Answer in French."),
        user("  spaced \n\n text\t"),
        assistant("ok"),
        user("def add(a, b):\n    return a + b\n"),
    ],
    [user("a"), assistant("b"), system("a system message mid-chat"), user("c <|im_start|> d <|im_end|> {{ e }}")],
    [assistant("I speak first."), user("fine")],
]
# Constructs that openvino-genai's own template engine (minja) renders differently from transformers'
# jinja2: integer division, %-formatting, unk_token, and a system message it moves into the first user
# turn when the template seems not to show it. Plus trim_blocks/lstrip_blocks, tojson and {% generation %}.
JINJA_CASES = {
    "blocks": "{% for m in messages %}\n{% if m['role'] == 'user' %}\n  <u>{{ m['content'] }}</u>\n{% else %}\n"
    "  <a>{{ m['content'] }}</a>\n{% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n<a>\n{% endif %}",
    "dashes": "{%- for m in messages -%}\n    {{- '<|im_start|>' + m.role + '\\n' + m.content | trim }}\n"
    "    {{- '<|im_end|>\\n' }}\n"
    "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n",
    "loop": "{% for m in messages %}{% if loop.first and m.role != 'system' %}SYS\n{% endif %}{{ loop.index0 }}:"
    "{{ m.role | upper }}:{{ m['content'] }}{% if not loop.last %}|{% endif %}{% endfor %}",
    "tojson": "{{ messages | tojson }}|{{ messages[-1].content | tojson(indent=2) }}",
    "special tokens": "[{{ bos_token }}][{{ eos_token }}][{{ unk_token }}][{{ pad_token }}][{{ sep_token }}]",
    "no content shown": "{% for m in messages %}{{ m.get('name', 'none') }}{{ m.items() | list | length }}{% endfor %}",
    "content changed": "{% for m in messages %}{{ m.content.replace('e', 'E') }}{% endfor %}",
    "arithmetic": "{{ 3 / 2 }} {{ 7 // 2 }} {{ '%s-%d' % ('a', 3) }} {{ messages | length }}",
    "namespace": "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + m.content | length %}"
    "{% endfor %}{{ ns.n }}",
    "loop controls": "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{{ m.content }}"
    "{% if m.role == 'assistant' %}{% break %}{% endif %}{% endfor %}",
    "generation": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
    "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}",
}


def tokenizer_pair(folder: Path) -> tuple[Any, GenaiTokenizer]:
    """The Hugging Face tokenizer of ``folder`` and the genai one, as the two backends load them."""
    import openvino_genai
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), GenaiTokenizer(openvino_genai.Tokenizer(str(folder)), folder)


def assert_same_prompts_and_ids(folder: Path) -> None:
    hf, ours = tokenizer_pair(folder)
    assert ours.chat_template == hf.chat_template
    assert ours.special_tokens_map == hf.special_tokens_map
    assert (ours.bos_token, ours.eos_token) == (hf.bos_token, hf.eos_token)
    assert (ours.pad_token_id, ours.unk_token_id) == (hf.pad_token_id, hf.unk_token_id)
    for token in hf.all_special_tokens:
        assert token in ours.get_vocab()
        assert ours.convert_tokens_to_ids(token) == hf.convert_tokens_to_ids(token)
    for name in ("auto", "model", "chatml", "llama2", "plain"):
        assert choose_template(ours, name) is choose_template(hf, name)
    for template in TEMPLATES:
        for chat in CHATS:
            expected = render_prompt(hf, chat, template)
            assert render_prompt(ours, chat, template) == expected, (template.name, chat)
            ids = hf(expected, add_special_tokens=False)["input_ids"]
            assert ours(expected, add_special_tokens=False)["input_ids"] == ids, (template.name, chat)
            assert ours.decode(ids) == hf.decode(ids)
            assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_prompts_and_token_ids_match_the_hugging_face_tokenizer(tiny_irs: dict[str, Path]) -> None:
    assert_same_prompts_and_ids(tiny_irs["fp16"])


@pytest.mark.slow
def test_prompts_and_token_ids_match_on_the_default_model(default_model_ir: Path) -> None:
    assert_same_prompts_and_ids(default_model_ir)


@pytest.fixture(scope="module")
def tokenizers(tiny_irs: dict[str, Path]) -> tuple[Any, GenaiTokenizer]:
    return tokenizer_pair(tiny_irs["fp16"])


@pytest.mark.parametrize("name", list(JINJA_CASES))
def test_templates_render_as_transformers_renders_them(tokenizers: tuple[Any, GenaiTokenizer], name: str) -> None:
    hf, ours = tokenizers
    template = ChatTemplate(name, JINJA_CASES[name])
    for chat in CHATS:
        assert render_prompt(ours, chat, template) == render_prompt(hf, chat, template)


def test_a_template_error_is_the_same_error(tokenizers: tuple[Any, GenaiTokenizer]) -> None:
    strict = ChatTemplate("strict", "{{ raise_exception('roles must alternate') }}")
    messages = []
    for tokenizer in tokenizers:
        with pytest.raises(OvchatError, match="the strict chat template cannot render this chat") as caught:
            render_prompt(tokenizer, HELLO, strict)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and messages[0].endswith("roles must alternate")


def tokenizer_copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, target / name)
    return target


def test_the_template_comes_from_the_files_transformers_reads(tiny_irs: dict[str, Path], tmp_path: Path) -> None:
    folder = tokenizer_copy(tiny_irs["fp16"], tmp_path / "tokenizer")
    # An edited chat_template.jinja wins over the template inside openvino_tokenizer.xml, as in transformers.
    (folder / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    hf, ours = tokenizer_pair(folder)
    assert (
        render_prompt(ours, CHATS[1])
        == render_prompt(hf, CHATS[1])
        == ("[system] Be brief.\n[user] hi\n[assistant] Hello! 😀\n[user] 数学是被发明还是被发现的？ 日本語\n")
    )
    # Without chat_template.jinja, tokenizer_config.json's template.
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages[0].content }}"}))
    hf, ours = tokenizer_pair(folder)
    assert render_prompt(ours, CHATS[1]) == render_prompt(hf, CHATS[1]) == "Be brief."
    # Without either, no template: the vocabulary picks the fallback and its end-of-turn token.
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    hf, ours = tokenizer_pair(folder)
    assert ours.chat_template is None and hf.chat_template is None
    assert choose_template(ours) is choose_template(hf) is CHATML
    assert ours.convert_tokens_to_ids("<|im_end|>") == hf.convert_tokens_to_ids("<|im_end|>")
    with pytest.raises(OvchatError, match="no chat template"):
        render_prompt(ours, HELLO)


# Streaming text: the genai backend's detokenizer behind the engine's shared stream loop.

SPLIT_TEXT = "数学是被发明还是被发现的？ 日本語のテキスト 😀👍🏽 done"


def streamed_pieces(tokenizer: Any, ids: list[int]) -> tuple[list[str], list[str]]:
    """What GenaiDetokenizer gives for ``ids`` fed one by one: the pieces before end(), and what end() adds."""
    detokenizer = GenaiDetokenizer(tokenizer)
    before = [piece for piece in (detokenizer.feed([token]) for token in ids) if piece]
    return before, [piece for piece in [detokenizer.end()] if piece]


def test_the_text_streamer_holds_back_split_characters(tokenizers: tuple[Any, GenaiTokenizer]) -> None:
    hf, ours = tokenizers
    ids = hf(SPLIT_TEXT, add_special_tokens=False)["input_ids"] + [hf.eos_token_id]
    assert any("\ufffd" in hf.decode([token]) for token in ids), "the test needs characters split across tokens"
    for cut in range(1, len(ids) + 1):
        before, at_end = streamed_pieces(ours.genai, ids[:cut])
        assert all("\ufffd" not in piece for piece in before)
        assert "".join(before + at_end) == hf.decode(ids[:cut], skip_special_tokens=True)


# Token ids of the tiny model whose text is not UTF-8 at the end: end() raised UnicodeDecodeError (a CI run's
# `ovchat ask` on the tiny random model), found again by feeding random ids.
NOT_UTF8_IDS = [88, 182, 238, 238, 122]


def test_any_token_ids_stream_without_an_error(tokenizers: tuple[Any, GenaiTokenizer]) -> None:
    """A random model can emit any token in any order: the detokenizer hands over text for every sequence,
    with U+FFFD where the bytes are not UTF-8, and never raises."""
    _, ours = tokenizers
    draw = random.Random(0)
    vocabulary = len(ours.genai.get_vocab())
    sequences = [NOT_UTF8_IDS] + [[draw.randrange(vocabulary) for _ in range(draw.randrange(1, 8))] for _ in range(300)]
    broken = 0
    for ids in sequences:
        before, at_end = streamed_pieces(ours.genai, ids)
        broken += "\ufffd" in "".join(before + at_end)
    assert "\ufffd" in "".join(streamed_pieces(ours.genai, NOT_UTF8_IDS)[1])
    assert broken  # the sequences do include text that is not UTF-8


def scripted_genai_engine(folder: Path, text: str, template: str = "auto", **backend_options: Any) -> Engine:
    """A real Engine with the genai tokenizer and detokenizer over a backend that replies ``text`` and its
    end of turn."""
    import openvino_genai

    tokenizer = openvino_genai.Tokenizer(str(folder))
    ours = GenaiTokenizer(tokenizer, folder)
    eos = tokenizer.get_eos_token_id()
    ids = ours(text, add_special_tokens=False)["input_ids"] + [eos]
    backend = ScriptedBackend(ours, lambda: GenaiDetokenizer(tokenizer), ids, eos_id=eos, **backend_options)
    return Engine(backend, folder, "CPU", template=template)


def test_genai_stream_of_cjk_and_emoji_has_no_broken_characters(tiny_irs: dict[str, Path]) -> None:
    engine = scripted_genai_engine(tiny_irs["fp16"], SPLIT_TEXT)
    chunks = list(engine.stream(HELLO, GREEDY))
    assert len(chunks) > 3 and all("\ufffd" not in chunk.text for chunk in chunks)
    assert "".join(chunk.text for chunk in chunks) == SPLIT_TEXT
    expected_tokens = len(engine.tokenizer(SPLIT_TEXT, add_special_tokens=False)["input_ids"]) + 1
    assert (chunks[-1].stats.finish_reason, chunks[-1].stats.new_tokens) == ("eos", expected_tokens)


def test_genai_reply_cut_inside_a_character_shows_no_broken_text(tiny_irs: dict[str, Path]) -> None:
    text = "😀😀😀😀"
    engine = scripted_genai_engine(tiny_irs["fp16"], text)
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    cut = next(n for n in range(1, len(ids)) if engine.tokenizer.decode(ids[:n]).endswith("\ufffd"))
    reply = engine.generate(HELLO, GREEDY.with_changes(max_new_tokens=cut))
    assert (reply.stats.finish_reason, reply.stats.new_tokens) == ("length", cut)
    assert "\ufffd" not in reply.text and text.startswith(reply.text)


def test_genai_fallback_template_stops_at_its_turn_marker(tiny_irs: dict[str, Path]) -> None:
    engine = scripted_genai_engine(tiny_irs["fp16"], "Hi there!\nUser: and now I speak for you", template="plain")
    reply = engine.generate(HELLO, GREEDY)
    assert (reply.text, reply.stats.finish_reason) == ("Hi there!", "stop")
    assert engine.tokenizer.decode(engine.backend.prompts[0]) == "User: Hello there\nAssistant:"


def test_genai_cancel_keeps_the_text_so_far(tiny_irs: dict[str, Path]) -> None:
    cancel = threading.Event()
    # After a few tokens the pipeline waits for the consumer, who cancels on the first text it sees.
    text = "The quick brown fox jumps over the lazy dog. " * 4
    engine = scripted_genai_engine(tiny_irs["fp16"], text, after_token=lambda i: i >= 8 and cancel.wait(60))
    chunks = []
    for chunk in engine.stream(HELLO, GREEDY, cancel):
        chunks.append(chunk)
        cancel.set()
    final = chunks[-1]
    assert final.stats.finish_reason == "cancelled" and "".join(c.text for c in chunks[:-1])
    assert 1 <= final.stats.new_tokens < len(engine.backend.reply_ids)


def test_without_generation_config_the_eos_comes_from_config(tiny_irs: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_irs["fp16"], folder)
    (folder / "generation_config.json").unlink()
    engine = Engine.load(folder, use_cache_dir=False)
    assert engine.eos_token_ids == {json.loads((folder / "config.json").read_text())["eos_token_id"]}
    assert engine.context_length == 512


# No transformers, no torch: each check runs in a fresh interpreter.

LOAD_AND_STREAM = """
import json, sys
from ovchat.engine import Engine
from ovchat.settings import GenerationSettings

engine = Engine.load(sys.argv[1], backend="genai")
chunks = list(engine.stream([{"role": "user", "content": "Hello there"}], GenerationSettings(max_new_tokens=8)))
assert chunks[-1].stats.finish_reason in ("eos", "length") and chunks[-1].stats.new_tokens >= 1, chunks
print()
print("heavy modules:", json.dumps(sorted(name for name in ("transformers", "torch") if name in sys.modules)))
"""
RUN_CLI = """
import json, sys
from ovchat.cli import main

status = main(sys.argv[1:])
print()
print("heavy modules:", json.dumps(sorted(name for name in ("transformers", "torch") if name in sys.modules)))
sys.exit(status)
"""


def imported_heavy_modules(script: str, *args: str, stdin: str = "") -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line.startswith("heavy modules: "), result.stdout
    return json.loads(last_line.removeprefix("heavy modules: "))


def test_loading_and_streaming_on_genai_imports_neither_transformers_nor_torch(tiny_irs: dict[str, Path]) -> None:
    assert imported_heavy_modules(LOAD_AND_STREAM, str(tiny_irs["int8"])) == []


@pytest.mark.parametrize("command", ["ask", "chat"])
def test_ovchat_ask_and_chat_import_neither_transformers_nor_torch(tiny_irs: dict[str, Path], command: str) -> None:
    args = [command, "--model", str(tiny_irs["int8"]), "--max-new-tokens", "4"]
    if command == "ask":
        args.append("Hello there")
    assert imported_heavy_modules(RUN_CLI, *args, stdin="Hello there\nquit\n") == []


@pytest.mark.slow
def test_ovchat_ask_on_the_default_model_imports_neither(
    default_model_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(default_model_home))  # where ovchat finds the default model, no --model
    assert imported_heavy_modules(RUN_CLI, "ask", "What is 2+2?", "--max-new-tokens", "8") == []
