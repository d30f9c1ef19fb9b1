"""The bench's side of its worker processes: one engine each, driven by JSON lines
(:mod:`ovchat.bench.runners` is the other end), and a pool that starts, warms up and closes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ovchat.errors import OvchatError
from ovchat.prompt import Message


class Worker:
    """One engine in its own process."""

    def __init__(
        self,
        name: str,
        engine: str,
        ir: Path,
        home: Path,
        threads: int,
        gguf: Path | None = None,
        checkpoint: Path | None = None,
        ov_config: dict[str, str] | None = None,
        runner_args: Sequence[str] = (),
    ) -> None:
        command = [sys.executable, "-m", "ovchat.bench.runners", engine, "--ir", str(ir), "--threads", str(threads)]
        command += runner_args  # the runner's own flags (the ovchat runner's --decoding)
        if gguf:
            command += ["--gguf", str(gguf)]
        if checkpoint:
            command += ["--checkpoint", str(checkpoint)]
        for key, value in (ov_config or {}).items():
            command += ["--ov-config", f"{key}={value}"]
        home.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = (home / "worker.log").open("ab")
        env = {**os.environ, "OVCHAT_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env, text=True
        )
        ready = self._read()
        self.load_s: float = ready["load_s"]

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            raise OvchatError(f"the {self.name} engine exited (code {self.process.returncode}); see {self.log.name}")
        return json.loads(line)

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command, ensure_ascii=False) + "\n")
        self.process.stdin.flush()
        return self._read()

    def run(self, messages: list[Message], prompt: str, max_new_tokens: int, cold: bool = True) -> dict[str, Any]:
        """One greedy reply; ``cold`` makes the engine forget earlier prompts first."""
        command = {"op": "run", "messages": messages, "prompt": prompt, "max_new_tokens": max_new_tokens}
        return self.ask({**command, "cold": cold})

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


class WorkerPool:
    """Workers by row label, each in its own data folder under ``home``; all closed on leaving the block."""

    def __init__(self, home: Path, progress: Callable[[str], None]) -> None:
        self.home = home
        self.progress = progress
        self.workers: dict[str, Worker] = {}

    def folder(self, label: str) -> Path:
        """The row's data folder: a worker started again there finds its compiled-model cache full."""
        return self.home / safe_name(label)

    def start(self, label: str, make: Callable[[Path], Worker]) -> Worker:
        """Start the row's worker, ``make(its data folder)``."""
        self.progress(f"loading {label}")
        self.workers[label] = make(self.folder(label))
        return self.workers[label]

    def warm_up(self, messages: list[Message], prompt: str) -> None:
        """One unrecorded reply each: the first inference after a load pays one-off costs (kernel
        selection, buffer allocation) that no later reply pays; the load time is where they belong."""
        for label, worker in self.workers.items():
            self.progress(f"warming up {label}")
            worker.run(messages, prompt, max_new_tokens=4)

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def rotated(labels: list[str], round_index: int) -> list[str]:
    """``labels`` starting one further each round, so that no engine always runs first after a pause."""
    shift = round_index % len(labels)
    return labels[shift:] + labels[:shift]


def safe_name(label: str) -> str:
    """A folder name for a row label such as ``ovchat:bf16``."""
    return "".join(char if char.isalnum() or char in "-_." else "-" for char in label)
