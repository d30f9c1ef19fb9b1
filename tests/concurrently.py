"""Running one piece of work from several threads released together, as several users would."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)
Result = TypeVar("Result")


def at_once(work: Callable[[Key], Result], keys: Iterable[Key], timeout_s: float) -> dict[Key, Result]:
    """``work(key)`` for every key, each in a thread of its own, all started at the same moment; the
    results by key. An error in a thread is raised here, and a thread still running after
    ``timeout_s`` fails the caller, so neither is lost."""
    keys = list(keys)
    start = threading.Barrier(len(keys))
    results: dict[Key, Result] = {}
    errors: list[BaseException] = []

    def run(key: Key) -> None:
        start.wait()
        try:
            results[key] = work(key)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(key,), daemon=True) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s)
    if errors:
        raise errors[0]
    running = [key for key, thread in zip(keys, threads, strict=True) if thread.is_alive()]
    assert not running, f"still running after {timeout_s} s: {running}"
    return results
