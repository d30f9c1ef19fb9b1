"""An HTTP server run as a child process on a free loopback port: ``ovchat serve``, llama.cpp's server,
Streamlit. The bench starts its peers with it and the tests their servers; it waits for the server's
health URL, keeps its output in log files, and ends the server with everything it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from ovchat.errors import OvchatError


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``command`` (which listens on ``port``) in its own process group, logging to ``logs/NAME.out|err``.

    ``with ServerProcess(...) as server:`` starts it and waits until ``health_path`` answers 200;
    leaving the block ends it. If it exits or is not healthy in ``start_timeout_s``, OvchatError
    says so with the end of its stderr.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        logs: Path,
        health_path: str = "/health",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        start_timeout_s: float = 300.0,
    ) -> None:
        self.name = name
        self.command = command
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.health_path = health_path
        self.env = env
        self.cwd = cwd
        self.start_timeout_s = start_timeout_s
        logs.mkdir(parents=True, exist_ok=True)
        self.stdout_log = logs / f"{name}.out"
        self.stderr_log = logs / f"{name}.err"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        with self.stdout_log.open("wb") as out, self.stderr_log.open("wb") as err:
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True,  # its own process group, so stop() ends its children too
            )  # fmt: skip
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OvchatError(f"{self.name} exited with {self.process.returncode}: {self.stderr_tail()}")
            if self.healthy():
                return
            time.sleep(0.25)
        raise OvchatError(f"{self.name} was not healthy in {self.start_timeout_s:.0f} s: {self.stderr_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stderr_tail(self, chars: int = 3000) -> str:
        return self.stderr_log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """End the server and anything it started: SIGTERM, then SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def kill(self) -> None:
        """End the server and its children at once with SIGKILL, as a crash or the OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
