"""openvino-genai's ContinuousBatchingPipeline: every caller's reply advances in the same steps.

One :class:`~ovchat.engine.backends.batch_scheduler.Scheduler` owns the pipeline and steps it while
any reply is unfinished; each caller's thread waits in :meth:`BatchedBackend.generate` for its own
reply's token ids. A caller that stops (cancel, a stop string, a closed tab or HTTP client) sends a
stop, and its slot is free at the next step.

The scheduler runs in a child process by default (``batch_loop="process"``), or in a thread of this
process (``"thread"``). ``step()`` keeps the GIL for a whole inference, so with the loop in a
thread a web server's threads stall while replies generate (`ovchat serve` answered /v1/models in
20-932 ms under load, against 2.5-2.9 ms with the process: README, "Many clients at once"). In its
own process the loop holds no lock of ours; the tokenizer and the detokenizer stay here, and only
token ids, settings and stop messages cross the socket pair.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import openvino_genai

from ovchat.engine.backends import (
    BATCH_LOOP_OPTION,
    BATCH_LOOPS,
    DEFAULT_BATCH_LOOP,
    SCHEDULER_OPTION,
    GenerationRequest,
    OnTokens,
    ShouldStop,
    batch_scheduler,
)
from ovchat.engine.backends.batch_scheduler import (
    IDLE,
    SHUTDOWN,
    BatchedMetrics,
    Item,
    Job,
    PipelineSize,
    Scheduler,
    Stop,
    load_pipeline,
)
from ovchat.engine.backends.genai import GenaiPipelineBackend, check_draft_vocabulary, pop_decoding
from ovchat.engine.decoding import Decoding
from ovchat.errors import OvchatError

# How often a waiting caller looks at its stop flag when no token came.
_POLL_SECONDS = 0.05
# A child that has not loaded the model in this long is taken for hung.
_CHILD_LOAD_TIMEOUT_S = 900.0


Deliver = Callable[[list[tuple[int, Item]], BatchedMetrics], None]
Fail = Callable[[OvchatError], None]


def _weakly(method: Callable[..., None]) -> Callable[..., None]:
    """A bound method that does not keep its object alive: a backend nobody uses any more is
    collected, and its finalizer ends the scheduler (the page drops an engine when another model is
    picked), though the scheduler's thread still holds what calls it."""
    reference = weakref.WeakMethod(method)  # type: ignore[arg-type]

    def call(*args: Any) -> None:
        target = reference()
        if target is not None:
            target(*args)

    return call


class _ThreadLoop:
    """The scheduler in a thread of this process."""

    def __init__(
        self, folder: Path, device: str, options: dict[str, Any], scheduler: dict[str, Any], decoding: Decoding
    ) -> None:
        self.pipeline, self.size = load_pipeline(folder, device, options, scheduler, decoding)
        self.decoding = decoding
        self._inbox: queue.Queue[Any] = queue.Queue()

    def tokenizer(self) -> Any:
        return self.pipeline.get_tokenizer()

    def start(self, deliver: Deliver, fail: Fail) -> None:
        loop = Scheduler(self.pipeline, self.size.max_running, self.decoding)
        thread = threading.Thread(target=loop.run, args=(self._inbox, deliver), name="ovchat-scheduler", daemon=True)
        thread.start()

    def send(self, message: Job | Stop | str) -> None:
        self._inbox.put(message)

    def close(self) -> None:
        self._inbox.put(SHUTDOWN)


class _ChildLoop:
    """The scheduler in a child process: messages go down a socket pair, reports come back up it
    to a reader thread here. A fresh interpreter, not multiprocessing: its spawn re-imports the
    caller's main script, which fails in any script without an ``if __name__ == "__main__"`` guard."""

    def __init__(
        self, folder: Path, device: str, options: dict[str, Any], scheduler: dict[str, Any], decoding: Decoding
    ) -> None:
        self.folder = folder
        self._socket, theirs = socket.socketpair()
        # ovchat is importable in the child even when this process found it through its own sys.path.
        package_root = str(Path(__file__).resolve().parents[3])
        python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        entry = f"from {batch_scheduler.__name__} import child_main; child_main()"
        self.process = subprocess.Popen(
            [sys.executable, "-c", entry, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env={**os.environ, "PYTHONPATH": python_path},
        )
        theirs.close()
        self._connection = Connection(os.dup(self._socket.fileno()))
        self._sending = threading.Lock()  # callers' threads send; the pipe takes one message at a time
        try:
            self._connection.send((folder, device, options, scheduler, decoding))
            # This process's tokenizer compiles while the child loads the model, not after it.
            self._tokenizer = openvino_genai.Tokenizer(str(folder))
            self.size = self._await_load()
        except BaseException:
            self.close()
            raise

    def _await_load(self) -> PipelineSize:
        if not self._connection.poll(_CHILD_LOAD_TIMEOUT_S):
            raise OvchatError(
                f"the model's scheduler process did not load {self.folder} in {_CHILD_LOAD_TIMEOUT_S:.0f} s"
            )
        try:
            status, detail = self._connection.recv()
        except (EOFError, OSError):  # a child that crashes mid-load can reset the socket instead of closing it
            raise OvchatError(f"the model's scheduler process ended while loading ({self._ended()})") from None
        if status == "failed":
            raise OvchatError(f"could not load {self.folder}: {detail}")
        return detail

    def _ended(self) -> str:
        try:
            return f"exit code {self.process.wait(5)}"
        except subprocess.TimeoutExpired:
            return "it does not answer"

    def tokenizer(self) -> Any:
        return self._tokenizer

    def start(self, deliver: Deliver, fail: Fail) -> None:
        reader = threading.Thread(target=self._receive, args=(deliver, fail), name="ovchat-scheduler-reader")
        reader.daemon = True
        reader.start()

    def _receive(self, deliver: Deliver, fail: Fail) -> None:
        while True:
            try:
                events, metrics = self._connection.recv()
            except (EOFError, OSError):
                fail(OvchatError(f"the model's scheduler process ended ({self._ended()}); reload the model"))
                return
            deliver(events, metrics)

    def send(self, message: Job | Stop | str) -> None:
        try:
            with self._sending:
                self._connection.send(message)
        except (OSError, ValueError):  # the child has gone, or the pipe is closed
            raise OvchatError("the model's scheduler process has ended; reload the model") from None

    def close(self) -> None:
        # Both ends see the socket close: the child's reader ends its loop, ours ends its thread.
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class BatchedBackend(GenaiPipelineBackend):
    """One ContinuousBatchingPipeline behind the Backend protocol; any number of callers at once.

    Callers hand the scheduler messages through ``loop.send``; its reports come back through
    :meth:`_deliver`, whichever side of a pipe it runs on."""

    def __init__(self, loop: _ThreadLoop | _ChildLoop, folder: Path) -> None:
        super().__init__(loop.tokenizer(), folder)
        self.loop = loop
        self._ids = itertools.count()
        self._replies: dict[int, queue.Queue[Item]] = {}
        self._replies_lock = threading.Lock()
        self._metrics = IDLE
        self._broken: OvchatError | None = None
        # GB the KV cache may take (0: it grows with the replies being made). Prefix caching keeps
        # finished replies' blocks until the cache is full, so the process's memory grows by up to this.
        self.kv_cache_gb = loop.size.kv_cache_gb
        self.close = weakref.finalize(self, loop.close)
        loop.start(_weakly(self._deliver), _weakly(self._fail_all))

    @classmethod
    def load(cls, folder: Path, device: str, properties: dict[str, Any]) -> BatchedBackend:
        options = dict(properties)
        where = options.pop(BATCH_LOOP_OPTION, DEFAULT_BATCH_LOOP)
        scheduler = dict(options.pop(SCHEDULER_OPTION, None) or {})
        decoding = pop_decoding(options)
        if where not in BATCH_LOOPS:
            raise OvchatError(f"unknown batch loop {where!r}; choose one of {', '.join(BATCH_LOOPS)}")
        check_draft_vocabulary(folder, decoding)  # here: the child's error would be openvino-genai's weaker one
        loop = _ThreadLoop if where == "thread" else _ChildLoop
        return cls(loop(folder, device, options, scheduler, decoding), folder)

    def _deliver(self, events: list[tuple[int, Item]], metrics: BatchedMetrics) -> None:
        self._metrics = metrics
        with self._replies_lock:
            for request_id, item in events:
                reply = self._replies.get(request_id)
                if reply is None:
                    continue  # its caller has left
                reply.put(item)
                if not isinstance(item, list):
                    del self._replies[request_id]

    def _fail_all(self, error: OvchatError) -> None:
        with self._replies_lock:
            self._broken = error
            for reply in self._replies.values():
                reply.put(error)
            self._replies.clear()
        self._metrics = IDLE

    def metrics(self) -> BatchedMetrics:
        """Requests generating and waiting, and the KV cache's use, as of the scheduler's last step."""
        return self._metrics

    def _submit(self, request: GenerationRequest, unstreamed: bool = False) -> tuple[int, queue.Queue[Item]]:
        job = Job(next(self._ids), request.prompt_ids, request.settings, request.end_token_ids, unstreamed)
        reply: queue.Queue[Item] = queue.Queue()
        with self._replies_lock:
            if self._broken is not None:
                raise self._broken
            self._replies[job.request_id] = reply
        self.loop.send(job)
        return job.request_id, reply

    def generate_unstreamed(self, request: GenerationRequest) -> list[int]:
        """The whole reply from the pipeline's own C++ loop, with no Python per step; run when no other
        reply is, as the bench's reference for what stepping and streaming in Python cost."""
        _, reply = self._submit(request, unstreamed=True)
        ids: list[int] = []
        while (item := reply.get()) is not None:
            if isinstance(item, OvchatError):
                raise item
            ids += item
        return ids

    def generate(self, request: GenerationRequest, on_tokens: OnTokens, should_stop: ShouldStop) -> None:
        if should_stop():
            return
        request_id, reply = self._submit(request)
        stop_sent = False
        try:
            while True:
                try:
                    item = reply.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    item = []
                if item is None:
                    return
                if isinstance(item, OvchatError):
                    raise item
                if item:
                    on_tokens(item)
                if not stop_sent and should_stop():
                    self._stop(request_id)  # the handle stops at the scheduler's next turn
                    stop_sent = True
        finally:
            with self._replies_lock:
                unfinished = self._replies.pop(request_id, None) is not None
            if unfinished and not stop_sent:  # the caller went away (an error, a closed consumer)
                self._stop(request_id)

    def _stop(self, request_id: int) -> None:
        with contextlib.suppress(OvchatError):  # no scheduler left to stop it: nothing is generating
            self.loop.send(Stop(request_id))
