"""The terminal chat (``ovchat chat``) and one-shot replies (``ovchat ask``), on Engine.stream."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from ovchat.chats.files import save_chat
from ovchat.engine import Reply, ReplyStats, StreamingEngine, collect
from ovchat.errors import OvchatError
from ovchat.prompt import Message, unicode_problem
from ovchat.settings import GenerationSettings

EXIT_WORDS = ("exit", "quit", "bye", "/exit", "/bye", "/quit")
MULTILINE_FENCE = '"""'
HELP = """Commands:
  /clear          start over (keeps the system prompt)
  /system TEXT    set the system prompt (/system alone shows it)
  /save FILE      save the chat as JSON
  /exit           leave (also exit, quit, bye, Ctrl-D)
  \"\"\"             start and end a message of several lines
Ctrl-C stops a reply and keeps what was written so far."""


@contextlib.contextmanager
def interrupt_sets(cancel: threading.Event) -> Iterator[None]:
    """While a reply streams, Ctrl-C cancels it instead of ending the program."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: cancel.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def format_stats(stats: ReplyStats) -> str:
    return "[" + stats.describe() + "]"


def print_reply(engine: StreamingEngine, messages: list[Message], settings: GenerationSettings, out: TextIO) -> Reply:
    """Print the reply as it streams; Ctrl-C stops it and keeps the text so far."""
    cancel = threading.Event()

    def show(text: str) -> None:
        out.write(text)
        out.flush()

    with interrupt_sets(cancel):
        return collect(engine.stream(messages, settings, cancel), on_text=show)


class TerminalChat:
    """A chat loop over any engine with ``stream``; history lives in ``messages``."""

    def __init__(
        self,
        engine: StreamingEngine,
        settings: GenerationSettings,
        messages: list[Message] | None = None,
        system: str | None = None,
        output: Path | None = None,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.messages: list[Message] = list(messages or [])
        self.output = output
        self.out = out
        self.err = err
        if system is not None:
            self.set_system(system)

    def set_system(self, text: str) -> None:
        self.messages = [m for m in self.messages if m["role"] != "system"]
        if text:
            self.messages.insert(0, {"role": "system", "content": text})

    @property
    def system(self) -> str | None:
        return next((m["content"] for m in self.messages if m["role"] == "system"), None)

    def info(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def save(self, path: Path | None = None) -> None:
        target = path or self.output
        if target is not None:
            save_chat(target, self.messages)

    def run(self, read_line: Callable[[str], str] = input) -> int:
        self.info(f"ovchat · {self.engine.path.name} · {self.engine.device}")
        self.info("Type a message. /help lists commands; Ctrl-C stops a reply; Ctrl-D or /exit leaves.")
        if self.messages and self.messages[-1]["role"] == "user":
            self.info("The loaded chat ends with your message; answering it.")
            self.answer()
        while True:
            try:
                text = self.read_message(read_line)
            except KeyboardInterrupt:
                self.info("\n(Ctrl-D or /exit leaves the chat)")
                continue
            except EOFError:
                self.out.write("\n")
                break
            if text is None:
                continue
            if text.strip().lower() in EXIT_WORDS:
                break
            if text.startswith("/"):
                self.command(text)
                continue
            problem = unicode_problem(text)
            if problem is not None:
                self.info(f"error: that message is not UTF-8 text ({problem}); is the terminal set to UTF-8?")
                continue
            self.messages.append({"role": "user", "content": text})
            self.answer()
        self.save()
        if self.output is not None:
            self.info(f"Chat saved to {self.output}")
        return 0

    def read_message(self, read_line: Callable[[str], str]) -> str | None:
        """One message; a line starting with three double quotes begins a message of several lines."""
        first = read_line(">>> ")
        if first.startswith(MULTILINE_FENCE):
            lines = [first.removeprefix(MULTILINE_FENCE)]
            while not lines[-1].rstrip().endswith(MULTILINE_FENCE):
                lines.append(read_line("... "))
            lines[-1] = lines[-1].rstrip().removesuffix(MULTILINE_FENCE)
            first = "\n".join(lines).strip("\n")
        return first if first.strip() else None

    def command(self, text: str) -> None:
        name, _, argument = text.partition(" ")
        argument = argument.strip()
        if name == "/help":
            self.info(HELP)
        elif name == "/clear":
            self.messages = [m for m in self.messages if m["role"] == "system"]
            self.info("Chat cleared.")
        elif name == "/system":
            if argument:
                self.set_system(argument)
                self.info("System prompt set.")
            else:
                self.info(f"System prompt: {self.system!r}" if self.system else "No system prompt.")
        elif name == "/save":
            if not argument:
                self.info("Usage: /save FILE")
                return
            try:
                self.save(Path(argument))
                self.info(f"Chat saved to {argument}")
            except OvchatError as error:
                self.info(f"error: {error}")
        else:
            self.info(f"Unknown command {name}; /help lists the commands.")

    def answer(self) -> None:
        """Stream a reply to the last user message and keep it in the history."""
        try:
            reply = print_reply(self.engine, self.messages, self.settings, self.out)
        except OvchatError as error:
            self.messages.pop()
            self.info(f"error: {error}")
            return
        self.out.write("\n")
        self.out.flush()
        if reply.stats.finish_reason == "cancelled" and not reply.text:
            self.messages.pop()  # nothing was said; the user's message stays on screen to resend
            self.info("[stopped before any reply]")
            return
        self.messages.append({"role": "assistant", "content": reply.text})
        self.info(format_stats(reply.stats))
        try:
            self.save()  # after every reply, so a crash loses nothing
        except OvchatError as error:
            self.info(f"error: {error}")
