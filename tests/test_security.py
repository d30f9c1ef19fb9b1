"""The security defaults SECURITY.md promises, each shown on the real thing: `ovchat serve` and the page as
subprocesses on loopback ports, the export CLI on a local checkpoint whose custom code would leave a marker
file if it ever ran, and the product's source for what it never loads.

- a checkpoint's own code runs only with --trust-remote-code;
- nothing is unpickled from a file (the one pickle stream is between ovchat's own two processes);
- the server and the page listen on loopback unless told otherwise, and the server refuses another address
  without an API key;
- the API key is compared in constant time, and a wrong one is a 401 whatever bytes it holds;
- CORS is closed: a web page from another origin gets no Access-Control-Allow-Origin, and its requests are
  refused before the model runs (``--cors-origin`` opens it to the origins named);
- the API key, right or wrong, is never written to the server's output or logs;
- a request's body and its number of messages are limited.
"""

from __future__ import annotations

import ast
import inspect
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_server import metrics, serve

from ovchat.cli import build_parser
from ovchat.errors import OvchatError
from ovchat.paths import HOME_ENV
from ovchat.server import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_MESSAGES
from ovchat.server.app import Gate
from ovchat.server.command import API_KEY_ENV, check_exposure
from ovchat.server.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "tiny"
# Distinctive enough that finding them anywhere in the logs can only mean they were logged.
KEY = "SECRET-7d1f0c2a9e4b-key"
WRONG_KEY = "WRONG-3b8e6f51a0c7-key"
QUESTION = [{"role": "user", "content": "hi"}]
GOOD = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 0.0}
CHAT = "/v1/chat/completions"
EVIL = "http://evil.example"
ALLOWED = "http://localhost:3000"
REQUESTS_TOTAL = "ovchat_requests_total"


@pytest.fixture(scope="module")
def keyed(tiny_irs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with every default but an API key."""
    home = tmp_path_factory.mktemp("serve-keyed")
    with serve(tiny_irs["int8"], home, "serve-keyed", "--model-name", MODEL, "--api-key", KEY) as process:
        yield process


def authorized(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def replies_made(server: ServerProcess) -> float:
    return sum(value for (name, _), value in metrics(server).items() if name == REQUESTS_TOTAL)


def assert_openai_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], (word, error["message"])
    return error


# -- trust_remote_code only with the flag ------------------------------------------------------------


def checkpoint_with_custom_code(tiny_checkpoint: Path, folder: Path, markers: Path) -> Path:
    """The tiny checkpoint as a model type of its own whose configuration class is a Python file in the folder
    (``auto_map``), as on the hub; importing it writes a marker file."""
    checkpoint = shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "ovchat-marker"
    config["auto_map"] = {"AutoConfig": "configuration_marker.MarkerConfig"}
    (checkpoint / "config.json").write_text(json.dumps(config))
    # It stops the export right after leaving its marker: the rest would only spend time failing to export a
    # model type OpenVINO does not know.
    (checkpoint / "configuration_marker.py").write_text(
        f"from pathlib import Path\nPath({str(markers / 'config')!r}).write_text('ran')\n"
        "raise ImportError('the marker code ran')\n"
    )
    return checkpoint


def test_a_checkpoints_own_code_runs_only_with_trust_remote_code(tiny_checkpoint: Path, tmp_path: Path) -> None:
    runs = {}
    for name, flags in (("without", []), ("with", ["--trust-remote-code"])):
        markers = tmp_path / f"markers-{name}"
        markers.mkdir()
        checkpoint = checkpoint_with_custom_code(tiny_checkpoint, tmp_path / f"custom-{name}", markers)
        home = tmp_path / f"home-{name}"
        # Transformers copies trusted code into its modules cache: kept in the temp folder, and nothing online.
        env = {**os.environ, HOME_ENV: str(home), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "ovchat.cli", "export", str(checkpoint), "-o", str(tmp_path / name), *flags]
        # Both at once: each spends most of its time importing libraries.
        runs[name] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = {name: run.communicate(timeout=300)[1] for name, run in runs.items()}
    # Without the flag: one line saying the checkpoint has code to run, and none of it ran.
    assert runs["without"].returncode != 0
    assert stderr["without"].strip().splitlines()[-1].startswith("ovchat: error: "), stderr["without"]
    assert "custom code" in stderr["without"] and "Traceback" not in stderr["without"]
    assert list((tmp_path / "markers-without").iterdir()) == []
    assert not (tmp_path / "without").exists()
    # With it, the checkpoint's code ran (and stopped the export): the marker does show code that runs.
    assert (tmp_path / "markers-with" / "config").read_text() == "ran", stderr["with"]
    assert "the marker code ran" in stderr["with"]


@pytest.mark.parametrize(
    ("argv", "trusted"),
    [
        pytest.param(["export", "some-checkpoint"], False, id="export-default"),
        pytest.param(["export", "some-checkpoint", "--trust-remote-code"], True, id="export-with-flag"),
    ],
)
def test_the_export_command_trusts_remote_code_only_when_told(argv: list[str], trusted: bool) -> None:
    assert build_parser().parse_args(argv).trust_remote_code is trusted


# -- no pickle loading -------------------------------------------------------------------------------

PRODUCT_FILES = sorted([*ROOT.joinpath("ovchat").rglob("*.py"), *ROOT.glob("*.py")])
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
UNPICKLING_CALLS = {"torch.load", "np.load", "numpy.load", "pd.read_pickle", "pandas.read_pickle"}
# The batched engine's child process: multiprocessing's Connection pickles messages over a socket pair that only
# ovchat's own two processes hold (token ids, settings, errors), never anything read from a file.
OWN_PROCESS_PIPE = {"ovchat/engine/backends/batched.py", "ovchat/engine/backends/batch_scheduler.py"}


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def unpickling_in(path: Path) -> list[str]:
    """What in the file could unpickle: imports of pickling modules, calls that load pickles, Connection."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNPICKLING_MODULES:
                found.append(node.module)
            if node.module == "multiprocessing.connection":
                found.append("multiprocessing.connection")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name in UNPICKLING_CALLS or any(keyword.arg == "allow_pickle" for keyword in node.keywords):
                found.append(name)
    return found


def test_the_product_loads_no_pickles() -> None:
    assert len(PRODUCT_FILES) > 50  # the scan sees the package
    found = {str(path.relative_to(ROOT)): unpickling_in(path) for path in PRODUCT_FILES}
    found = {name: what for name, what in found.items() if what}
    assert set(found) == OWN_PROCESS_PIPE, found
    assert all(what == ["multiprocessing.connection"] for what in found.values()), found


def test_the_scan_would_see_an_unpickling_call(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import numpy as np\nimport torch\nfrom pickle import loads\n"
                      "torch.load('w.bin')\nnp.load('a.npy', allow_pickle=True)\n")  # fmt: skip
    assert unpickling_in(sample) == ["pickle", "torch.load", "np.load"]


# -- the server and the page on loopback ---------------------------------------------------------------


def listening_addresses(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses sockets listen on at ``port``, from the kernel's own tables."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in the machine's (little-endian) order.
            words = b"".join(raw[index : index + 4][::-1] for index in range(0, len(raw), 4))
            found.append(ipaddress.ip_address(words))
    return found


def test_the_server_listens_on_loopback_only_by_default(keyed: ServerProcess) -> None:
    addresses = listening_addresses(keyed.port)
    assert addresses == [ipaddress.ip_address("127.0.0.1")]


def test_the_page_listens_on_loopback_only_as_run_sh_starts_it(tmp_path: Path) -> None:
    # As run.sh runs it: from the project folder (its .streamlit/config.toml), no address flag.
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "chat_streamlit.py", "--server.headless", "true",
               "--server.port", str(port)]  # fmt: skip
    env = {**os.environ, HOME_ENV: str(tmp_path / "home")}
    with ServerProcess("page", command, port, tmp_path / "logs", health_path="/_stcore/health", env=env, cwd=ROOT):
        addresses = listening_addresses(port)
    assert addresses and all(address.is_loopback for address in addresses), addresses


def exposure(*argv: str) -> str | None:
    return check_exposure(build_parser().parse_args(["serve", *argv]))


@pytest.mark.parametrize(
    ("argv", "env_key", "outcome"),
    [
        pytest.param([], None, None, id="default-host"),
        pytest.param(["--host", "localhost"], None, None, id="localhost"),
        pytest.param(["--host", "127.0.0.1"], None, None, id="127.0.0.1"),
        pytest.param(["--host", "127.8.9.10"], None, None, id="other-127-address"),
        pytest.param(["--host", "::1"], None, None, id="ipv6-loopback"),
        pytest.param(["--host", "0.0.0.0"], None, "refused", id="all-ipv4"),
        pytest.param(["--host", "::"], None, "refused", id="all-ipv6"),
        pytest.param(["--host", ""], None, "refused", id="empty-host-is-all"),
        pytest.param(["--host", "192.168.1.10"], None, "refused", id="lan-address"),
        pytest.param(["--host", "my-laptop.lan"], None, "refused", id="host-name"),
        pytest.param(["--host", "0.0.0.0", "--api-key", "k1"], None, "k1", id="all-with-key"),
        pytest.param(["--host", "0.0.0.0"], "k2", "k2", id="all-with-key-from-env"),
        pytest.param(["--host", "0.0.0.0", "--allow-no-key"], None, None, id="all-told-to-serve-open"),
    ],
)
def test_another_address_than_loopback_needs_a_key_or_allow_no_key(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env_key: str | None, outcome: str | None
) -> None:
    if env_key is None:
        monkeypatch.delenv(API_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(API_KEY_ENV, env_key)
    if outcome == "refused":
        with pytest.raises(OvchatError) as caught:
            exposure(*argv)
        assert "without an API key" in str(caught.value) and "--allow-no-key" in str(caught.value)
    else:
        assert exposure(*argv) == outcome


def test_serve_on_another_address_without_a_key_is_a_one_line_error(tiny_irs: dict[str, Path]) -> None:
    env = {name: value for name, value in os.environ.items() if name != API_KEY_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "ovchat.cli", "serve", "--model", str(tiny_irs["int8"]), "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.startswith("ovchat: error: serving on 0.0.0.0 without an API key"), result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        pytest.param(["--cors-origin", "http://localhost:3000/"], "nothing after it", id="origin-with-path"),
        pytest.param(["--cors-origin", "localhost:3000x"], "scheme://host[:port]", id="origin-without-scheme"),
        pytest.param(["--write-timeout", "0"], "--write-timeout must be in (0, 86400]", id="write-timeout-zero"),
        pytest.param(["--write-timeout", "inf"], "--write-timeout must be in (0, 86400]", id="write-timeout-inf"),
        pytest.param(["--ray", "--cors-origin", ALLOWED], "apply without --ray only", id="cors-with-ray"),
    ],
)
def test_a_bad_security_flag_is_refused(argv: list[str], words: str) -> None:
    with pytest.raises(OvchatError) as caught:
        exposure(*argv)
    assert words in str(caught.value)


# -- the API key -------------------------------------------------------------------------------------


def test_the_gate_compares_the_key_in_constant_time() -> None:
    source = inspect.getsource(Gate)
    assert "hmac.compare_digest(" in source
    assert '== f"Bearer' not in source and '!= f"Bearer' not in source


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        pytest.param(f"Bearer {KEY}".encode(), 200, id="right-key"),
        pytest.param(None, 401, id="no-header"),
        pytest.param(b"", 401, id="empty"),
        pytest.param(f"Bearer {WRONG_KEY}".encode(), 401, id="wrong-key"),
        pytest.param(f"Bearer {KEY[:-1]}".encode(), 401, id="key-minus-its-last-character"),
        pytest.param(f"Bearer {KEY}x".encode(), 401, id="key-plus-a-character"),
        pytest.param(f"bearer {KEY}".encode(), 401, id="lowercase-scheme"),
        pytest.param(KEY.encode(), 401, id="key-without-scheme"),
        pytest.param(f"Basic {KEY}".encode(), 401, id="basic-scheme"),
        pytest.param("Bearer clé".encode("latin-1"), 401, id="latin-1-bytes"),
        pytest.param("Bearer ключ".encode(), 401, id="utf-8-bytes"),
    ],
)
def test_only_the_exact_key_opens_the_api(keyed: ServerProcess, authorization: bytes | None, status: int) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.get(f"{keyed.url}/v1/models", headers=headers, timeout=30)
    if status == 200:
        assert response.status_code == 200 and response.json()["data"][0]["id"] == MODEL
    else:
        error = assert_openai_error(response, 401, "invalid or missing API key")
        assert error["code"] == "invalid_api_key"
        assert KEY not in response.text and WRONG_KEY not in response.text
    assert httpx.get(f"{keyed.url}/v1/models", headers=authorized(), timeout=30).status_code == 200


def test_the_key_right_or_wrong_is_never_logged(keyed: ServerProcess) -> None:
    # The key in every place a request can carry it, with the right and the wrong one, on good requests and on
    # ones the server refuses at each of its layers (uvicorn's parser, the gate, the app, the engine).
    for key in (KEY, WRONG_KEY):
        headers = authorized(key)
        httpx.post(f"{keyed.url}{CHAT}", json=GOOD, headers=headers, timeout=60)
        httpx.post(f"{keyed.url}{CHAT}", json={**GOOD, "temperature": key}, headers=headers, timeout=60)
        httpx.post(f"{keyed.url}{CHAT}", json={**GOOD, "messages": [{"role": key, "content": "x"}]}, headers=headers,
                   timeout=60)  # fmt: skip
        httpx.post(f"{keyed.url}{CHAT}", json={**GOOD, "model": key}, headers=headers, timeout=60)
        httpx.post(f"{keyed.url}{CHAT}", json={**GOOD, "max_tokens": 4000}, headers=headers, timeout=60)
        httpx.get(f"{keyed.url}/v1/{key}", headers=headers, timeout=60)
        httpx.post(f"{keyed.url}{CHAT}", content=key, headers={**headers, "Content-Type": "application/json"},
                   timeout=60)  # fmt: skip
        # A header uvicorn's parser refuses, with the key in it.
        with socket.create_connection(("127.0.0.1", keyed.port), timeout=30) as sock:
            sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                         f"Bad Header {key}: x\r\n\r\n".encode())  # fmt: skip
            assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    assert httpx.get(f"{keyed.url}/health", timeout=30).status_code == 200
    logs = [path for path in Path(keyed.stdout_log).parent.parent.rglob("*") if path.is_file()]
    assert keyed.stderr_log in logs and "ready" in keyed.stderr_log.read_text()
    for path in logs:
        text = path.read_bytes()
        assert KEY.encode() not in text and WRONG_KEY.encode() not in text, path


# -- CORS --------------------------------------------------------------------------------------------

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        pytest.param("OPTIONS", CHAT, PREFLIGHT, id="preflight"),
        pytest.param("POST", CHAT, authorized(), id="chat-with-the-key"),
        pytest.param("POST", CHAT, {}, id="chat-without-a-key"),
        pytest.param("GET", "/v1/models", authorized(), id="models"),
        pytest.param("GET", "/metrics", {}, id="metrics"),
    ],
)
def test_cors_is_closed_by_default(keyed: ServerProcess, method: str, path: str, headers: dict) -> None:
    before = replies_made(keyed)
    body = json.dumps(GOOD) if method == "POST" else None
    from_page = {"Origin": EVIL, "Content-Type": "application/json", **headers}
    response = httpx.request(method, f"{keyed.url}{path}", content=body, headers=from_page, timeout=60)
    assert "access-control-allow-origin" not in response.headers
    error = assert_openai_error(response, 403, f"comes from {EVIL}", f"--cors-origin {EVIL}")
    assert error["code"] == "origin_not_allowed"
    assert replies_made(keyed) == before  # the model never ran for the page
    # The same request from a program (no Origin) is served.
    if method != "OPTIONS":
        plain = httpx.request(method, f"{keyed.url}{path}", content=body,
                              headers={"Content-Type": "application/json", **authorized()}, timeout=60)  # fmt: skip
        assert plain.status_code == 200, plain.text


@pytest.fixture(scope="module")
def open_to_one_page(tiny_irs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("serve-cors")
    with serve(tiny_irs["int8"], home, "serve-cors", "--model-name", MODEL, "--cors-origin", ALLOWED) as process:
        yield process


@pytest.mark.parametrize(
    ("origin", "method", "status", "allowed"),
    [
        pytest.param(ALLOWED, "OPTIONS", 200, True, id="allowed-preflight"),
        pytest.param(ALLOWED, "POST", 200, True, id="allowed-chat"),
        pytest.param(EVIL, "OPTIONS", 400, False, id="other-preflight"),
        pytest.param(EVIL, "POST", 403, False, id="other-chat"),
        pytest.param(f"{ALLOWED}.evil.example", "POST", 403, False, id="allowed-as-a-prefix"),
        pytest.param("null", "POST", 403, False, id="null-origin"),
    ],
)
def test_cors_origin_opens_the_api_to_the_pages_named(
    open_to_one_page: ServerProcess, origin: str, method: str, status: int, allowed: bool
) -> None:
    headers = {"Origin": origin, "Content-Type": "application/json", **(PREFLIGHT if method == "OPTIONS" else {})}
    body = json.dumps(GOOD) if method == "POST" else None
    response = httpx.request(method, f"{open_to_one_page.url}{CHAT}", content=body, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    if allowed:
        assert response.headers["access-control-allow-origin"] == origin
        if method == "OPTIONS":
            assert "authorization" in response.headers["access-control-allow-headers"].lower()
        else:
            assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    else:
        assert "access-control-allow-origin" not in response.headers
        if method == "POST":
            assert_openai_error(response, 403, f"comes from {origin}")


# -- request limits ----------------------------------------------------------------------------------


def chunks(body: bytes, size: int = 2**16) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def big_body() -> bytes:
    return json.dumps({**GOOD, "messages": [{"role": "user", "content": "x" * DEFAULT_MAX_BODY_BYTES}]}).encode()


@pytest.mark.parametrize(
    ("key", "how", "status", "words"),
    [
        # A stranger's body is not read at all, however it is sent.
        pytest.param(None, "length", 413, "over the server's limit", id="stranger-oversized-with-length"),
        pytest.param(None, "chunked", 401, "invalid or missing API key", id="stranger-chunked-not-read"),
        pytest.param(KEY, "length", 413, f"limit of {DEFAULT_MAX_BODY_BYTES} bytes", id="oversized-with-length"),
        pytest.param(KEY, "chunked", 413, f"limit of {DEFAULT_MAX_BODY_BYTES} bytes", id="oversized-chunked"),
        pytest.param(KEY, "messages", 400, f"over this server's limit of {DEFAULT_MAX_MESSAGES}", id="messages"),
    ],
)
def test_bodies_and_message_counts_are_limited(
    keyed: ServerProcess, key: str | None, how: str, status: int, words: str
) -> None:
    headers = {"Content-Type": "application/json", **(authorized(key) if key else {})}
    if how == "messages":
        messages = [{"role": ("user", "assistant")[index % 2], "content": "x"} for index in range(2 * 5000 + 1)]
        content: bytes | Iterator[bytes] = json.dumps({**GOOD, "messages": messages}).encode()
    else:
        content = big_body() if how == "length" else chunks(big_body())
    response = httpx.post(f"{keyed.url}{CHAT}", content=content, headers=headers, timeout=60)
    assert_openai_error(response, status, words)
    assert httpx.post(f"{keyed.url}{CHAT}", json=GOOD, headers=authorized(), timeout=60).status_code == 200
