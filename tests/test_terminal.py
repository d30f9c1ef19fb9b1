"""The terminal chat loop with a scripted engine: commands, history, Ctrl-C, saving and loading."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import FakeEngine

from ovchat.chats.files import load_chat, save_chat
from ovchat.errors import OvchatError
from ovchat.settings import GenerationSettings
from ovchat.terminal import TerminalChat

SETTINGS = GenerationSettings(temperature=0.0, max_new_tokens=64)


def scripted_input(lines: list[str | type[BaseException]]) -> Callable[[str], str]:
    """input() replacement: returns the lines in order, raises the exception classes given, then EOF."""
    queue = list(lines)

    def read_line(prompt: str) -> str:
        if not queue:
            raise EOFError
        item = queue.pop(0)
        if isinstance(item, type):
            raise item
        return item

    return read_line


def run_chat(lines: list, engine: FakeEngine | None = None, **options: object) -> tuple[TerminalChat, str, str]:
    out, err = io.StringIO(), io.StringIO()
    chat = TerminalChat(engine or FakeEngine(), SETTINGS, out=out, err=err, **options)
    assert chat.run(scripted_input(lines)) == 0
    return chat, out.getvalue(), err.getvalue()


def test_history_grows_and_every_reply_sees_the_whole_chat() -> None:
    engine = FakeEngine()
    chat, out, _ = run_chat(["hello", "how are you", "/exit", "never read"], engine, system="Be kind.")
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.messages[-1]["content"] == "You said: how are you"
    assert "You said: hello\n" in out and "You said: how are you\n" in out
    assert [len(messages) for messages, _ in engine.calls] == [2, 4]
    assert engine.calls[1][0][:3] == chat.messages[:3]
    assert all(settings == SETTINGS for _, settings in engine.calls)


@pytest.mark.parametrize("word", ["exit", "quit", "bye", "/exit", "/bye", " EXIT "])
def test_exit_words_end_the_chat_without_a_reply(word: str) -> None:
    engine = FakeEngine()
    run_chat([word, "not sent"], engine)
    assert engine.calls == []


def test_commands_are_not_sent_to_the_model() -> None:
    engine = FakeEngine()
    chat, _, err = run_chat(["hi", "/system Answer in French.", "/system", "/nope", "/clear", "again"], engine)
    assert "System prompt: 'Answer in French.'" in err
    assert "Unknown command /nope" in err
    assert chat.messages == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "You said: again"},
    ]
    assert len(engine.calls) == 2


def test_a_message_of_several_lines_between_triple_quotes() -> None:
    chat, _, _ = run_chat(['"""first line', "", "def f():", '    return 1"""'])
    assert chat.messages[0]["content"] == "first line\n\ndef f():\n    return 1"
    chat, _, _ = run_chat(['"""', "a", "b", '"""'])
    assert chat.messages[0]["content"] == "a\nb"


def test_ctrl_c_stops_the_reply_keeps_the_text_and_the_chat_goes_on() -> None:
    def press_ctrl_c(index: int, cancel: threading.Event) -> None:
        if index == 1:
            # What Python runs on Ctrl-C. A real SIGINT is sent in the subprocess test below: in this
            # process, after the rest of the suite, raise(SIGINT) crashed inside libc (see the note there).
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)

    # Python's own handler, unless the process was started with Ctrl-C ignored (a background job of a shell
    # without job control): either way, the one that was there before the reply.
    before = signal.getsignal(signal.SIGINT)
    engine = FakeEngine(reply=lambda messages: "one two three four five six", on_chunk=press_ctrl_c)
    chat, out, err = run_chat(["tell me a story", "and then?"], engine)
    assert chat.messages[1] == {"role": "assistant", "content": "one two"}
    assert "one two\n" in out and "three" not in out
    assert "cancelled" in err
    assert len(engine.calls) == 2 and chat.messages[-1]["role"] == "assistant"
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C does what it did again after the reply


def test_ctrl_c_at_the_prompt_does_not_leave() -> None:
    chat, _, err = run_chat([KeyboardInterrupt, "still here"])
    assert "/exit leaves" in err
    assert chat.messages[-1]["content"] == "You said: still here"


def test_a_reply_stopped_before_any_text_drops_the_turn() -> None:
    def cancel_at_once(index: int, cancel: threading.Event) -> None:
        cancel.set()

    engine = FakeEngine(reply=lambda messages: "", on_chunk=cancel_at_once)
    chat, _, err = run_chat(["hi"], engine)
    assert chat.messages == [] and "stopped before any reply" in err


def test_an_engine_error_is_shown_and_the_chat_goes_on() -> None:
    def reply(messages: list) -> str:
        if "huge" in messages[-1]["content"]:
            raise OvchatError("the message is too long")
        return "ok"

    chat, _, err = run_chat(["huge message", "small one"], FakeEngine(reply=reply))
    assert "error: the message is too long" in err
    assert chat.messages == [{"role": "user", "content": "small one"}, {"role": "assistant", "content": "ok"}]


def test_trimmed_turns_are_reported() -> None:
    _, _, err = run_chat(["hi"], FakeEngine(trimmed_turns=3))
    assert "3 older turns left out to fit the context" in err


def test_output_file_is_written_after_each_reply_and_at_the_end(tmp_path: Path) -> None:
    target = tmp_path / "chats" / "talk.json"
    seen_on_disk: list[int] = []

    def check_file(index: int, cancel: threading.Event) -> None:
        if index == 0 and target.exists():
            seen_on_disk.append(len(load_chat(target)[0]))

    chat, _, err = run_chat(["first", "second"], FakeEngine(on_chunk=check_file), output=target)
    assert seen_on_disk == [2]  # during the second reply, the first turn was already saved
    assert load_chat(target)[0] == chat.messages and len(chat.messages) == 4
    assert f"Chat saved to {target}" in err


def test_save_command_writes_a_file_that_loads_back(tmp_path: Path) -> None:
    target = tmp_path / "saved.json"
    chat, _, err = run_chat(["hi 数学 😀", f"/save {target}", "/save"])
    assert load_chat(target)[0] == chat.messages
    assert "Usage: /save FILE" in err


def test_a_loaded_chat_continues_and_a_trailing_user_message_is_answered(tmp_path: Path) -> None:
    earlier = tmp_path / "earlier.json"
    save_chat(
        earlier,
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    )
    engine = FakeEngine()
    chat, _, err = run_chat(["d"], engine, messages=load_chat(earlier)[0], system="sys")
    assert "answering it" in err
    assert [m["content"] for m in chat.messages] == ["sys", "a", "b", "c", "You said: c", "d", "You said: d"]


CTRL_C_SCRIPT = """
import io, os, signal, sys
sys.path.insert(0, sys.argv[1])
from fakes import FakeEngine
from ovchat.settings import GenerationSettings
from ovchat.terminal import TerminalChat

def press_ctrl_c(index, cancel):
    if index == 1:
        os.kill(os.getpid(), signal.SIGINT)

engine = FakeEngine(reply=lambda messages: "one two three four five six", on_chunk=press_ctrl_c)
lines = iter(["tell me a story", "and then?"])

def read_line(prompt):
    try:
        return next(lines)
    except StopIteration:
        raise EOFError from None

chat = TerminalChat(engine, GenerationSettings(), out=io.StringIO(), err=sys.stderr)
chat.run(read_line)
print([m["content"] for m in chat.messages])
"""


def test_a_real_sigint_stops_the_reply_in_a_fresh_process() -> None:
    # A fresh interpreter: in the full suite's process, raise(SIGINT) crashed in libc after the
    # native libraries (OpenVINO, torch, Streamlit's AppTest) had run; a user's chat is its own process.
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_SCRIPT, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['tell me a story', 'one two', 'and then?', 'one two']"  # both replies stopped
    assert result.stderr.count("cancelled") == 2
