"""One reply generated in a thread: the backend's loop runs there, the consumer reads text from a queue.

A backend's ``generate`` blocks until the reply has ended, while the page, the terminal and the
bench must show the text as it is made and be able to stop it; so the loop runs in a daemon
thread, and what it makes comes back through a queue.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

from ovchat.engine.backends import Backend, GenerationRequest
from ovchat.engine.streaming import TokenRecord
from ovchat.errors import OvchatError

# How long the consumer waits for text before it checks whether the engine is stalled.
_POLL_SECONDS = 0.1
_DONE = object()


class Heartbeat:
    """When any reply of one engine last made progress. A reply waiting its turn is not stalled
    while another reply is producing tokens."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def beat(self) -> None:
        self.at = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self.at


class ReplyWorker:
    """Generates ``request`` in a daemon thread; :meth:`pieces` yields its text."""

    def __init__(
        self, backend: Backend, request: GenerationRequest, cancel: threading.Event | None, heartbeat: Heartbeat
    ) -> None:
        self.backend = backend
        self.request = request
        self.cancel = cancel
        self.heartbeat = heartbeat
        # halt ends this reply (a stop string, or the consumer leaving); cancel is the caller's.
        self.halt = threading.Event()
        self.record = TokenRecord(time.perf_counter())
        self.stalled = False
        self._detokenizer = backend.detokenizer()
        self._queue: queue.Queue[object] = queue.Queue()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ovchat-generate", daemon=True)
        heartbeat.beat()
        self._thread.start()

    def should_stop(self) -> bool:
        return self.halt.is_set() or (self.cancel is not None and self.cancel.is_set())

    def _on_tokens(self, token_ids: list[int]) -> None:
        self.record.add(token_ids, time.perf_counter())
        self.heartbeat.beat()
        text = self._detokenizer.feed(token_ids)
        if text:
            self._queue.put(text)

    def _run(self) -> None:
        try:
            self.backend.generate(self.request, self._on_tokens, self.should_stop)
            tail = self._detokenizer.end()
            if tail:
                self._queue.put(tail)
        except BaseException as error:  # handed to the consumer, never lost in the thread
            self._failure = error
        finally:
            self._queue.put(_DONE)

    def pieces(self, stall_timeout_s: float) -> Iterator[str]:
        """The reply's text as it is made. Re-raises the thread's error; ends the reply with an error
        when nothing made progress for ``stall_timeout_s``, so a hung device never hangs the caller."""
        while True:
            try:
                piece = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self.heartbeat.silent_for() > stall_timeout_s:
                    self.stalled = True
                    raise OvchatError(
                        f"the model produced nothing for {stall_timeout_s:.0f} s and was stopped; "
                        "restart ovchat if this repeats"
                    ) from None
                continue
            if piece is _DONE:
                break
            yield str(piece)
        if self._failure is not None:
            raise self._failure

    def finish(self) -> None:
        """End the reply and wait for the thread; a stalled thread cannot be joined and is left behind."""
        self.halt.set()
        self._thread.join(timeout=0 if self.stalled else None)
