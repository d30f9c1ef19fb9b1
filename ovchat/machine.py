"""Facts about this process and machine that reports record: memory high-water mark, CPU name."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark in MiB, children excluded.

    Read from /proc (VmHWM) where there is one: getrusage's ru_maxrss survives fork and exec, so a
    bench worker started by a parent holding 800 MB reported 800 MB as its own peak.
    """
    own = _status_hwm_mb("self")
    return own if own is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


def _status_hwm_mb(pid: int | str) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def process_tree_peak_rss_mb() -> float:
    """The peak resident memory of this process plus that of each child process still running, in MiB.

    The page's default loop keeps the model in a child process (the batched scheduler), so this process's
    own peak leaves the model out. The sum of each process's own peak is an upper bound on the tree's: the
    processes need not have peaked at the same moment.
    """
    import psutil

    total = peak_rss_mb()
    for child in psutil.Process().children(recursive=True):
        total += _status_hwm_mb(child.pid) or 0.0
    return total


def process_tree_rss_mb() -> float:
    """Resident memory now of this process and its children (pages they share are counted twice)."""
    import psutil

    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def cpu_name() -> str:
    """The CPU's model name as the kernel reports it: every figure says on which CPU it was taken."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them (avx512f, amx_tile, ...); empty where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_amx() -> bool:
    """Intel AMX tiles (Sapphire Rapids and later Xeons)."""
    return "amx_tile" in cpu_flags()


def machine_facts(threads: int) -> dict[str, Any]:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "amx": has_amx(),
    }
