"""``ovchat bench --concurrency 1,2,4,8``: several users at once, over HTTP, with one client for all.

Each target is a server started on a loopback port and spoken to with the official ``openai`` client:

- ``serve``: ``ovchat serve``, the batched loop (replies of all clients advance in the same steps), its
  scheduler in a process of its own;
- ``serve-thread``: ``ovchat serve --batch-loop thread``, the same loop in a thread of the server, where
  each ``step()`` keeps Python's lock;
- ``lock``: ``ovchat serve --backend genai``, one reply at a time, as every reply was before batching;
- ``llamacpp``: llama-cpp-python's OpenAI server (its ``[server]`` extra) on the GGUF the IR came from,
  which answers one request at a time (it has no parallel slots);
- ``llama-server``: llama.cpp's own C++ server with ``--parallel`` slots (continuous batching), where a
  ``llama-server`` binary is given (``--llama-server``, ``$OVCHAT_LLAMA_SERVER`` or on the PATH);
- ``ray-1`` and ``ray-2``: ``ovchat serve --ray`` with one and with two replicas on a local Ray cluster of
  its own (the ``ray`` extra), each replica one batched engine; on one machine its replicas share the
  same cores, so two replicas measure Ray Serve's spreading, not more hardware;

and ``in-process``: :meth:`Engine.stream` called from threads of this process, the reference for what
HTTP costs. Rounds are interleaved (each level on each target in turn) so that a noisy moment hits
every target alike. While a level runs, a probe asks the server for ``/v1/models`` every 100 ms:
its latency shows whether generating starves the server's event loop.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ovchat.bench.report import figure, median, ratio, save_figure
from ovchat.errors import OvchatError
from ovchat.machine import machine_facts
from ovchat.model_folder import source_gguf

RAY_TARGETS = {"ray-1": 1, "ray-2": 2}  # replicas
SERVER_TARGETS: tuple[str, ...] = ("serve", "serve-thread", "lock", "llamacpp", "llama-server", *RAY_TARGETS)
SERVE_LOOPS = {"serve": "process", "serve-thread": "thread"}
LLAMA_SERVER_ENV = "OVCHAT_LLAMA_SERVER"
TARGETS: tuple[str, ...] = (*SERVER_TARGETS, "in-process")
DEFAULT_LEVELS: tuple[int, ...] = (1, 2, 4, 8)
# One question per client, all different, each answered at length by a small chat model.
QUESTIONS: tuple[str, ...] = (
    "Write a long story about a dragon who learns to cook.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy city market at dawn.",
    "Write a long letter to a friend about your summer holidays.",
    "Explain how plants turn sunlight into food.",
    "Tell the history of the printing press in detail.",
    "Describe how to plan a garden, step by step.",
    "Write a long story about a robot who wants to paint.",
)
PROBE_EVERY_S = 0.1
HEADER = [
    "target", "clients", "aggregate tok/s", "vs 1 client", "TTFT median ms", "vs 1 client", "TTFT max ms",
    "per-user tok/s", "API ms under load",
]  # fmt: skip


@dataclass(frozen=True)
class ClientRun:
    """One client's streamed reply, timed from sending the request."""

    ttft_s: float
    tokens: int
    decode_s: float
    total_s: float


def parse_levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise OvchatError(f"--concurrency takes numbers of clients such as 1,2,4,8, not {text!r}") from None
    if not levels or min(levels) < 1 or max(levels) > len(QUESTIONS):
        raise OvchatError(f"--concurrency levels must be between 1 and {len(QUESTIONS)}, not {text!r}")
    return tuple(sorted(set(levels)))


# -- one client, over HTTP or in this process --------------------------------------------------


def http_client_run(client: Any, model: str, question: str, max_tokens: int) -> ClientRun:
    """A greedy streamed chat completion; its tokens from the usage chunk where the server sends one,
    else one per streamed piece (llama.cpp streams a token a chunk)."""
    started = time.perf_counter()
    first = last = None
    pieces = 0
    usage_tokens = None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0.0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        if getattr(chunk, "usage", None) is not None:
            usage_tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            pieces += 1
    if first is None or last is None:
        raise OvchatError(f"the server sent no text for {question!r}")
    return ClientRun(first - started, usage_tokens or pieces, last - first, time.perf_counter() - started)


def engine_client_run(engine: Any, question: str, max_tokens: int) -> ClientRun:
    from ovchat.settings import GenerationSettings

    settings = GenerationSettings(max_new_tokens=max_tokens, temperature=0.0, repetition_penalty=1.0)
    started = time.perf_counter()
    first = last = None
    tokens = 0
    for chunk in engine.stream([{"role": "user", "content": question}], settings):
        if chunk.stats is not None:
            tokens = chunk.stats.new_tokens
        elif chunk.text:
            last = time.perf_counter()
            first = first or last
    if first is None or last is None:
        raise OvchatError(f"the engine made no text for {question!r}")
    return ClientRun(first - started, tokens, last - first, time.perf_counter() - started)


def run_level(clients: int, ask: Callable[[str], ClientRun], probe: Callable[[], None] | None) -> dict[str, Any]:
    """``clients`` questions sent at once; the level's aggregate throughput, its clients' figures, and the
    probe's latencies while they ran."""
    runs: list[ClientRun | BaseException] = [RuntimeError("not run")] * clients
    start = threading.Barrier(clients)

    def one(index: int) -> None:
        start.wait()
        try:
            runs[index] = ask(QUESTIONS[index])
        except BaseException as error:  # reported below, in the bench's thread
            runs[index] = error

    done = threading.Event()
    probes: list[float] = []
    threads = [threading.Thread(target=one, args=(index,)) for index in range(clients)]
    prober = threading.Thread(target=_probe_until, args=(probe, done, probes)) if probe is not None else None
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    if prober is not None:
        prober.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    done.set()
    if prober is not None:
        prober.join()
    failures = [run for run in runs if isinstance(run, BaseException)]
    if failures:
        raise OvchatError(f"a client failed at {clients} clients: {failures[0]}")
    finished = [run for run in runs if isinstance(run, ClientRun)]
    return {
        "clients": clients,
        "wall_s": wall,
        "aggregate_tok_s": sum(run.tokens for run in finished) / wall,
        "runs": [asdict(run) for run in finished],
        "probe_s": probes,
    }


def _probe_until(probe: Callable[[], None], done: threading.Event, latencies: list[float]) -> None:
    while not done.wait(PROBE_EVERY_S):
        began = time.perf_counter()
        probe()
        latencies.append(time.perf_counter() - began)


# -- the targets -------------------------------------------------------------------------------


def gguf_of(ir: Path) -> Path | None:
    """The GGUF file ``ir`` was exported from, if it is still there: what the llama.cpp targets load."""
    gguf = source_gguf(ir)
    return gguf if gguf is not None and gguf.is_file() else None


def llama_server_binary(given: Path | None) -> Path | None:
    found = given or (Path(os.environ[LLAMA_SERVER_ENV]) if os.environ.get(LLAMA_SERVER_ENV) else None)
    if found is None and shutil.which("llama-server"):
        found = Path(shutil.which("llama-server") or "")
    return found if found is not None and found.is_file() else None


def server_command(
    target: str, ir: Path, port: int, max_clients: int, threads: int, llama_server: Path | None = None
) -> tuple[list[str], str]:
    """The command that serves ``target`` on ``port``, and the path that answers 200 when it is ready."""
    if target in ("serve", "serve-thread", "lock"):
        command = [sys.executable, "-m", "ovchat.cli", "serve", "--model", str(ir), "--port", str(port)]
        if target == "lock":
            command += ["--backend", "genai"]
        else:
            command += ["--parallel", str(max(max_clients, 1)), "--batch-loop", SERVE_LOOPS[target]]
        return command, "/health"
    if target in RAY_TARGETS:
        command = [
            sys.executable, "-m", "ovchat.cli", "serve", "--model", str(ir), "--port", str(port), "--ray",
            "--replicas", str(RAY_TARGETS[target]), "--parallel", str(max(max_clients, 1)),
        ]  # fmt: skip
        return command, "/health"
    gguf = gguf_of(ir)
    assert gguf is not None, "unavailable_targets() leaves out the llama.cpp targets without a GGUF"
    if target == "llama-server":
        assert llama_server is not None
        command = [
            str(llama_server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
            # The context is shared by the slots: 2,048 tokens each, as many slots as clients at most.
            "--parallel", str(max_clients), "-c", str(2048 * max_clients), "--alias", ir.name, "--jinja",
        ]  # fmt: skip
        return command, "/health"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", str(threads), "--n_ctx", "4096", "--model_alias", ir.name,
        # By default a new request interrupts the one being streamed (its client gets an empty reply);
        # queued, each client gets its whole reply in turn.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    return command, "/v1/models"


def unavailable_targets(ir: Path, wanted: Sequence[str], llama_server: Path | None) -> dict[str, str]:
    """Why each wanted target that cannot run here is left out."""
    notes = {}
    if "llama-server" in wanted and llama_server is None:
        notes["llama-server"] = (
            f"no llama-server binary: pass --llama-server PATH or set {LLAMA_SERVER_ENV} (README, Performance)"
        )
    if any(target in RAY_TARGETS for target in wanted):
        from importlib.util import find_spec

        if find_spec("ray") is None:
            for target in RAY_TARGETS:
                if target in wanted:
                    notes[target] = "ray[serve] is not installed (./run.sh setup ray)"
    if "llamacpp" in wanted:
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError:
            notes["llamacpp"] = "llama-cpp-python[server] is not installed (pip install -e '.[bench]')"
    if gguf_of(ir) is None:
        for target in ("llama-server", "llamacpp"):
            if target in wanted:
                notes[target] = f"{ir} was not exported from a GGUF file, so llama.cpp has nothing to load"
    return notes


def run_concurrency(
    ir: Path,
    levels: Sequence[int],
    targets: Sequence[str],
    quick: bool,
    logs: Path,
    llama_server: Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Every level on every target, ``rounds`` times interleaved; medians per target and level."""
    import httpx
    import openai

    from ovchat.server.process import ServerProcess, free_port

    rounds, max_tokens = (1, 64) if quick else (3, 128)
    threads = os.cpu_count() or 1
    asks: dict[str, Callable[[str], ClientRun]] = {}
    probes: dict[str, Callable[[], None] | None] = {}
    with ExitStack() as stack:
        for target in targets:
            if target == "in-process":
                progress("loading the engine in this process")
                asks[target] = _in_process(ir, max_tokens)
                probes[target] = None
                continue
            progress(f"starting {target}")
            port = free_port()
            command, health = server_command(target, ir, port, max(levels), threads, llama_server)
            server = stack.enter_context(ServerProcess(target, command, port, logs, health_path=health))
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="bench", max_retries=0, timeout=600)
            model = client.models.list().data[0].id
            asks[target] = _http_ask(client, model, max_tokens)
            probe_client = httpx.Client(base_url=server.url, timeout=60)
            stack.callback(probe_client.close)
            probes[target] = lambda probe_client=probe_client: probe_client.get("/v1/models").raise_for_status()
            progress(f"warming up {target}")
            asks[target](QUESTIONS[0])
        samples: dict[str, dict[int, list[dict[str, Any]]]] = {
            target: {level: [] for level in levels} for target in targets
        }
        for round_index in range(rounds):
            for level in levels:
                for target in targets:
                    progress(f"round {round_index + 1}/{rounds}: {level} clients on {target}")
                    samples[target][level].append(run_level(level, asks[target], probes[target]))
    summaries = {target: summarize_target(samples[target]) for target in targets}
    gguf = gguf_of(ir)
    return {
        "machine": machine_facts(threads),
        "model": {"ir": str(ir), "gguf": str(gguf) if gguf else None},
        "settings": {"rounds": rounds, "max_tokens": max_tokens, "greedy": True, "levels": list(levels)},
        "targets": summaries,
        "goals": goals_of(summaries),
    }


def _http_ask(client: Any, model: str, max_tokens: int) -> Callable[[str], ClientRun]:
    return lambda question: http_client_run(client, model, question, max_tokens)


def _in_process(ir: Path, max_tokens: int) -> Callable[[str], ClientRun]:
    from ovchat.engine import Engine

    engine = Engine.load(ir)
    engine_client_run(engine, QUESTIONS[0], max_tokens)  # warm-up, as the servers get
    return lambda question: engine_client_run(engine, question, max_tokens)


# -- figures -----------------------------------------------------------------------------------


def summarize_target(levels: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per level: medians over rounds of the aggregate throughput, of the clients' TTFT (median and
    worst) and per-user decode rate, and of the probe's latency; ratios to one client alone."""
    summary: dict[int, dict[str, Any]] = {}
    for level, runs in levels.items():
        clients = [client for run in runs for client in run["runs"]]
        summary[level] = {
            "aggregate_tok_s": median([run["aggregate_tok_s"] for run in runs]),
            "ttft_s": median([client["ttft_s"] for client in clients]),
            "ttft_max_s": median([max(client["ttft_s"] for client in run["runs"]) for run in runs]),
            "per_user_tok_s": median(
                [(client["tokens"] - 1) / client["decode_s"] for client in clients if client["decode_s"] > 0]
            ),
            "tokens": median([client["tokens"] for client in clients]),
            "probe_ms": _ms(median([latency for run in runs for latency in run["probe_s"]])),
            "probe_max_ms": _ms(max((latency for run in runs for latency in run["probe_s"]), default=None)),
            "rounds": runs,
        }
    alone = summary.get(1)
    for figures in summary.values():
        figures["aggregate_vs_1"] = ratio(figures["aggregate_tok_s"], alone["aggregate_tok_s"] if alone else None)
        figures["ttft_vs_1"] = ratio(figures["ttft_s"], alone["ttft_s"] if alone else None)
        figures["ttft_max_vs_1"] = ratio(figures["ttft_max_s"], alone["ttft_s"] if alone else None)
    return {str(level): figures for level, figures in summary.items()}


def _ms(seconds: float | None) -> float | None:
    return seconds * 1000 if seconds is not None else None


def goals_of(targets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with its figure and whether it is met (None where a target did not run)."""

    def at(target: str, level: int, key: str) -> float | None:
        return targets.get(target, {}).get(str(level), {}).get(key)

    serve_alone = at("serve", 1, "per_user_tok_s")
    in_process = at("in-process", 1, "per_user_tok_s")
    goals = [
        ("4 clients on serve: aggregate tok/s at least 2x one client's", at("serve", 4, "aggregate_vs_1"), 2.0, "min"),
        ("4 clients on serve: each TTFT at most 2x a lone client's", at("serve", 4, "ttft_max_vs_1"), 2.0, "max"),
        ("1 client: serve's decode within 10% of Engine.stream in-process", ratio(serve_alone, in_process), 0.9, "min"),
        (
            "4 clients: serve's aggregate above llama-cpp-python's server",
            ratio(at("serve", 4, "aggregate_tok_s"), at("llamacpp", 4, "aggregate_tok_s")),
            1.0,
            "above",
        ),
        (
            "4 clients: serve's aggregate above llama.cpp's llama-server --parallel",
            ratio(at("serve", 4, "aggregate_tok_s"), at("llama-server", 4, "aggregate_tok_s")),
            1.0,
            "above",
        ),
    ]
    # The choice between the two loops: the process loop is kept if the server stays responsive
    # (API latency at 4 clients) without costing throughput.
    goals += [
        (
            "4 clients: serve's API latency under load below serve-thread's",
            ratio(at("serve", 4, "probe_ms"), at("serve-thread", 4, "probe_ms")),
            1.0,
            "below",
        ),
        (
            "4 clients: serve's aggregate at least serve-thread's (within 5%)",
            ratio(at("serve", 4, "aggregate_tok_s"), at("serve-thread", 4, "aggregate_tok_s")),
            0.95,
            "min",
        ),
    ]
    rows = []
    for name, value, bound, kind in goals:
        met = None
        if value is not None:
            met = {"min": value >= bound, "max": value <= bound, "above": value > bound, "below": value < bound}[kind]
        rows.append({"goal": name, "ratio": value, "bound": bound, "met": met})
    return rows


def format_concurrency_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    def cell(value: float | None, digits: int, suffix: str = "") -> str:
        return "-" if value is None else f"{value:.{digits}f}{suffix}"

    rows = []
    for target, levels in report["targets"].items():
        for level, figures in levels.items():
            rows.append([
                target, level, cell(figures["aggregate_tok_s"], 1), cell(figures["aggregate_vs_1"], 2, "x"),
                cell(_ms(figures["ttft_s"]), 0), cell(figures["ttft_vs_1"], 2, "x"),
                cell(_ms(figures["ttft_max_s"]), 0),
                cell(figures["per_user_tok_s"], 1), cell(figures["probe_ms"], 1),
            ])  # fmt: skip
    return HEADER, rows


def describe_goals(report: dict[str, Any]) -> Iterator[str]:
    for goal in report["goals"]:
        state = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
        figure_text = "-" if goal["ratio"] is None else f"{goal['ratio']:.2f}x"
        yield f"{goal['goal']}: {figure_text} -> {state}"


def draw_concurrency_chart(report: dict[str, Any], path: Path) -> None:
    """Aggregate throughput and median TTFT against the number of clients, a line per target."""
    fig, (throughput, ttft) = figure(1, 2, figsize=(12, 4.5))
    for target, levels in report["targets"].items():
        clients = [int(level) for level in levels]
        throughput.plot(clients, [levels[str(c)]["aggregate_tok_s"] for c in clients], marker="o", label=target)
        ttft.plot(clients, [_ms(levels[str(c)]["ttft_s"]) for c in clients], marker="o", label=target)
    throughput.set(title="aggregate decode tok/s (higher is better)", xlabel="concurrent clients")
    ttft.set(title="median time to first token, ms (lower is better)", xlabel="concurrent clients")
    for axis in (throughput, ttft):
        axis.set_xscale("log", base=2)
        axis.legend()
        axis.grid(alpha=0.3)
    machine = report["machine"]
    fig.suptitle(f"{Path(report['model']['ir']).name} · {machine['cpu']} · {machine['threads']} threads")
    save_figure(fig, path)
