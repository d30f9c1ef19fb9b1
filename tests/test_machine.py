"""Facts the reports record about the process: a worker's peak memory is its own, not its parent's."""

from __future__ import annotations

import subprocess
import sys

from ovchat.machine import cpu_name, peak_rss_mb, rss_mb

CHILD_PEAK = "from ovchat.machine import peak_rss_mb; print(peak_rss_mb())"


def test_a_child_process_reports_its_own_peak_not_its_parents() -> None:
    held = bytearray(600 * 2**20)  # the parent holds 600 MB, as the bench does after dequantizing a GGUF
    held[:: 2**12] = b"\x01" * len(held[:: 2**12])  # touch every page so it is resident
    assert peak_rss_mb() >= 600 and rss_mb() >= 600
    child = subprocess.run([sys.executable, "-c", CHILD_PEAK], capture_output=True, text=True, check=True)
    assert float(child.stdout) < 400, f"the child reported {child.stdout.strip()} MB as its own peak"
    del held


def test_the_cpu_has_a_name() -> None:
    assert cpu_name().strip()
