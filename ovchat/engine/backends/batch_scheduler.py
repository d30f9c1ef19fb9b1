"""The loop that owns a ContinuousBatchingPipeline: it adds the requests it is handed, runs ``step()``
while any is unfinished, and reports each request's new token ids.

It runs in a thread of the caller's process or in a child process of its own
(:mod:`ovchat.engine.backends.batched` picks). Either way it reads messages from a queue (an
:class:`Job` to add, a :class:`Stop` for a request whose caller left, :data:`SHUTDOWN`) and reports
through one ``emit(events, metrics)`` call per step, so the same code runs on both sides of a pipe.
Everything it receives and sends pickles: prompts as lists of ids, settings as the dataclass, errors
as :class:`OvchatError`; openvino-genai's own objects (configs, tensors, handles) stay here.

Handles are read only when ``can_read()`` says a token is there: ``read()`` blocks and keeps the GIL.
"""

from __future__ import annotations

import collections
import contextlib
import math
import queue
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openvino_genai

from ovchat.engine.backends import DEFAULT_MAX_NUM_SEQS
from ovchat.engine.backends.genai import decoding_properties, generation_config, prompt_tensor
from ovchat.engine.decoding import PLAIN_DECODING, Decoding
from ovchat.errors import OvchatError, first_line
from ovchat.model_folder import model_context_length, read_model_configs
from ovchat.settings import GenerationSettings

# The KV cache may take at most this share of the memory available when the model loads.
KV_CACHE_MEMORY_SHARE = 0.25
# Tokens of context the cache is sized for per sequence, at most (a 128k-context model would
# otherwise ask for the whole machine).
KV_CACHE_CONTEXT_CAP = 8192
_RUNNING = openvino_genai.GenerationStatus.RUNNING
_IGNORED = openvino_genai.GenerationStatus.IGNORED
TOO_BIG = "the reply does not fit the model's KV cache now; shorten the chat or try again"


def kv_bytes_per_token(config: Mapping[str, Any]) -> int:
    """Keys and values of one token in every layer, at 2 bytes a value (the CPU's u8 cache needs less)."""
    layers = int(config.get("num_hidden_layers") or 1)
    heads = int(config.get("num_attention_heads") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config.get("hidden_size") or 64) // heads)
    return 2 * layers * kv_heads * head_dim * 2


def scheduler_config(
    config: Mapping[str, Any], available_bytes: int, overrides: Mapping[str, Any] | None = None
) -> Any:
    """A SchedulerConfig sized for ``max_num_seqs`` replies of the model's context (capped), within a
    share of the available memory; prefix caching on, so a chat's next turn reads only its new message.
    ``overrides`` sets SchedulerConfig fields by name over the sized ones."""
    overrides = dict(overrides or {})
    max_num_seqs = int(overrides.get("max_num_seqs", DEFAULT_MAX_NUM_SEQS))
    context = min(model_context_length(config), KV_CACHE_CONTEXT_CAP)
    wanted = max_num_seqs * context * kv_bytes_per_token(config)
    allowed = available_bytes * KV_CACHE_MEMORY_SHARE
    scheduler = openvino_genai.SchedulerConfig()
    scheduler.cache_size = max(1, math.ceil(min(wanted, allowed) / 2**30))  # GB, a whole number
    scheduler.max_num_seqs = max_num_seqs
    scheduler.dynamic_split_fuse = True  # long prompts are read in chunks between other replies' tokens
    scheduler.enable_prefix_caching = True
    for name, value in overrides.items():
        if not hasattr(scheduler, name):
            raise OvchatError(f"the scheduler has no setting {name!r}")
        setattr(scheduler, name, value)
    return scheduler


@dataclass(frozen=True)
class PipelineSize:
    """What the loaded pipeline holds: ``max_running`` replies at once, and a KV cache of ``kv_cache_gb``
    (0: it grows with the replies being made; None: set as a block count)."""

    max_running: int
    kv_cache_gb: int | None


def load_pipeline(
    folder: Path,
    device: str,
    properties: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    decoding: Decoding = PLAIN_DECODING,
) -> tuple[Any, PipelineSize]:
    import psutil

    options = dict(properties)
    options.pop("ATTENTION_BACKEND", None)  # continuous batching is PagedAttention
    options.update(decoding_properties(decoding, device))
    sized = scheduler_config(read_model_configs(folder)[0], psutil.virtual_memory().available, scheduler)
    pipeline = openvino_genai.ContinuousBatchingPipeline(str(folder), sized, device, options)
    return pipeline, PipelineSize(sized.max_num_seqs, None if sized.num_kv_blocks else sized.cache_size)


@dataclass(frozen=True)
class BatchedMetrics:
    running: int
    waiting: int
    cache_usage_percent: float


IDLE = BatchedMetrics(running=0, waiting=0, cache_usage_percent=0.0)


@dataclass(eq=False)
class Job:
    """One request for the scheduler. ``unstreamed`` ones run whole in the pipeline's own C++ loop
    when no other reply runs (the bench's reference for what stepping in Python costs)."""

    request_id: int
    prompt_ids: list[int]
    settings: GenerationSettings
    end_token_ids: frozenset[int]
    unstreamed: bool = False


@dataclass(frozen=True)
class Stop:
    request_id: int


SHUTDOWN = "shutdown"
# What the scheduler reports for a request: new token ids, then None when it ended, or an error.
Item = list[int] | OvchatError | None
Emit = Callable[[list[tuple[int, Item]], BatchedMetrics], None]


class _Running:
    def __init__(self, job: Job, handle: Any) -> None:
        self.job = job
        self.handle = handle
        self.stopped = False


class Scheduler:
    """The pipeline's one driver. At most ``max_running`` requests are in the pipeline; the rest wait
    in order of arrival. (The pipeline's scheduler does not hold to max_num_seqs with dynamic
    split-fuse on: two requests ran together with max_num_seqs=1 in openvino-genai 2026.4.)"""

    def __init__(self, pipeline: Any, max_running: int, decoding: Decoding = PLAIN_DECODING) -> None:
        self.pipeline = pipeline
        self.max_running = max_running
        self.decoding = decoding  # the pipeline's: every request it takes must carry its guesses
        self.running: dict[int, _Running] = {}
        self.waiting: collections.deque[Job] = collections.deque()
        self.deferred: list[Job] = []  # unstreamed jobs wait until no reply is running

    def run(self, inbox: queue.Queue[Any], emit: Emit) -> None:
        """Until :data:`SHUTDOWN` arrives: take messages, admit, step, report."""
        while True:
            events: list[tuple[int, Item]] = []
            idle = not self.running and not self.waiting and not self.deferred
            messages = [inbox.get()] if idle else []  # block for work when idle
            while not inbox.empty():
                messages.append(inbox.get_nowait())
            for message in messages:
                if message == SHUTDOWN:
                    return
                self._take(message, events)
            if self.deferred and not self.running and not self.waiting:
                events += self._run_unstreamed(self.deferred.pop(0))
                emit(events, self.metrics())
                continue
            self._admit(events)
            if self.running:
                events += self._step()
            emit(events, self.metrics())

    def metrics(self) -> BatchedMetrics:
        figures = self.pipeline.get_metrics()
        unscheduled = max(0, figures.requests - figures.scheduled_requests)
        return BatchedMetrics(
            running=len(self.running) - unscheduled,
            waiting=len(self.waiting) + len(self.deferred) + unscheduled,
            cache_usage_percent=figures.cache_usage,
        )

    def _take(self, message: Job | Stop, events: list[tuple[int, Item]]) -> None:
        if isinstance(message, Job):
            (self.deferred if message.unstreamed else self.waiting).append(message)
            return
        if message.request_id in self.running:
            entry = self.running[message.request_id]
            entry.handle.stop()  # its slot is free at the next step
            entry.stopped = True
            return
        for job in self.waiting:  # its caller left while it waited
            if job.request_id == message.request_id:
                self.waiting.remove(job)
                events.append((job.request_id, None))
                return

    def _admit(self, events: list[tuple[int, Item]]) -> None:
        while self.waiting and len(self.running) < self.max_running:
            job = self.waiting.popleft()
            try:
                config = generation_config(job.settings, job.end_token_ids, self.decoding)
                handle = self.pipeline.add_request(job.request_id, prompt_tensor(job.prompt_ids), config)
            except Exception as error:
                refused = OvchatError(f"the model could not take the request: {first_line(error)}")
                events.append((job.request_id, refused))
                continue
            self.running[job.request_id] = _Running(job, handle)

    def _step(self) -> list[tuple[int, Item]]:
        try:
            self.pipeline.step()
        except Exception as error:
            failed = OvchatError(f"the model failed: {first_line(error)}")
            events: list[tuple[int, Item]] = [(request_id, failed) for request_id in self.running]
            self.running.clear()
            return events
        events = []
        for request_id, entry in list(self.running.items()):
            try:
                over = self._read(entry, events)
            except Exception as error:  # one broken handle must not stop the other replies
                events.append((request_id, OvchatError(f"the model failed: {first_line(error)}")))
                over = True
            if over:
                del self.running[request_id]
        return events

    def _read(self, entry: _Running, events: list[tuple[int, Item]]) -> bool:
        """Report the request's new tokens; true when it is over."""
        request_id, handle = entry.job.request_id, entry.handle
        while handle.can_read():
            for output in handle.read().values():
                if output.generated_ids:
                    events.append((request_id, list(output.generated_ids)))
        status = handle.get_status()
        if status == _RUNNING:
            return False
        # A handle stopped mid-reply can report IGNORED too (openvino-genai 2026.4): only a request
        # nobody stopped was refused for want of room.
        refused = status == _IGNORED and not entry.stopped
        events.append((request_id, OvchatError(TOO_BIG) if refused else None))
        return True

    def _run_unstreamed(self, job: Job) -> list[tuple[int, Item]]:
        try:
            config = generation_config(job.settings, job.end_token_ids, self.decoding)
            results = self.pipeline.generate([prompt_tensor(job.prompt_ids)], [config])
        except Exception as error:
            return [(job.request_id, OvchatError(f"the model failed: {first_line(error)}"))]
        return [(job.request_id, list(results[0].m_generation_ids[0])), (job.request_id, None)]


def run_in_child(connection: Any) -> None:
    """The child process's whole life: read what to load, load the pipeline, say
    ``("ready", PipelineSize)`` or ``("failed", message)``, then run the scheduler on what the parent
    sends until the parent goes away (the pipe closes)."""
    # Ctrl-C reaches the whole process group; the parent decides when this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        folder, device, properties, scheduler, decoding = connection.recv()
        pipeline, size = load_pipeline(folder, device, properties, scheduler, decoding)
    except Exception as error:
        # The parent may have given up already (its own tokenizer failed to load, or it was stopped) and closed
        # the pipe: then nobody is left to tell, and a traceback here would only clutter its terminal.
        with contextlib.suppress(OSError):
            connection.send(("failed", first_line(error)))
        return
    try:
        connection.send(("ready", size))
    except OSError:
        return  # the parent has gone while this process loaded
    inbox: queue.Queue[Any] = queue.Queue()

    def receive() -> None:
        while True:
            try:
                inbox.put(connection.recv())
            except (EOFError, OSError):
                inbox.put(SHUTDOWN)
                return

    threading.Thread(target=receive, name="ovchat-scheduler-inbox", daemon=True).start()

    last_metrics: list[BatchedMetrics] = []

    def send(events: list[tuple[int, Item]], metrics: BatchedMetrics) -> None:
        if not events and last_metrics == [metrics]:
            return  # nothing new: spare the pipe a message per step
        last_metrics[:] = [metrics]
        try:
            connection.send((events, metrics))
        except OSError:  # the parent has gone
            inbox.put(SHUTDOWN)

    Scheduler(pipeline, size.max_running, decoding).run(inbox, send)


def child_main() -> None:
    """The child's entry point; BatchedBackend starts it with its end of a socket pair in argv[1]."""
    from multiprocessing.connection import Connection

    run_in_child(Connection(int(sys.argv[1])))
