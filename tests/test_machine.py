"""Facts the reports record about the process: a worker's peak memory is its own, not its parent's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ovchat.machine import cpu_name, peak_rss_mb, process_tree_peak_rss_mb, process_tree_rss_mb

CHILD_PEAK = "from ovchat.machine import peak_rss_mb; print(peak_rss_mb())"


def test_a_child_process_reports_its_own_peak_not_its_parents() -> None:
    held = bytearray(600 * 2**20)  # the parent holds 600 MB, as the bench does after dequantizing a GGUF
    held[:: 2**12] = b"\x01" * len(held[:: 2**12])  # touch every page so it is resident
    assert peak_rss_mb() >= 600 and process_tree_rss_mb() >= 600
    child = subprocess.run([sys.executable, "-c", CHILD_PEAK], capture_output=True, text=True, check=True)
    assert float(child.stdout) < 400, f"the child reported {child.stdout.strip()} MB as its own peak"
    del held


def test_the_tree_peak_counts_a_child_holding_the_model() -> None:
    """The page's loop keeps the model in a child process: the bench's figure must include it."""
    holder = "h = bytearray(300 * 2**20); h[:: 2**12] = b'\\x01' * len(h[:: 2**12]); print('held', flush=True); input()"
    child = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        own = peak_rss_mb()
        assert process_tree_peak_rss_mb() >= own + 300
        assert process_tree_rss_mb() >= 300
    finally:
        child.communicate("\n", timeout=30)


def test_the_cpu_has_a_name() -> None:
    assert cpu_name().strip()


def test_the_kv_cache_precision_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """f16 where there is no AVX-512 (the u8 cache decoded slower on an AVX2 EPYC), the plugin's u8 elsewhere;
    a property the caller gives still wins."""
    from ovchat.engine import runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert runtime.compile_properties("CPU", use_cache_dir=False)["KV_CACHE_PRECISION"] == "f16"
    given = runtime.compile_properties("CPU", {"KV_CACHE_PRECISION": "u8"}, use_cache_dir=False)
    assert given["KV_CACHE_PRECISION"] == "u8"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert "KV_CACHE_PRECISION" not in runtime.compile_properties("CPU", use_cache_dir=False)
    assert "KV_CACHE_PRECISION" not in runtime.compile_properties("GPU", use_cache_dir=False)
