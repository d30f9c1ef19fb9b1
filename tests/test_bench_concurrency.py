"""`ovchat bench --concurrency`: its figures from made-up runs, its flag errors, and a real run of
`ovchat serve`, the lock and the in-process engine on the default model. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovchat.bench.concurrency import goals_of, parse_levels, summarize_target
from ovchat.errors import OvchatError
from ovchat.paths import HOME_ENV


def level_run(clients: int, aggregate: float, ttfts: list[float], tokens: int = 65, decode_s: float = 1.0) -> dict:
    runs = [{"ttft_s": t, "tokens": tokens, "decode_s": decode_s, "total_s": t + decode_s} for t in ttfts]
    return {"clients": clients, "wall_s": 1.0, "aggregate_tok_s": aggregate, "runs": runs, "probe_s": [0.002, 0.004]}


def test_levels_parse_sorted_and_bad_ones_are_one_line_errors() -> None:
    assert parse_levels("4,1,2,2") == (1, 2, 4)
    for bad in ("", "a,b", "0,1", "1,99"):
        with pytest.raises(OvchatError):
            parse_levels(bad)


def test_a_targets_summary_compares_each_level_with_one_client() -> None:
    summary = summarize_target(
        {
            1: [level_run(1, 50.0, [0.1]), level_run(1, 60.0, [0.3])],
            4: [level_run(4, 150.0, [0.1, 0.2, 0.3, 0.5]), level_run(4, 170.0, [0.2, 0.2, 0.2, 0.4])],
        }
    )
    alone, four = summary["1"], summary["4"]
    assert alone["aggregate_tok_s"] == 55.0 and alone["ttft_s"] == pytest.approx(0.2)
    assert four["aggregate_tok_s"] == 160.0
    assert four["aggregate_vs_1"] == pytest.approx(160 / 55)
    assert four["ttft_s"] == pytest.approx(0.2)  # the median of all eight clients
    assert four["ttft_max_s"] == pytest.approx(0.45)  # the median over rounds of each round's worst client
    assert four["ttft_max_vs_1"] == pytest.approx(0.45 / 0.2)
    assert four["per_user_tok_s"] == 64.0  # 65 tokens: 64 after the first, in one second
    assert four["probe_ms"] == pytest.approx(3.0) and four["probe_max_ms"] == pytest.approx(4.0)


def test_goals_say_met_not_met_or_not_measured() -> None:
    serve = summarize_target({1: [level_run(1, 50.0, [0.1])], 4: [level_run(4, 120.0, [0.1, 0.1, 0.1, 0.3])]})
    lock = summarize_target({1: [level_run(1, 52.0, [0.1])], 4: [level_run(4, 50.0, [0.1, 0.9, 1.8, 2.7])]})
    goals = {goal["goal"]: goal for goal in goals_of({"serve": serve, "serve-thread": lock, "llamacpp": lock})}
    throughput = next(goal for name, goal in goals.items() if "aggregate tok/s at least 2x" in name)
    assert throughput["ratio"] == pytest.approx(120 / 50) and throughput["met"] is True
    ttft = next(goal for name, goal in goals.items() if "TTFT at most 2x" in name)
    assert ttft["ratio"] == pytest.approx(3.0) and ttft["met"] is False
    above = next(goal for name, goal in goals.items() if "llama-cpp-python" in name)
    assert above["ratio"] == pytest.approx(120 / 50) and above["met"] is True
    in_process = next(goal for name, goal in goals.items() if "in-process" in name)
    assert in_process["ratio"] is None and in_process["met"] is None
    responsive = next(goal for name, goal in goals.items() if "API latency" in name)
    assert responsive["ratio"] == pytest.approx(1.0) and responsive["met"] is False  # equal is not below


def bench(home: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, HOME_ENV: str(home)}
    return subprocess.run(
        [sys.executable, "-m", "ovchat.cli", "bench", *flags], capture_output=True, text=True, env=env, timeout=900
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--concurrency", "1,x"], "--concurrency takes numbers"),
        (["--concurrency", "1", "--engines", "serve,ollama"], "unknown target 'ollama'"),
        (["--concurrency", "1", "--threads", "1"], "--concurrency takes one --model"),
        (["--concurrency", "1", "--llama-server", "/nowhere/llama-server"], "no such file"),
    ],
)
def test_concurrency_flag_errors_are_one_line(
    tiny_irs: dict[str, Path], tmp_path: Path, flags: list[str], message: str
) -> None:
    result = bench(tmp_path, "--model", str(tiny_irs["int8"]), *flags)
    assert result.returncode == 2 or result.returncode == 1
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_concurrency_bench_runs_both_serve_loops_the_lock_and_the_engine(
    default_model_ir: Path, tmp_path: Path
) -> None:
    report_path, chart = tmp_path / "concurrency.json", tmp_path / "concurrency.png"
    result = bench(
        tmp_path / "home", "--model", str(default_model_ir), "--concurrency", "1,2", "--quick",
        "--engines", "serve,serve-thread,lock,in-process", "--report", str(report_path), "--plot", str(chart),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert list(report["targets"]) == ["serve", "serve-thread", "lock", "in-process"]
    for target, levels in report["targets"].items():
        assert list(levels) == ["1", "2"], target
        for level, figures in levels.items():
            assert len(figures["rounds"][0]["runs"]) == int(level)
            assert figures["aggregate_tok_s"] > 0 and figures["ttft_s"] > 0 and figures["tokens"] > 1
    assert report["targets"]["serve"]["2"]["probe_ms"] is not None  # the servers were probed under load
    assert report["targets"]["in-process"]["2"]["probe_ms"] is None
    assert report["machine"]["cpu"]
    goals = {goal["goal"]: goal for goal in report["goals"]}
    assert any("in-process" in name and goal["ratio"] is not None for name, goal in goals.items())
    assert all(goal["met"] is None for name, goal in goals.items() if "4 clients" in name)  # 4 was not run
    assert "serve" in result.stdout and "aggregate tok/s" in result.stdout
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_the_ray_targets_serve_with_one_and_two_replicas(tmp_path: Path) -> None:
    from ovchat.bench.concurrency import RAY_TARGETS, server_command

    for target, replicas in RAY_TARGETS.items():
        command, health = server_command(target, tmp_path, 8123, max_clients=4, threads=2)
        assert command[1:4] == ["-m", "ovchat.cli", "serve"] and health == "/health"
        assert command[command.index("--replicas") + 1] == str(replicas) and "--ray" in command
        assert command[command.index("--parallel") + 1] == "4"
