"""`ovchat serve --ray`: the OpenAI app as a Ray Serve deployment with two replicas of the tiny model on a
local Ray cluster, answering the official `openai` client; a replica killed with SIGKILL is replaced."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from ovchat.paths import HOME_ENV
from ovchat.server.process import ServerProcess, free_port
from ovchat.server.ray_serve import REPLICA_HEADER

pytestmark = pytest.mark.slow
REPLICA_PROCESS = "ServeReplica:ovchat:ovchat"  # Ray's process title for a replica of the deployment
BODY = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 6, "temperature": 0}


def replica_pids() -> set[int]:
    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(REPLICA_PROCESS in part for part in process.info["cmdline"] or ()):
            found.add(process.info["pid"])
    return found


@pytest.fixture(scope="module")
def ray_server(tiny_irs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("ray")
    env = {**os.environ, HOME_ENV: str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    port = free_port()
    command = [
        sys.executable, "-m", "ovchat.cli", "serve", "--ray", "--replicas", "2", "--model", str(tiny_irs["int8"]),
        "--model-name", "tiny", "--port", str(port), "--parallel", "2",
    ]  # fmt: skip
    with ServerProcess("serve-ray", command, port, home / "logs", env=env, start_timeout_s=300) as process:
        deadline = time.monotonic() + 120
        while len(replica_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        yield process


def ask(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={**BODY, "model": "tiny"}, timeout=120)


def test_two_replicas_answer_the_openai_client(ray_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{ray_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    assert [model.id for model in client.models.list()] == ["tiny"]
    reply = client.chat.completions.create(model="tiny", **BODY)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    assert len(replica_pids()) == 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ask(ray_server.url), range(16)))
    assert all(answer.status_code == 200 for answer in answers), [answer.text for answer in answers]
    answering = {answer.headers[REPLICA_HEADER] for answer in answers}
    assert len(answering) == 2, f"one replica answered all 16 requests: {answering}"


def test_a_killed_replica_is_replaced(ray_server: ServerProcess) -> None:
    before = replica_pids()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        now = replica_pids()
        if len(now) == 2 and victim not in now:
            break
        time.sleep(1)
    else:
        pytest.fail(f"no replica replaced {victim} in 180 s: {replica_pids()}")
    time.sleep(2)  # the proxy learns of the new replica
    answers = [ask(ray_server.url) for _ in range(6)]
    assert [answer.status_code for answer in answers] == [200] * 6, [answer.text for answer in answers]
    assert str(victim) not in {answer.headers[REPLICA_HEADER] for answer in answers}
