"""openvino-genai's ContinuousBatchingPipeline: every caller's reply advances in the same steps.

One scheduler thread owns the pipeline: it adds the requests callers hand in, runs ``step()``
while any is unfinished, and passes each request's new token ids to the caller's thread, which
waits in :meth:`BatchedBackend.generate`. Handles are read only when ``can_read()`` says a token
is there (``read()`` blocks and keeps the GIL). A caller that stops (cancel, a stop string, a
closed tab or HTTP client) stops its handle, and its slot is free at the next step.

Measured on the default model (2 threads): 1, 2 and 4 sequences decoded 63, 88 and 135 tok/s in
all, and a Python thread kept running while ``step()`` ran, so the loop lives in a thread.
"""

from __future__ import annotations

import collections
import itertools
import math
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openvino_genai

from ovchat.engine.backends import GenerationRequest, OnTokens, ShouldStop
from ovchat.engine.backends.genai import GenaiPipelineBackend, generation_config, prompt_tensor
from ovchat.errors import OvchatError
from ovchat.model_folder import model_context_length, read_model_configs

# Replies that advance together. On 2 CPU cores each step's cost grows with the batch, so more
# would slow every reply for little more throughput; a GPU or a larger CPU wants more.
DEFAULT_MAX_NUM_SEQS = 8
MAX_NUM_SEQS_OPTION = "max_num_seqs"
# The KV cache may take at most this share of the memory available when the model loads.
KV_CACHE_MEMORY_SHARE = 0.25
# Tokens of context the cache is sized for per sequence, at most (a 128k-context model would
# otherwise ask for the whole machine).
KV_CACHE_CONTEXT_CAP = 8192
# How often a waiting caller looks at its stop flag when no token came.
_POLL_SECONDS = 0.05
_RUNNING = openvino_genai.GenerationStatus.RUNNING
_IGNORED = openvino_genai.GenerationStatus.IGNORED


def kv_bytes_per_token(config: Mapping[str, Any]) -> int:
    """Keys and values of one token in every layer, at 2 bytes a value (the CPU's u8 cache needs less)."""
    layers = int(config.get("num_hidden_layers") or 1)
    heads = int(config.get("num_attention_heads") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config.get("hidden_size") or 64) // heads)
    return 2 * layers * kv_heads * head_dim * 2


def scheduler_config(config: Mapping[str, Any], available_bytes: int, max_num_seqs: int = DEFAULT_MAX_NUM_SEQS) -> Any:
    """A SchedulerConfig sized for ``max_num_seqs`` replies of the model's context (capped), within a share
    of the available memory; prefix caching on, so a chat's next turn reads only its new message."""
    context = min(model_context_length(config), KV_CACHE_CONTEXT_CAP)
    wanted = max_num_seqs * context * kv_bytes_per_token(config)
    allowed = available_bytes * KV_CACHE_MEMORY_SHARE
    scheduler = openvino_genai.SchedulerConfig()
    scheduler.cache_size = max(1, math.ceil(min(wanted, allowed) / 2**30))  # GB, a whole number
    scheduler.max_num_seqs = max_num_seqs
    scheduler.dynamic_split_fuse = True  # long prompts are read in chunks between other replies' tokens
    scheduler.enable_prefix_caching = True
    return scheduler


@dataclass(frozen=True)
class BatchedMetrics:
    running: int
    waiting: int
    cache_usage_percent: float


@dataclass(eq=False)
class _Job:
    """One request in flight: what the caller handed in, and what the scheduler hands back."""

    request_id: int
    prompt: Any
    config: Any
    tokens: queue.Queue[list[int] | BaseException | None] = field(default_factory=queue.Queue)
    handle: Any = None
    stopped: threading.Event = field(default_factory=threading.Event)
    unstreamed: bool = False  # run by the pipeline's own C++ loop, whole (the bench's reference)


class BatchedBackend(GenaiPipelineBackend):
    """One ContinuousBatchingPipeline behind the Backend protocol; any number of callers at once."""

    def __init__(self, pipeline: Any, folder: Path, max_running: int = DEFAULT_MAX_NUM_SEQS) -> None:
        super().__init__(pipeline, folder)
        # The pipeline's scheduler does not hold to max_num_seqs with dynamic split-fuse on (two
        # requests ran together with max_num_seqs=1 in openvino-genai 2026.4), so the limit is kept
        # here: at most max_running requests are in the pipeline, the rest wait in order.
        self.max_running = max_running
        self.running_count = 0
        self.waiting_count = 0
        self._ids = itertools.count()
        self._inbox: queue.Queue[_Job] = queue.Queue()
        self._loop = threading.Thread(target=self._schedule, name="ovchat-scheduler", daemon=True)
        self._loop.start()

    @classmethod
    def load(cls, folder: Path, device: str, properties: dict[str, Any]) -> BatchedBackend:
        import psutil

        options = dict(properties)
        options.pop("ATTENTION_BACKEND", None)  # continuous batching is PagedAttention
        # ovchat's own options ride along with OpenVINO's properties: a whole SchedulerConfig, or the
        # number of replies at once (`ovchat serve --parallel`) for a scheduler sized as usual.
        max_num_seqs = int(options.pop(MAX_NUM_SEQS_OPTION, DEFAULT_MAX_NUM_SEQS))
        scheduler = options.pop("scheduler_config", None) or scheduler_config(
            read_model_configs(folder)[0], psutil.virtual_memory().available, max_num_seqs
        )
        pipeline = openvino_genai.ContinuousBatchingPipeline(str(folder), scheduler, device, options)
        return cls(pipeline, folder, scheduler.max_num_seqs)

    def metrics(self) -> BatchedMetrics:
        """Requests generating and waiting (here or in the pipeline), and the KV cache's use."""
        figures = self.pipeline.get_metrics()
        unscheduled = max(0, figures.requests - figures.scheduled_requests)
        return BatchedMetrics(
            running=self.running_count - unscheduled,
            waiting=self.waiting_count + unscheduled,
            cache_usage_percent=figures.cache_usage,
        )

    def generate_unstreamed(self, request: GenerationRequest) -> list[int]:
        """The whole reply from the pipeline's own C++ loop, with no Python per step; run when no other
        reply is, as the bench's reference for what stepping and streaming in Python cost."""
        job = self._job(request)
        job.unstreamed = True
        self._inbox.put(job)
        item = job.tokens.get()
        if isinstance(item, BaseException):
            raise item
        return item or []

    def _job(self, request: GenerationRequest) -> _Job:
        config = generation_config(request.settings, request.end_token_ids)
        return _Job(next(self._ids), prompt_tensor(request.prompt_ids), config)

    def generate(self, request: GenerationRequest, on_tokens: OnTokens, should_stop: ShouldStop) -> None:
        job = self._job(request)
        if should_stop():
            return
        self._inbox.put(job)
        try:
            while True:
                try:
                    item = job.tokens.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    if should_stop():
                        job.stopped.set()  # the scheduler stops the handle at its next turn
                    continue
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                on_tokens(item)
                if should_stop():
                    job.stopped.set()
        finally:
            job.stopped.set()  # whatever ended this call, the slot is freed (a no-op for a finished reply)

    # -- the scheduler thread -------------------------------------------------------------

    def _schedule(self) -> None:
        running: dict[int, _Job] = {}
        waiting: collections.deque[_Job] = collections.deque()  # in order of arrival, for a free slot
        deferred: list[_Job] = []  # unstreamed jobs wait until no reply is running
        while True:
            # Block for work when idle; otherwise take what arrived since the last step.
            jobs = [self._inbox.get()] if not running and not deferred and not waiting else []
            while not self._inbox.empty():
                jobs.append(self._inbox.get_nowait())
            deferred += [job for job in jobs if job.unstreamed]
            waiting.extend(job for job in jobs if not job.unstreamed)
            for job in [job for job in waiting if job.stopped.is_set()]:  # its caller left while it waited
                waiting.remove(job)
                job.tokens.put(None)
            if deferred and not running and not waiting:
                self._run_unstreamed(deferred.pop(0))
                continue
            while waiting and len(running) < self.max_running:
                job = waiting.popleft()
                try:
                    job.handle = self.pipeline.add_request(job.request_id, job.prompt, job.config)
                    running[job.request_id] = job
                except Exception as error:
                    job.tokens.put(OvchatError(f"the model could not take the request: {error}"))
            self.running_count, self.waiting_count = len(running), len(waiting)
            try:
                if running:
                    self.pipeline.step()
            except Exception as error:
                for job in running.values():
                    job.tokens.put(error)
                running.clear()
                continue
            for request_id, job in list(running.items()):
                try:
                    over = self._pass_tokens(job)
                except Exception as error:  # one broken handle must not stop the other replies
                    job.tokens.put(error)
                    over = True
                if over:
                    del running[request_id]

    def _run_unstreamed(self, job: _Job) -> None:
        try:
            results = self.pipeline.generate([job.prompt], [job.config])
            job.tokens.put(list(results[0].m_generation_ids[0]))
        except Exception as error:
            job.tokens.put(error)

    def _pass_tokens(self, job: _Job) -> bool:
        """Hand the job's new tokens to its caller; true when the job is over."""
        if job.stopped.is_set():
            job.handle.stop()
        while job.handle.can_read():
            for output in job.handle.read().values():
                if output.generated_ids:
                    job.tokens.put(list(output.generated_ids))
        status = job.handle.get_status()
        if status == _RUNNING:
            return False
        if status == _IGNORED:
            job.tokens.put(
                OvchatError("the reply does not fit the model's KV cache now; shorten the chat or try again")
            )
        else:
            job.tokens.put(None)
        return True
