"""Library output during an export, captured into a log file under ``$OVCHAT_HOME/logs``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from ovchat.paths import data_home


@contextlib.contextmanager
def library_output_to_log(enabled: bool, name: str) -> Iterator[tuple[TextIO, Path | None]]:
    """Send everything the libraries print (Python and C++ alike) to a log file.

    Yields a stream on the real stderr for ovchat's own progress, and the log's path.
    The exporters print progress bars, tables and warnings from several layers, some
    from C++, so redirecting the file descriptors is the only way to keep the terminal clean.
    """
    if not enabled:
        yield sys.stderr, None
        return
    log_dir = data_home() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    user_stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8")
    with log_path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield user_stream, log_path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            user_stream.close()
