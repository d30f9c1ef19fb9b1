"""llama.cpp's own tools, built once from the llama.cpp that the pinned llama-cpp-python vendors: a fair native anchor.

The ``llamacpp`` bench row goes through llama-cpp-python: a Python sampling loop, one request at a time, and
weight repacking patched off. llama.cpp itself is a stronger anchor, so this module builds its ``llama-bench``,
``llama-server``, ``llama-tokenize`` and ``llama-quantize`` from the same sources as the Python package (the same
llama.cpp commit, so both rows measure one llama.cpp), with CMake, once, into
``<data folder>/tools/llama.cpp-<version>``, and runs them.

A build happens in a staging folder beside the final one; the finished binaries and a stamp file move into
place with one rename, so a failed or interrupted build never looks complete. The binaries are linked statically
(``BUILD_SHARED_LIBS=OFF``): they do not point back into the build tree, which is deleted afterwards.

Linux and macOS only (Makefile or Ninja generators, binaries without ``.exe``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ovchat.errors import OvchatError
from ovchat.paths import data_home

PACKAGE = "llama-cpp-python"
CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
TOOL_NAMES: tuple[str, ...] = ("llama-bench", "llama-server", "llama-tokenize", "llama-quantize")
STAMP_NAME = "ovchat-build.json"
LOG_NAME = "build.log"
CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    # Tuned for this CPU (AVX2/AVX-512/AMX as present), as a user building llama.cpp for their machine would.
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    # Static binaries: they keep working after the build tree is deleted (no RPATH into it).
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    # Otherwise the server's build step downloads its web UI from Hugging Face; the bench does not need it.
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)
# One progress line per this many percent of the build, so a 10-minute build prints about 20 lines.
PROGRESS_STEP = 5
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE_STEP = re.compile(r"^\[\s*(\d+)%\]")
_CONSTRAINT = re.compile(r"^\s*llama[-_.]cpp[-_.]python\s*==\s*([^\s;#]+)", re.IGNORECASE)
_WEIGHT_BUFFER = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")
_TENSOR_TYPE = re.compile(r"- type\s+(\w+):\s+(\d+) tensors")
_NOT_REPACKED = "cannot be used with preferred buffer type"
# llama-bench -v logs every graph build (megabytes for pp1024+tg128): only these lines are kept.
_LOG_WORTH_KEEPING = re.compile(r"model buffer size|- type\s+\w+:|preferred buffer type|error|failed", re.IGNORECASE)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LlamacppTools:
    """A complete build of llama.cpp's tools: their folder and the llama-cpp-python version they come from."""

    version: str
    folder: Path

    @property
    def bin_dir(self) -> Path:
        return self.folder / "bin"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def bench(self) -> Path:
        return self.binary("llama-bench")

    @property
    def server(self) -> Path:
        return self.binary("llama-server")

    @property
    def tokenize(self) -> Path:
        return self.binary("llama-tokenize")

    @property
    def quantize(self) -> Path:
        return self.binary("llama-quantize")

    def stamp(self) -> dict[str, Any]:
        """What the build recorded: version, CMake flags, generator, seconds taken."""
        return json.loads((self.folder / STAMP_NAME).read_text())


# ---------------------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------------------


def pinned_llamacpp_version(constraints: Path = CONSTRAINTS) -> str:
    """The llama-cpp-python version ``constraints.txt`` pins, else the installed one (an install without the repo)."""
    if constraints.is_file():
        for line in constraints.read_text().splitlines():
            match = _CONSTRAINT.match(line)
            if match:
                return match.group(1)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        raise OvchatError(
            f"no llama-cpp-python version to build llama.cpp from: {constraints} pins none and it is not installed"
        ) from None


def tools_folder(version: str, home: Path | None = None) -> Path:
    """Where the tools built from llama-cpp-python ``version`` live (complete or not)."""
    return (home or data_home()) / "tools" / f"llama.cpp-{version}"


def staging_folder(version: str, home: Path | None = None) -> Path:
    """Where a build of ``version`` runs before its result is renamed into :func:`tools_folder`."""
    final = tools_folder(version, home)
    return final.with_name(final.name + ".staging")


def is_complete(folder: Path, version: str) -> bool:
    """Whether ``folder`` holds a finished build of ``version``: its stamp (written last) and every tool."""
    try:
        stamp = json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("version") != version:
        return False
    return all(os.access(folder / "bin" / name, os.X_OK) for name in TOOL_NAMES)


def cached_tools(version: str | None = None, home: Path | None = None) -> LlamacppTools | None:
    """The complete build of ``version`` (default: the pinned one) under the data folder, or None."""
    version = version or pinned_llamacpp_version()
    folder = tools_folder(version, home)
    return LlamacppTools(version, folder) if is_complete(folder, version) else None


def cached_llama_server(home: Path | None = None) -> Path | None:
    """The ``llama-server`` built by :func:`ensure_llamacpp_tools`, if that build is complete; never builds."""
    try:
        tools = cached_tools(home=home)
    except OvchatError:  # no version to look for: nothing can have been built for it
        return None
    return tools.server if tools else None


# ---------------------------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------------------------


def _program(name: str) -> str | None:
    """``name`` on the PATH, or beside this Python (``pip install cmake ninja`` into a venv not activated)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def _compiler(env_var: str, names: Sequence[str]) -> str | None:
    configured = os.environ.get(env_var, "").split()
    if configured:
        return _program(configured[0])
    return next((found for found in map(_program, names) if found), None)


def check_build_programs() -> tuple[str, str | None]:
    """cmake and ninja (None: CMake's Makefiles); one-line OvchatError if cmake or a C/C++ compiler is missing."""
    cmake = _program("cmake")
    if cmake is None:
        raise OvchatError(
            "building llama.cpp's tools needs cmake, which is not on the PATH "
            "(install it: apt-get install cmake, or pip install cmake)"
        )
    if _compiler("CC", ("cc", "gcc", "clang")) is None or _compiler("CXX", ("c++", "g++", "clang++")) is None:
        raise OvchatError(
            "building llama.cpp's tools needs a C and C++ compiler, and none is on the PATH "
            "(install one: apt-get install build-essential, or set CC and CXX)"
        )
    return cmake, _program("ninja")


def build_progress(line: str) -> float | None:
    """The build's percentage from one line of its output: Ninja's ``[n/m]`` or Make's ``[ p%]``."""
    ninja = _NINJA_STEP.match(line)
    if ninja:
        done, total = int(ninja.group(1)), int(ninja.group(2))
        return 100.0 * done / total if total else None
    make = _MAKE_STEP.match(line)
    return float(make.group(1)) if make else None


def configure_command(cmake: str, ninja: str | None, source: Path, build: Path) -> list[str]:
    """CMake's configure step for the vendored llama.cpp."""
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    return [cmake, "-S", str(source), "-B", str(build), *generator, *CMAKE_FLAGS]


def build_command(cmake: str, build: Path, jobs: int) -> list[str]:
    """CMake's build step for the tools only (not llama.cpp's tests, examples or other tools)."""
    return [cmake, "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *TOOL_NAMES]


def extract_vendored_llamacpp(sdist: Path, destination: Path) -> Path:
    """Unpack only ``vendor/llama.cpp`` from llama-cpp-python's sdist; the path of its source tree."""
    with tarfile.open(sdist) as archive:
        members = archive.getmembers()
        top = members[0].name.split("/")[0] if members else ""
        prefix = f"{top}/vendor/llama.cpp/"
        wanted = [member for member in members if member.name.startswith(prefix)]
        # filter="data": no absolute paths, no links out of the destination, no device files.
        archive.extractall(destination, members=wanted, filter="data")
    source = destination / top / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        raise OvchatError(f"{sdist.name} has no vendor/llama.cpp/CMakeLists.txt: not a llama-cpp-python sdist")
    return source


def _last_error_line(lines: Sequence[str]) -> str:
    """The line that best says why a step failed: the last one naming an error, else the last one."""
    meaningful = [line.strip() for line in lines if line.strip()]
    errors = [line for line in meaningful if "error" in line.lower()]
    return (errors or meaningful or ["no output"])[-1][:300]


def _run_step(
    what: str, command: Sequence[str], log: Path, on_line: Callable[[str], None] | None = None, cwd: Path | None = None
) -> None:
    """Run one build step, its output appended to ``log``; a failure is one OvchatError line citing the log."""
    tail: list[str] = []
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(command)}\n")
        sink.flush()
        process = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                sink.write(line)
                tail = [*tail[-39:], line]
                if on_line:
                    on_line(line)
            code = process.wait()
        finally:
            if process.poll() is None:  # interrupted (Ctrl-C): leave no compiler running
                process.kill()
                process.wait()
    if code != 0:
        raise OvchatError(
            f"building llama.cpp's tools failed while {what} (exit {code}): {_last_error_line(tail)}; log: {log}"
        )


@contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """One build of a version at a time, across processes (two benches started together build once)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as there is no build support there either
        yield
        return
    with (folder.parent / f".{folder.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download_sdist(version: str, folder: Path, log: Path) -> Path:
    """llama-cpp-python's sdist from PyPI, through pip (which honours the user's index and proxy settings)."""
    existing = sorted(folder.glob("*.tar.gz"))
    if existing:  # kept from an interrupted build
        return existing[0]
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", f"{PACKAGE}=={version}",
        "-d", str(folder),
    ]  # fmt: skip
    _run_step(f"downloading {PACKAGE} {version}'s sources", command, log)
    found = sorted(folder.glob("*.tar.gz"))
    if not found:
        raise OvchatError(f"pip downloaded no sdist of {PACKAGE} {version} into {folder}; log: {log}")
    return found[0]


def ensure_llamacpp_tools(progress: Progress | None = None, version: str | None = None) -> LlamacppTools:
    """llama.cpp's tools built from the sources that llama-cpp-python ``version`` (default: pinned) vendors.

    Reuses a complete build; otherwise downloads the sdist with pip, configures with CMake (Ninja if present),
    builds with one job per CPU, and moves the binaries into place. ``progress`` gets one line per step and
    per few percent of the build. Takes 10 to 20 minutes on 2 cores.
    """
    say = progress or (lambda line: None)
    version = version or pinned_llamacpp_version()
    final = tools_folder(version)
    if is_complete(final, version):
        return LlamacppTools(version, final)
    cmake, ninja = check_build_programs()
    with _build_lock(final):
        if is_complete(final, version):  # another process built it while this one waited
            return LlamacppTools(version, final)
        return _build(version, final, cmake, ninja, say)


def _build(version: str, final: Path, cmake: str, ninja: str | None, say: Progress) -> LlamacppTools:
    staging = final.with_name(final.name + ".staging")
    # What an interrupted build left: only the downloaded sdist is worth keeping. A half-configured CMake tree
    # can hold a compiler or option from before, so the build always starts from a fresh tree.
    for leftover in ("src", "build", "out"):
        shutil.rmtree(staging / leftover, ignore_errors=True)
    out = staging / "out"
    (out / "bin").mkdir(parents=True)
    log = out / LOG_NAME
    started = time.monotonic()

    downloads = staging / "download"
    if not any(downloads.glob("*.tar.gz")):
        say(f"llama.cpp from {PACKAGE} {version}: downloading its sources from PyPI")
    sdist = _download_sdist(version, downloads, log)
    say(f"unpacking vendor/llama.cpp from {sdist.name}")
    try:
        source = extract_vendored_llamacpp(sdist, staging / "src")
    except (tarfile.TarError, EOFError, zlib.error) as error:
        shutil.rmtree(downloads, ignore_errors=True)  # so that the next run downloads it again
        raise OvchatError(f"{sdist.name} is damaged ({error}); it was removed: run again to download it") from None

    generator = "Ninja" if ninja else "Unix Makefiles"
    say(f"configuring with CMake ({generator}, {' '.join(CMAKE_FLAGS)})")
    build = staging / "build"
    _run_step("configuring", configure_command(cmake, ninja, source, build), log)

    jobs = os.cpu_count() or 1
    say(f"building {', '.join(TOOL_NAMES)} with {jobs} jobs (10 to 20 minutes on 2 cores)")
    shown = 0

    def show(line: str) -> None:
        nonlocal shown
        percent = build_progress(line)
        if percent is not None and percent >= shown + PROGRESS_STEP:
            shown = int(percent // PROGRESS_STEP * PROGRESS_STEP)
            say(f"building: {percent:.0f}%")

    _run_step("building", build_command(cmake, build, jobs), log, on_line=show)
    for name in TOOL_NAMES:
        built = build / "bin" / name
        if not built.is_file():
            raise OvchatError(f"the llama.cpp build finished without {built}; log: {log}")
        shutil.copy2(built, out / "bin" / name)

    seconds = time.monotonic() - started
    stamp = {
        "version": version,
        "package": PACKAGE,
        "tools": list(TOOL_NAMES),
        "cmake_flags": list(CMAKE_FLAGS),
        "generator": generator,
        "jobs": jobs,
        "build_seconds": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # The stamp is written inside the staging result, and the result appears under its final name in one
    # rename: a folder under that name without a stamp is a leftover, never a build.
    (out / STAMP_NAME).write_text(json.dumps(stamp, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    shutil.rmtree(staging, ignore_errors=True)
    say(f"built llama.cpp's tools in {seconds / 60:.1f} min: {final / 'bin'}")
    return LlamacppTools(version, final)


# ---------------------------------------------------------------------------------------------------------------
# llama-bench
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaBenchTest:
    """One of llama-bench's tests: a prompt of ``n_prompt`` tokens (pp), or ``n_gen`` generated ones (tg)."""

    n_prompt: int
    n_gen: int
    n_depth: int
    n_threads: int
    repack: bool
    avg_ts: float
    stddev_ts: float
    samples_ts: tuple[float, ...]

    @property
    def name(self) -> str:
        """llama-bench's own name for the test: ``pp1024``, ``tg128``, ``pp512+tg128``."""
        parts = ([f"pp{self.n_prompt}"] if self.n_prompt else []) + ([f"tg{self.n_gen}"] if self.n_gen else [])
        depth = f" @ d{self.n_depth}" if self.n_depth else ""
        return "+".join(parts) + depth


@dataclass(frozen=True)
class LlamaBenchResult:
    """What one llama-bench run reported: its tests and the build and machine it ran on."""

    tests: tuple[LlamaBenchTest, ...]
    build_commit: str
    build_number: int
    cpu_info: str
    gpu_info: str
    backends: str
    model_type: str
    model_size: int
    model_n_params: int
    # From llama.cpp's log (-v): MiB of weights per buffer type. "CPU_REPACK" (or "AMX") here shows that
    # repacking really happened; only "CPU" means no tensor of this file has a repacked layout on this CPU.
    weight_buffers: dict[str, float] = field(default_factory=dict)
    tensor_types: dict[str, int] = field(default_factory=dict)
    # llama.cpp's own word on tensors it could not repack ("... cannot be used with preferred buffer type ...").
    load_notes: tuple[str, ...] = ()
    command: tuple[str, ...] = ()

    def _first(self, prompt: bool) -> LlamaBenchTest | None:
        return next((t for t in self.tests if (t.n_prompt > 0, t.n_gen > 0) == (prompt, not prompt)), None)

    @property
    def pp(self) -> LlamaBenchTest | None:
        """The (first) prompt-processing test."""
        return self._first(prompt=True)

    @property
    def tg(self) -> LlamaBenchTest | None:
        """The (first) text-generation test."""
        return self._first(prompt=False)

    @property
    def repacked(self) -> bool:
        """Whether any weights sat in a repacked (extra) buffer type rather than the plain CPU one."""
        return any(name not in ("CPU", "CPU_Mapped") for name in self.weight_buffers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def llama_bench_command(
    tools: LlamacppTools,
    gguf: Path,
    threads: int,
    prompt_tokens: int = 1024,
    new_tokens: int = 128,
    repetitions: int = 3,
    repack: bool | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The llama-bench command line; ``repack`` None keeps llama.cpp's default (on: ``use_extra_bufts``)."""
    command = [
        str(tools.bench), "-m", str(gguf), "-t", str(threads), "-p", str(prompt_tokens), "-n", str(new_tokens),
        "-r", str(repetitions), "-o", "json",
        # -v: llama.cpp's log on stderr, which names the buffer types the weights were loaded into.
        "-v",
    ]  # fmt: skip
    if repack is not None:
        command += ["--repack", "1" if repack else "0"]
    return [*command, *extra_args]


def parse_llama_bench(stdout: str, stderr: str = "", command: Sequence[str] = ()) -> LlamaBenchResult:
    """llama-bench's ``-o json`` output (a list of tests), with the buffer and tensor types from its ``-v`` log."""
    start = stdout.find("[")
    try:
        entries = json.loads(stdout[start:]) if start >= 0 else None
    except ValueError:
        entries = None
    if not isinstance(entries, list) or not entries:
        raise OvchatError(f"llama-bench printed no JSON list of tests: {stdout.strip()[:200]!r}")
    tests = tuple(
        LlamaBenchTest(
            n_prompt=int(entry["n_prompt"]),
            n_gen=int(entry["n_gen"]),
            n_depth=int(entry.get("n_depth", 0)),
            n_threads=int(entry["n_threads"]),
            repack=bool(entry.get("repack", True)),
            avg_ts=float(entry["avg_ts"]),
            stddev_ts=float(entry["stddev_ts"]),
            samples_ts=tuple(float(value) for value in entry.get("samples_ts", ())),
        )
        for entry in entries
    )
    first = entries[0]
    buffers: dict[str, float] = {}
    for name, mib in _WEIGHT_BUFFER.findall(stderr):
        buffers[name] = float(mib)  # the last load wins: llama-bench reloads only when model parameters change
    types = {name: int(count) for name, count in _TENSOR_TYPE.findall(stderr)}
    notes = tuple(dict.fromkeys(line.strip() for line in stderr.splitlines() if _NOT_REPACKED in line))
    return LlamaBenchResult(
        tests=tests,
        build_commit=str(first.get("build_commit", "")),
        build_number=int(first.get("build_number", 0)),
        cpu_info=str(first.get("cpu_info", "")),
        gpu_info=str(first.get("gpu_info", "")),
        backends=str(first.get("backends", "")),
        model_type=str(first.get("model_type", "")),
        model_size=int(first.get("model_size", 0)),
        model_n_params=int(first.get("model_n_params", 0)),
        weight_buffers=buffers,
        tensor_types=types,
        load_notes=notes,
        command=tuple(command),
    )


def run_llama_bench(
    tools: LlamacppTools,
    gguf: Path,
    threads: int,
    prompt_tokens: int = 1024,
    new_tokens: int = 128,
    repetitions: int = 3,
    extra_args: Sequence[str] = (),
    repack: bool | None = None,
) -> LlamaBenchResult:
    """Run llama-bench on ``gguf``: pp``prompt_tokens`` and tg``new_tokens`` tokens/s, ``repetitions`` times each.

    ``repack`` False passes ``--repack 0``: no extra buffer types (CPU_REPACK, AMX), as the ``llamacpp`` row runs.
    """
    command = llama_bench_command(tools, gguf, threads, prompt_tokens, new_tokens, repetitions, repack, extra_args)
    kept: list[str] = []
    tail: deque[str] = deque(maxlen=5)  # for a failure's message, whatever the lines say
    # stdout (the JSON, small) goes to a file so that only stderr is read here: no pipe can fill and block.
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True, errors="replace")
        try:
            assert process.stderr is not None
            for line in process.stderr:
                tail.append(line)
                if _LOG_WORTH_KEEPING.search(line):
                    kept.append(line)
            code = process.wait()
        finally:
            if process.poll() is None:  # interrupted: do not leave llama-bench busy on every core
                process.kill()
                process.wait()
        stdout.seek(0)
        output = stdout.read()
    if code != 0:
        raise OvchatError(f"llama-bench failed (exit {code}): {_last_error_line([*kept, *tail])}")
    return parse_llama_bench(output, "".join(kept), command)


# ---------------------------------------------------------------------------------------------------------------
# llama-tokenize and llama-quantize
# ---------------------------------------------------------------------------------------------------------------


def llama_tokenize_command(
    tools: LlamacppTools, gguf: Path, prompt_file: Path, add_bos: bool = False, parse_special: bool = True
) -> list[str]:
    """llama-tokenize on a file's exact bytes, printing only the id list."""
    # -f with --no-escape: the text as is (-p would turn "\n" typed as two characters into a newline, and
    # llama-tokenize reads -f files verbatim, a trailing newline included).
    command = [str(tools.tokenize), "-m", str(gguf), "-f", str(prompt_file), "--ids", "--no-escape", "--log-disable"]
    if not add_bos:
        command.append("--no-bos")
    if not parse_special:
        command.append("--no-parse-special")
    return command


def parse_token_ids(stdout: str) -> list[int]:
    """The ids from llama-tokenize ``--ids``'s output, a Python-style list such as ``[1, 2, 3]``."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            ids = json.loads(line)
            if all(isinstance(value, int) for value in ids):
                return ids
    raise OvchatError(f"llama-tokenize printed no list of ids: {stdout.strip()[:200]!r}")


def llama_tokenize(
    tools: LlamacppTools, gguf: Path, text: str, add_bos: bool = False, parse_special: bool = True
) -> list[int]:
    """``text``'s token ids by llama.cpp's own tokenizer.

    The defaults match how the engines tokenize a rendered chat prompt: no BOS added (``--no-bos``; True lets the
    model's ``add_bos`` decide) and special tokens such as ``<|im_start|>`` parsed (llama-tokenize's default).
    """
    with tempfile.TemporaryDirectory(prefix="ovchat-tokenize-") as folder:
        prompt_file = Path(folder) / "prompt.txt"
        prompt_file.write_bytes(text.encode("utf-8"))
        command = llama_tokenize_command(tools, gguf, prompt_file, add_bos, parse_special)
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    if done.returncode != 0:
        raise OvchatError(
            f"llama-tokenize failed (exit {done.returncode}): {_last_error_line(done.stderr.splitlines())}"
        )
    return parse_token_ids(done.stdout)


def llama_quantize(
    tools: LlamacppTools, source: Path, target: Path, kind: str = "Q4_0", allow_requantize: bool = True
) -> Path:
    """``source`` quantized to ``kind`` (a llama-quantize type such as ``Q4_0``) as ``target``.

    Requantizing an already quantized file loses quality: it is meant for speed comparisons (which tensor
    types have a repacked layout), not for chatting.
    """
    options = ["--allow-requantize"] if allow_requantize else []
    command = [str(tools.quantize), *options, str(source), str(target), kind]
    done = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    if done.returncode != 0 or not target.is_file():
        output = (done.stderr + done.stdout).splitlines()
        raise OvchatError(f"llama-quantize failed (exit {done.returncode}): {_last_error_line(output)}")
    return target
