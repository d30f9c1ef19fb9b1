"""The continuous-batching backend on the tiny model: the genai loop's greedy replies, concurrent callers each
getting their own reply, a stopped caller freeing its slot, a request too large for the KV cache; with the
scheduler in its own process (the default) and in a thread, and what happens when that process dies."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from concurrently import at_once

from ovchat import Engine, GenerationSettings, OvchatError
from ovchat.engine import Chunk

GREEDY = GenerationSettings(max_new_tokens=40, temperature=0.0, repetition_penalty=1.0)
PROMPTS = ["Hello there", "def add(a, b):", "数学是被发明还是被发现的？ 😀", "The quick brown fox"]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module", params=["process", "thread"])
def batched(tiny_irs: dict[str, Path], request: pytest.FixtureRequest) -> Engine:
    loop = {"batch_loop": request.param}
    return Engine.load(tiny_irs["fp16"], use_cache_dir=False, backend="batched", ov_config=loop)


@pytest.fixture(scope="module")
def alone(tiny_irs: dict[str, Path]) -> dict[str, tuple[str, int, str]]:
    """Each prompt's greedy reply with no other caller, from the default batched engine: text, new
    tokens, finish reason."""
    engine = Engine.load(tiny_irs["fp16"], use_cache_dir=False, backend="batched")
    replies = {text: engine.generate(chat(text), GREEDY) for text in PROMPTS}
    return {text: (r.text, r.stats.new_tokens, r.stats.finish_reason) for text, r in replies.items()}


def small_engine(folder: Path, **limits: int) -> Engine:
    return Engine.load(folder, use_cache_dir=False, backend="batched", ov_config={"scheduler": limits})


def test_greedy_replies_equal_the_genai_loops(tiny_irs: dict[str, Path], alone: dict) -> None:
    genai = Engine.load(tiny_irs["fp16"], use_cache_dir=False, backend="genai")
    for text in PROMPTS:
        reply = genai.generate(chat(text), GREEDY)
        assert (reply.text, reply.stats.new_tokens, reply.stats.finish_reason) == alone[text], text


def test_four_concurrent_callers_each_get_their_own_reply(batched: Engine, alone: dict) -> None:
    assert len({reply[0] for reply in alone.values()}) == len(PROMPTS)  # otherwise mixing could not be seen
    together: dict[str, list[Chunk]] = at_once(lambda text: list(batched.stream(chat(text), GREEDY)), PROMPTS, 120)
    assert set(together) == set(PROMPTS)
    for text, chunks in together.items():
        final = chunks[-1].stats
        assert final is not None
        assert ("".join(c.text for c in chunks[:-1]), final.new_tokens, final.finish_reason) == alone[text], text


def test_a_second_reply_runs_while_the_first_is_still_generating(batched: Engine, alone: dict) -> None:
    """With one reply at a time, the second could only start after the first's 400 tokens; batched, it
    starts at the next step and ends while the first is still generating."""
    done_at: dict[str, float] = {}
    second: list = []

    def ask_second() -> None:
        second.append(batched.generate(chat(PROMPTS[1]), GREEDY))
        done_at["second"] = time.monotonic()

    thread = threading.Thread(target=ask_second)
    chunks = []
    for chunk in batched.stream(chat(PROMPTS[0]), GREEDY.with_changes(max_new_tokens=400)):
        chunks.append(chunk)
        if len(chunks) == 1:
            thread.start()
    done_at["first"] = time.monotonic()
    thread.join(timeout=120)
    first = chunks[-1].stats
    assert first is not None and first.new_tokens == 400, "the test needs a first reply much longer than the second"
    assert (second[0].text, second[0].stats.new_tokens, second[0].stats.finish_reason) == alone[PROMPTS[1]]
    assert done_at["second"] < done_at["first"]


def test_cancelling_one_caller_leaves_the_others_whole(batched: Engine, alone: dict) -> None:
    cancel = threading.Event()
    other: list = []
    long_run = GREEDY.with_changes(max_new_tokens=400)
    thread = threading.Thread(target=lambda: other.append(batched.generate(chat(PROMPTS[1]), GREEDY)))
    chunks = []
    for chunk in batched.stream(chat(PROMPTS[0]), long_run, cancel):
        chunks.append(chunk)
        if len(chunks) == 1:
            thread.start()
            cancel.set()
    thread.join(timeout=120)
    assert chunks[-1].stats is not None and chunks[-1].stats.finish_reason == "cancelled"
    assert chunks[-1].stats.new_tokens < 400
    assert (other[0].text, other[0].stats.new_tokens, other[0].stats.finish_reason) == alone[PROMPTS[1]]


def test_a_stopped_caller_frees_the_only_slot_for_a_waiting_one(tiny_irs: dict[str, Path], alone: dict) -> None:
    engine = small_engine(tiny_irs["fp16"], max_num_seqs=1, cache_size=1)
    cancel = threading.Event()
    waiting: list = []
    thread = threading.Thread(target=lambda: waiting.append(engine.generate(chat(PROMPTS[1]), GREEDY)))
    chunks = []
    for chunk in engine.stream(chat(PROMPTS[0]), GREEDY.with_changes(max_new_tokens=400), cancel):
        chunks.append(chunk)
        if len(chunks) == 1:  # the one slot is busy: the second request waits for it
            thread.start()
            deadline = time.monotonic() + 60
            while engine.backend.metrics().waiting != 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert engine.backend.metrics().waiting == 1 and not waiting
            cancel.set()  # what Stop in the page and a disconnected HTTP client do
    thread.join(timeout=120)
    stopped = chunks[-1].stats
    assert stopped is not None and stopped.finish_reason == "cancelled" and stopped.new_tokens < 400
    reply = waiting[0]
    assert (reply.text, reply.stats.new_tokens, reply.stats.finish_reason) == alone[PROMPTS[1]]


def test_a_consumer_that_leaves_frees_the_slot(tiny_irs: dict[str, Path], alone: dict) -> None:
    engine = small_engine(tiny_irs["fp16"], max_num_seqs=1, cache_size=1)
    stream = engine.stream(chat(PROMPTS[0]), GREEDY.with_changes(max_new_tokens=400))
    assert next(stream).text
    stream.close()  # a closed tab: the engine stops the request before close returns
    reply = engine.generate(chat(PROMPTS[1]), GREEDY)
    assert (reply.text, reply.stats.new_tokens, reply.stats.finish_reason) == alone[PROMPTS[1]]


def test_a_request_larger_than_the_kv_cache_is_a_clear_error(tiny_irs: dict[str, Path]) -> None:
    engine = small_engine(tiny_irs["fp16"], num_kv_blocks=2, max_num_seqs=1, enable_prefix_caching=False)
    with pytest.raises(OvchatError, match="does not fit the model's KV cache"):
        engine.generate(chat("hello " * 100), GREEDY)
    assert engine.generate(chat("hi"), GREEDY.with_changes(max_new_tokens=8)).stats.new_tokens == 8  # still usable


def test_the_kv_cache_is_sized_from_the_model_and_the_free_memory() -> None:
    from ovchat.engine.backends.batch_scheduler import kv_bytes_per_token, scheduler_config

    # SmolLM2-135M's shape: 30 layers, 3 KV heads of 64.
    smollm = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}
    assert kv_bytes_per_token(smollm) == 2 * 30 * 3 * 64 * 2
    roomy = scheduler_config({**smollm, "max_position_embeddings": 8192}, available_bytes=64 * 2**30)
    assert roomy.cache_size == 2  # 8 sequences x 8192 tokens x 23,040 bytes = 1.4 GiB, in whole GB
    assert roomy.max_num_seqs == 8 and roomy.enable_prefix_caching and roomy.dynamic_split_fuse
    tight = scheduler_config({**smollm, "max_position_embeddings": 131072}, available_bytes=4 * 2**30)
    assert tight.cache_size == 1  # a quarter of 4 GB, never less than 1 GB


def test_the_engine_reports_its_kv_cache_and_a_growing_one_gives_the_same_replies(
    tiny_irs: dict[str, Path], alone: dict
) -> None:
    """The sized cache is what ``ovchat serve`` reports; ``cache_size`` 0 is openvino-genai's cache that grows
    with the replies being made (``--kv-cache 0``), which must not change a reply."""
    import psutil

    from ovchat.engine.backends.batch_scheduler import scheduler_config
    from ovchat.model_folder import read_model_configs

    sized = Engine.load(tiny_irs["fp16"], use_cache_dir=False, backend="batched")
    expected = scheduler_config(read_model_configs(tiny_irs["fp16"])[0], psutil.virtual_memory().available)
    assert sized.backend.kv_cache_gb == expected.cache_size >= 1
    growing = small_engine(tiny_irs["fp16"], cache_size=0)
    assert growing.backend.kv_cache_gb == 0
    replies = at_once(lambda text: growing.generate(chat(text), GREEDY), PROMPTS, 120)
    for text, reply in replies.items():
        assert (reply.text, reply.stats.new_tokens, reply.stats.finish_reason) == alone[text], text


@pytest.mark.parametrize(
    ("argv", "outcome"),
    [
        pytest.param([], None, id="default"),
        pytest.param(["--kv-cache", "3"], {"scheduler": {"cache_size": 3}}, id="sized"),
        pytest.param(
            ["--kv-cache", "0", "--parallel", "2"], {"scheduler": {"max_num_seqs": 2, "cache_size": 0}}, id="growing"
        ),
        pytest.param(["--kv-cache", "-1"], "--kv-cache must be in 0-4096 GB, not -1", id="negative"),
        pytest.param(["--backend", "genai", "--kv-cache", "1"], "--kv-cache set the batched loop", id="genai-loop"),
    ],
)
def test_serve_passes_kv_cache_to_the_scheduler(argv: list[str], outcome: dict | str | None) -> None:
    from ovchat.cli import build_parser
    from ovchat.server.command import engine_options

    args = build_parser().parse_args(["serve", *argv])
    if isinstance(outcome, str):
        with pytest.raises(OvchatError, match=outcome):
            engine_options(args)
    else:
        assert engine_options(args) == outcome


def test_a_script_without_a_main_guard_loads_the_batched_engine(
    tiny_irs: dict[str, Path], alone: dict, tmp_path: Path
) -> None:
    """multiprocessing's spawn would re-import this script in the scheduler's process and fail."""
    script = tmp_path / "ask.py"
    script.write_text(
        "from ovchat import Engine, GenerationSettings\n"
        f"engine = Engine.load({str(tiny_irs['fp16'])!r}, use_cache_dir=False, backend='batched')\n"
        "reply = engine.generate([{'role': 'user', 'content': 'Hello there'}], "
        "GenerationSettings(max_new_tokens=40, temperature=0.0, repetition_penalty=1.0))\n"
        "print(repr(reply.text))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == repr(alone[PROMPTS[0]][0])


def test_a_killed_scheduler_process_gives_every_caller_a_clear_error(tiny_irs: dict[str, Path]) -> None:
    engine = Engine.load(tiny_irs["fp16"], use_cache_dir=False, backend="batched")
    stream = engine.stream(chat(PROMPTS[0]), GREEDY.with_changes(max_new_tokens=400))
    assert next(stream).text
    engine.backend.loop.process.kill()
    with pytest.raises(OvchatError, match=r"scheduler process ended \(exit code -9\); reload the model"):
        list(stream)
    with pytest.raises(OvchatError, match=r"scheduler process ended \(exit code -9\); reload the model"):
        engine.generate(chat(PROMPTS[1]), GREEDY)


def test_a_dropped_engine_ends_its_scheduler_process(tiny_irs: dict[str, Path]) -> None:
    """The page drops an engine when another model is picked: its process and memory go with it."""
    engine = Engine.load(tiny_irs["fp16"], use_cache_dir=False, backend="batched")
    engine.generate(chat(PROMPTS[0]), GREEDY)
    process = engine.backend.loop.process
    del engine
    gc.collect()
    assert process.wait(timeout=60) == 0


def test_a_bad_scheduler_setting_is_a_clear_error_from_the_child(tiny_irs: dict[str, Path]) -> None:
    with pytest.raises(OvchatError, match="the scheduler has no setting 'max_sequences'"):
        small_engine(tiny_irs["fp16"], max_sequences=4)
