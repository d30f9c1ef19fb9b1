"""`ovchat chat`, `ovchat ask` and `ovchat devices` as a user runs them, on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovchat.chats.files import load_chat, save_chat

ASK_KEYS = {"text", "finish_reason", "prompt_tokens", "new_tokens", "ttft_s", "decode_tok_s"}


def ovchat(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the CLI; its output decoded exactly. (text=True would turn a "\r" in a reply into "\n", and the
    printed reply would no longer equal the saved one.)"""
    result = subprocess.run(
        [sys.executable, "-m", "ovchat.cli", *args],
        input=stdin.encode("utf-8"),
        capture_output=True,
        env=os.environ.copy(),
        timeout=300,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("ovchat") and ": error: " in lines[0] and fragment in lines[0], lines[0]


def test_ask_json_has_every_key(tiny_irs: dict[str, Path]) -> None:
    result = ovchat("ask", "Hello there", "--model", str(tiny_irs["int8"]), "--json", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert set(reply) == ASK_KEYS
    assert reply["finish_reason"] in ("eos", "length") and 1 <= reply["new_tokens"] <= 8
    assert reply["prompt_tokens"] > 0 and reply["ttft_s"] > 0


def test_ask_logprobs_json_and_table(tiny_irs: dict[str, Path]) -> None:
    greedy = ("--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", "6")
    model = ("--model", str(tiny_irs["int8"]), *greedy)
    result = ovchat("ask", "Hello there", *model, "--json", "--logprobs", "3")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert set(reply) == ASK_KEYS | {"logprobs"}
    tokens = reply["logprobs"]
    assert len(tokens) == reply["new_tokens"] - (reply["finish_reason"] == "eos")
    assert all(len(token["top"]) == 3 and token["top"][0]["id"] == token["id"] for token in tokens)
    # The random model makes stray pieces of characters, which a reply never shows.
    joined = bytes(b for token in tokens for b in token["bytes"]).decode("utf-8", errors="replace")
    assert joined.replace("\ufffd", "") == reply["text"]
    table = ovchat("ask", "Hello there", *model, "--logprobs", "2")
    assert table.returncode == 0 and "alternatives" in table.stderr, table.stderr
    assert_one_line_error(ovchat("ask", "Hello", *model, "--logprobs", "21"), "logprobs must be an integer in [0, 20]")


def test_explore_prints_the_next_token_table(tiny_irs: dict[str, Path]) -> None:
    model = ("--model", str(tiny_irs["int8"]))
    result = ovchat("explore", "def add(a, b):", *model, "--top-k", "5", "--top-p", "1", "--rows", "7", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert len(found["rows"]) == 7 and found["kept"] == 5 and found["removed_by_top_k"] == found["vocabulary"] - 5
    assert sum(row["final"] for row in found["rows"]) == pytest.approx(1.0)  # the 5 kept are among the 7 likeliest
    table = ovchat("explore", "Hello", "--chat", *model, "--temperature", "0")
    assert table.returncode == 0 and "removed by" in table.stdout and "1 of" in table.stdout, table.stdout
    assert_one_line_error(ovchat("explore", " ", *model), "the text to explore is empty")


def test_ask_reads_the_prompt_from_stdin_and_prints_stats_apart(tiny_irs: dict[str, Path]) -> None:
    result = ovchat("ask", "--model", str(tiny_irs["int8"]), "--temperature", "0", "--max-new-tokens", "5", stdin="hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n") and "tokens" not in result.stdout
    assert "tokens · first token" in result.stderr


def test_chat_from_piped_input_saves_the_chat(tiny_irs: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "chat.json"
    result = ovchat(
        "chat", "--model", str(tiny_irs["int8"]), "--max-new-tokens", "6", "--system", "Be brief.", "-o", str(target),
        stdin="Hello there\n/clear\nHow are you today?\nquit\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    messages, _ = load_chat(target)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "How are you today?" and messages[2]["content"] in result.stdout
    assert "Chat cleared." in result.stderr


def test_chat_continues_a_saved_chat_in_place(tiny_irs: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "chat.json"
    save_chat(target, [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}])
    result = ovchat(
        "chat", "--model", str(tiny_irs["int8"]), "--max-new-tokens", "4", "-i", str(target), "-o", str(target),
        stdin="Again\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [m["content"] for m in load_chat(target)[0][:3]] == ["Hello", "Hi!", "Again"]


def test_devices_lists_the_cpu() -> None:
    result = ovchat("devices")
    assert result.returncode == 0
    assert any(line.startswith("CPU\t") and len(line) > 4 for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["ask", "hi", "--temperature", "9"], "temperature must be a number in [0, 5]"),
        (["ask", "hi", "--top-k", "many"], "argument --top-k: invalid int value: 'many'"),
        (["ask", "   "], "the prompt is empty"),
        (["ask", "hi", "--template", "alpaca"], "argument --template: invalid choice: 'alpaca'"),
        (["chat", "--max-new-tokens", "0"], "max_new_tokens must be an integer in [1, 32768]"),
        (["ask", "hi", "--model", "/nowhere/model"], "model folder /nowhere/model does not exist"),
        (["chat", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_gets_one_clear_line(args: list[str], fragment: str) -> None:
    assert_one_line_error(ovchat(*args), fragment)


def test_chat_file_errors_come_before_loading_anything(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "ovchat.chat", "version": 1, "messages": [{"role": "user"}]}')
    assert_one_line_error(ovchat("chat", "-i", str(broken)), "message 0 has no text content")
    existing = tmp_path / "existing.json"
    existing.write_text("keep me")
    assert_one_line_error(ovchat("chat", "-o", str(existing)), "exists; to continue that chat pass -i")
    assert existing.read_text() == "keep me"


def test_a_broken_model_folder_is_named(tiny_irs: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "half-copied"
    broken.mkdir()
    (broken / "openvino_model.xml").write_bytes((tiny_irs["int8"] / "openvino_model.xml").read_bytes())
    assert_one_line_error(ovchat("ask", "hi", "--model", str(broken)), "is not an exported model: missing")
