"""The chat command's lean install, for real: `./run.sh` in a fresh venv installs the core (no torch,
transformers, optimum-intel or NNCF), exports the default model by keeping its GGUF blocks, and opens a page
that answers; what needs the export extra says in one line how to add it.

The venv is built by run.sh itself from the package registry (pip's cache makes a second run quick), as a
user's first `./run.sh` would, with its own data folder.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browsing import CAPTION, CHAT_INPUT, MODEL_LOAD_MS, send, set_temperature_to_zero, wait_for_text

from ovchat.extras import EXPORT_EXTRA_MODULES, INSTALL_EXPORT_EXTRA
from ovchat.paths import HOME_ENV
from ovchat.server.process import ServerProcess, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHAT_ENV_LIMIT_BYTES = 1.5e9  # the chat command's environment, as the issue asks (it was 6.8 GB with torch)
INSTALL_AND_EXPORT_S = 1200  # pip from the registry, the default model's export, Streamlit's start


class LeanChat:
    def __init__(self, url: str, venv: Path, home: Path) -> None:
        self.url, self.venv, self.home = url, venv, home

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A command of the lean venv (``python``, ``ovchat``) with its data folder."""
        program, *rest = args
        env = {**os.environ, HOME_ENV: str(self.home)}
        return subprocess.run(
            [str(self.venv / "bin" / program), *rest], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )


@pytest.fixture(scope="module")
def lean_chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeanChat]:
    """`./run.sh` with a venv and data folder of its own, serving the page on a free port."""
    folder = tmp_path_factory.mktemp("lean")
    venv, home = folder / "venv", folder / "home"
    env = {**os.environ, "OVCHAT_VENV": str(venv), HOME_ENV: str(home)}
    for inherited in ("OVCHAT_MODEL", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(inherited, None)
    port = free_port()
    command = [
        "./run.sh",
        *("--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1"),
        *("--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"),
    ]
    server = ServerProcess(
        "lean-chat", command, port, folder, health_path="/_stcore/health", env=env, cwd=ROOT,
        start_timeout_s=INSTALL_AND_EXPORT_S,
    )  # fmt: skip
    with server:
        yield LeanChat(server.url, venv, home)


def folder_bytes(folder: Path) -> int:
    return sum(path.lstat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def test_the_chat_install_has_no_torch_and_is_small(lean_chat: LeanChat) -> None:
    probe = "import importlib.util as u, json; print(json.dumps([m for m in {!r} if u.find_spec(m)]))"
    result = lean_chat.run("python", "-c", probe.format(EXPORT_EXTRA_MODULES))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    size = folder_bytes(lean_chat.venv)
    print(f"lean chat venv: {size / 1e9:.2f} GB")
    assert size < CHAT_ENV_LIMIT_BYTES, f"{size / 1e9:.2f} GB"


def test_the_default_model_was_exported_by_keeping_its_blocks(lean_chat: LeanChat) -> None:
    folders = [path for path in (lean_chat.home / "models").iterdir() if not path.name.startswith(".")]
    assert [path.name for path in folders] == ["SmolLM2-135M-Instruct-gguf"]
    manifest = json.loads((folders[0] / "ovchat.json").read_text())
    assert (manifest["route"], manifest["source"]["quantization"]) == ("gguf-blocks", "Q4_1")
    assert manifest["smoke"]["new_tokens"] > 0


def test_the_page_answers_on_the_default_model(browser: Browser, lean_chat: LeanChat) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(lean_chat.url)
        page.locator(CHAT_INPUT).wait_for(timeout=MODEL_LOAD_MS)
        # The model picker says how the weights were made.
        expect(page.get_by_role("combobox", name="Exported model")).to_have_value("SmolLM2-135M-Instruct-gguf")
        expect(page.locator('[data-testid="stSidebar"]').get_by_text("Q4_1 blocks kept from the GGUF")).to_be_visible()
        set_temperature_to_zero(page)
        reply = send(page, "What is the capital of France?")
        expect(reply.locator(CAPTION).filter(has_text="tok/s")).to_be_visible(timeout=MODEL_LOAD_MS)
        assert "Paris" in wait_for_text(reply)
    finally:
        context.close()


def assert_names_the_install_command(result: subprocess.CompletedProcess[str], prog: str) -> None:
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: ") and INSTALL_EXPORT_EXTRA in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_a_checkpoint_export_names_the_install_command(lean_chat: LeanChat, tiny_checkpoint: Path) -> None:
    result = lean_chat.run("python", "export_ir.py", str(tiny_checkpoint), "-o", str(lean_chat.home / "tiny"))
    assert_names_the_install_command(result, "export_ir.py")
    assert "exporting a checkpoint to int8" in result.stderr
    assert not (lean_chat.home / "tiny").exists()


def test_dequantizing_a_gguf_names_the_install_command(lean_chat: LeanChat) -> None:
    result = lean_chat.run("ovchat", "export", "--weight-format", "int4")
    assert_names_the_install_command(result, "ovchat")
    assert "dequantizing a GGUF file to int4" in result.stderr


def test_the_optimum_loop_names_the_install_command(lean_chat: LeanChat) -> None:
    result = lean_chat.run("ovchat", "ask", "--backend", "optimum", "--max-new-tokens", "4", "Hello")
    assert_names_the_install_command(result, "ovchat")
    assert "the optimum loop" in result.stderr
