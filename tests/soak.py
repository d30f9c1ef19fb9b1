"""A soak run: N API clients x M turns against `ovchat serve`, and page sessions in Chromium, on one loaded model.

    .venv/bin/python tests/soak.py --clients 8 --turns 10 --page-sessions 2 --page-turns 4

Everything runs on loopback: `ovchat serve` on the model (the default one unless --model), the chat page
(`streamlit run chat_streamlit.py`) opened on that server through OVCHAT_ENDPOINT, so the page's sessions
and the API clients share the server's one loaded model. Bounded in count (clients x turns) and in time
(--time-limit: no new request starts after it).

What it checks and prints (a table, and JSON with --json):
- no crash: every request answered, the server and the page alive at the end;
- no mixed replies: every API client asks its own questions at temperature 0, and each reply must be its own
  question's (it shares more with that question's reply made alone, before the load, than with any other's;
  batched greedy replies may drift after a near tie, so exact equality is reported, not required);
- memory: the server's resident memory (with its scheduler process) and the page's, sampled twice a second;
  peak, final, and the slope after warm-up (the first round of requests) in MB per minute;
- the page's store afterwards: SQLite's integrity check, every page session's chat whole (its prompts in
  order, each answered by a finished reply, nothing left marked as streaming).

A script under tests/ rather than an `ovchat` command: it drives the page in a browser (Playwright and
Chromium, which the test extra and ./run.sh install). tests/reliability/test_soak.py runs a small one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script from anywhere

from browsing import (  # noqa: E402
    CAPTION,
    CHAT_INPUT,
    CHROMIUM,
    CHROMIUM_ARGS,
    MODEL_LOAD_MS,
    REPLY_MS,
    chat_page_server,
    send,
)

from ovchat.bench.report import print_table, write_json  # noqa: E402
from ovchat.chats.store import STORE_FILE, ConversationStore  # noqa: E402
from ovchat.machine import cpu_name  # noqa: E402
from ovchat.paths import HOME_ENV  # noqa: E402
from ovchat.server.process import ServerProcess, free_port  # noqa: E402

QUESTIONS = [
    "What is the capital of France?", "Name three colours.", "What is 2 + 2?", "Who wrote Hamlet?",
    "What do bees make?", "How many legs has a spider?", "What is the boiling point of water?",
    "Name a planet.", "What is the largest ocean?", "Translate 'hello' into Spanish.",
    "What colour is the sky?", "Name a fruit that is yellow.",
]  # fmt: skip
PAGE_PROMPTS = ["Hello!", "Tell me a fact about cats.", "And one about dogs?", "Thank you.", "Goodbye."]
SAMPLE_EVERY_S = 0.5
FINISHED = re.compile(r"\d+ tokens")  # the line under a finished reply on the page


@dataclass
class Outcome:
    """What the clients saw: replies by (client, turn), the errors, and when each request ended."""

    replies: dict[tuple[int, int], str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)
    page_turns: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def question_of(client: int, turn: int) -> str:
    return QUESTIONS[(client + turn) % len(QUESTIONS)]


def common_prefix(first: str, second: str) -> int:
    differ = (index for index, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    return next(differ, min(len(first), len(second)))


def tree_rss_mb(process: psutil.Process) -> float:
    """Resident memory of a process and its children (the server's scheduler process), in MB."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child that ended between the listing and the reading
            total += member.memory_info().rss
    return total / 2**20


class MemorySampler(threading.Thread):
    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        super().__init__(name="soak-memory", daemon=True)
        self.processes = processes
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in processes}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY_S):
            now = time.monotonic()
            for name, process in self.processes.items():
                self.samples[name].append((now, tree_rss_mb(process)))


def slope_mb_per_min(samples: list[tuple[float, float]], after: float) -> float | None:
    """The least-squares slope of resident memory over time, from ``after`` on."""
    import numpy as np

    kept = [(t, mb) for t, mb in samples if t >= after]
    if len(kept) < 4:
        return None
    times, values = np.array(kept).T
    return float(np.polyfit((times - times[0]) / 60, values, 1)[0])


def kv_cache_limit_bytes(url: str) -> float:
    """What the server says its KV cache may take (0: it grows with the replies being made)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "ovchat_kv_cache_limit_bytes":
                return sample.value
    raise RuntimeError(f"{url}/metrics has no ovchat_kv_cache_limit_bytes")


def ask(client: Any, model: str, question: str, max_tokens: int) -> str:
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0.0,
        stream=True,
    )  # fmt: skip
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def api_client(index: int, args: argparse.Namespace, url: str, model: str, deadline: float, out: Outcome) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="soak", max_retries=0, timeout=600)
    for turn in range(args.turns):
        if time.monotonic() > deadline:
            return
        question = question_of(index, turn)
        try:
            reply = ask(client, model, question, args.max_tokens)
        except Exception as error:  # recorded and reported: a soak counts failures, it does not stop at one
            with out.lock:
                out.errors.append(f"client {index} turn {turn}: {type(error).__name__}: {error}")
            continue
        with out.lock:
            out.replies[(index, turn)] = reply
            out.finished_at.append(time.monotonic())


def page_session(index: int, args: argparse.Namespace, page_url: str, deadline: float, out: Outcome) -> None:
    """One browser tab: a new chat, ``--page-turns`` prompts, each waited for until its reply has finished."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:  # one per thread: Playwright's sync API is not shared across threads
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            tab.goto(page_url)
            tab.locator(CHAT_INPUT).wait_for(timeout=MODEL_LOAD_MS)
            for turn in range(args.page_turns):
                if time.monotonic() > deadline:
                    return
                prompt = f"[tab {index}] {PAGE_PROMPTS[turn % len(PAGE_PROMPTS)]}"
                try:
                    reply = send(tab, prompt)
                    # "N tokens" ends every finished reply's line; "tok/s" is missing from a one-token reply's.
                    expect(reply.locator(CAPTION).filter(has_text=FINISHED)).to_be_visible(timeout=REPLY_MS)
                except Exception as error:
                    with out.lock:
                        out.errors.append(f"page tab {index} turn {turn}: {type(error).__name__}: {error}")
                    return
                with out.lock:
                    out.page_turns += 1
                    out.finished_at.append(time.monotonic())
        finally:
            browser.close()


def check_store(path: Path, tabs: int, turns_done: int) -> dict[str, Any]:
    """The page's store after the run: intact, and each tab's chat whole."""
    with sqlite3.connect(path) as connection:
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
    store = ConversationStore(path)
    problems = []
    turns = 0
    for info in store.list():
        messages = store.get(info.id).messages
        tags = {m.content.split("]")[0] for m in messages if m.role == "user"}
        if len(tags) != 1:
            problems.append(f"chat {info.id} holds prompts of several tabs: {sorted(tags)}")
        if [m.role for m in messages] != ["user", "assistant"] * (len(messages) // 2) or len(messages) % 2:
            problems.append(f"chat {info.id}: roles out of turn: {[m.role for m in messages]}")
        unfinished = [m.id for m in messages if m.role == "assistant" and ("streaming" in m.meta or "error" in m.meta)]
        if unfinished:
            problems.append(f"chat {info.id}: replies not finished: {unfinished}")
        turns += len(messages) // 2
    store.close()
    if len(store.list()) != tabs:
        problems.append(f"{len(store.list())} chats for {tabs} tabs")
    if turns != turns_done:
        problems.append(f"{turns} turns saved, {turns_done} finished in the tabs")
    return {"integrity": integrity, "chats": tabs, "turns": turns, "problems": problems}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ovchat.export import ensure_default_model

    model_folder = Path(args.model) if args.model else ensure_default_model()
    work = Path(tempfile.mkdtemp(prefix="ovchat-soak-"))
    env = {**os.environ, HOME_ENV: str(work / "home")}
    for name in ("OVCHAT_API_KEY", "OVCHAT_MODEL"):
        env.pop(name, None)
    port = free_port()
    serve = [
        sys.executable, "-m", "ovchat.cli", "serve", "--model", str(model_folder), "--port", str(port),
        "--model-name", "soak", "--parallel", str(args.parallel),
        *(["--kv-cache", str(args.kv_cache)] if args.kv_cache is not None else []),
    ]  # fmt: skip
    with ServerProcess("serve", serve, port, work / "logs", env=env, start_timeout_s=300) as server:
        import openai

        kv_cache_gb = kv_cache_limit_bytes(server.url) / 2**30
        alone_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="soak", max_retries=0, timeout=600)
        questions = sorted(
            {QUESTIONS[(c + t) % len(QUESTIONS)] for c in range(args.clients) for t in range(args.turns)}
        )
        alone = {question: ask(alone_client, "soak", question, args.max_tokens) for question in questions}
        page_env = {**env, "OVCHAT_ENDPOINT": f"{server.url}/v1"}
        with chat_page_server(work / "page", page_env) as page:
            sampler = MemorySampler({"server": psutil.Process(server.process.pid),
                                     "page": psutil.Process(page.process.pid)})  # fmt: skip
            out = Outcome()
            started = time.monotonic()
            deadline = started + args.time_limit
            sampler.start()
            workers = [
                threading.Thread(target=api_client, args=(i, args, server.url, "soak", deadline, out))
                for i in range(args.clients)
            ] + [
                threading.Thread(target=page_session, args=(i, args, page.url, deadline, out))
                for i in range(args.page_sessions)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            duration = time.monotonic() - started
            time.sleep(2 * SAMPLE_EVERY_S)  # a last sample or two with the load gone
            sampler.done.set()
            sampler.join()
            alive = {"server": server.process.poll() is None and server.healthy(),
                     "page": page.process.poll() is None and page.healthy()}  # fmt: skip
        store = check_store(work / "home" / STORE_FILE, args.page_sessions, out.page_turns)

    mixed, exact = [], 0
    for (client, turn), reply in sorted(out.replies.items()):
        question = question_of(client, turn)
        own = common_prefix(reply, alone[question])
        exact += reply == alone[question]
        if any(common_prefix(reply, alone[other]) >= own for other in alone if other != question and alone[other]):
            mixed.append({"client": client, "turn": turn, "question": question, "reply": reply})
    warm_up_end = sorted(out.finished_at)[min(len(out.finished_at) - 1, args.clients + args.page_sessions - 1)] if (
        out.finished_at) else started  # fmt: skip
    memory = {}
    for name, samples in sampler.samples.items():
        values = [mb for _, mb in samples]
        memory[name] = {
            "start_mb": round(values[0], 1) if values else None,
            "peak_mb": round(max(values), 1) if values else None,
            "final_mb": round(values[-1], 1) if values else None,
            "slope_after_warm_up_mb_per_min": slope_mb_per_min(samples, warm_up_end),
            # A cache that fills (the server's KV cache) shows as growth that stops: flat here once it is full.
            "slope_second_half_mb_per_min": slope_mb_per_min(samples, started + duration / 2),
            "samples": len(values),
            "every_10_s": [
                [round(t - started, 1), round(mb, 1)] for t, mb in samples[:: max(1, round(10 / SAMPLE_EVERY_S))]
            ],
        }
    distinct = len(set(alone.values())) == len(alone)
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "model": str(model_folder),
        "clients": args.clients, "turns": args.turns, "page_sessions": args.page_sessions,
        "page_turns": args.page_turns, "max_tokens": args.max_tokens, "parallel": args.parallel,
        "kv_cache_gb": kv_cache_gb, "time_limit_s": args.time_limit,
        "duration_s": round(duration, 1),
        "api_requests": {"asked": args.clients * args.turns, "answered": len(out.replies), "exact_as_alone": exact},
        "page_turns_done": out.page_turns,
        "errors": out.errors,
        "mixed_replies": mixed,
        "alone_replies_distinct": distinct,
        "alive_after": alive,
        "memory": memory,
        "store": store,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an IR folder (default: the default model, exported if needed)")
    parser.add_argument("--clients", type=int, default=8, help="API clients at once (default 8)")
    parser.add_argument("--turns", type=int, default=10, help="requests per API client (default 10)")
    parser.add_argument("--page-sessions", type=int, default=2, help="browser tabs on the page (default 2)")
    parser.add_argument("--page-turns", type=int, default=4, help="prompts per tab (default 4)")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per reply at most (default 48)")
    parser.add_argument("--parallel", type=int, default=4, help="`ovchat serve --parallel` (default 4)")
    parser.add_argument("--kv-cache", type=int, metavar="GB", help="`ovchat serve --kv-cache` (default: the server's)")
    parser.add_argument("--time-limit", type=float, default=900, help="no new request after this many s (900)")
    parser.add_argument("--json", type=Path, help="write the report here (default $OVCHAT_HOME/bench/soak-*.json)")
    args = parser.parse_args(argv)
    if (
        min(args.clients, args.turns, args.max_tokens, args.parallel) < 1
        or min(args.page_sessions, args.page_turns) < 0
    ):
        parser.error("counts must be at least 1 (page sessions and page turns at least 0)")
    report = run(args)
    rows = [
        ["API requests answered", f"{report['api_requests']['answered']} of {report['api_requests']['asked']}"],
        ["  exactly as alone", str(report["api_requests"]["exact_as_alone"])],
        ["page turns finished", f"{report['page_turns_done']} of {args.page_sessions * args.page_turns}"],
        ["errors", str(len(report["errors"]))],
        ["mixed replies", str(len(report["mixed_replies"]))],
        ["duration s", f"{report['duration_s']:.1f}"],
        ["server KV cache GB", f"{report['kv_cache_gb']:g}" + ("" if report["kv_cache_gb"] else " (grows with use)")],
    ]
    for name, figures in report["memory"].items():
        slope = figures["slope_after_warm_up_mb_per_min"]
        rows.append([f"{name} MB start / peak / final", f"{figures['start_mb']} / {figures['peak_mb']} / "
                     f"{figures['final_mb']}"])  # fmt: skip
        rows.append([f"{name} MB/min after warm-up", "-" if slope is None else f"{slope:+.2f}"])
        late = figures["slope_second_half_mb_per_min"]
        rows.append([f"{name} MB/min in the second half", "-" if late is None else f"{late:+.2f}"])
    rows.append(["store", f"{report['store']['integrity']}, {report['store']['turns']} turns, "
                 f"{len(report['store']['problems'])} problems"])  # fmt: skip
    rows.append(["alive after", ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in report["alive_after"].items())])
    print_table(f"Soak: {args.clients} clients x {args.turns} turns + {args.page_sessions} tabs x "
                f"{args.page_turns} turns ({report['cpu']})", ["", "figure"], rows)  # fmt: skip
    for line in report["errors"] + report["store"]["problems"]:
        print(f"  {line}")
    print(f"report: {write_json(report, args.json, 'soak')}")
    healthy = not (report["errors"] or report["mixed_replies"] or report["store"]["problems"]) and all(
        report["alive_after"].values()
    )
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
