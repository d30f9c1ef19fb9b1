"""Where ovchat keeps what it writes: one data folder, ``$OVCHAT_HOME``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

HOME_ENV = "OVCHAT_HOME"


def data_home() -> Path:
    """The data folder: ``$OVCHAT_HOME`` if set, else ``~/.ovchat``."""
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".ovchat"


def disk_bytes(path: Path) -> int:
    """The bytes a file, or every file under a folder, takes."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def write_text_atomically(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: a reader (or a crash)
    never sees half a file, and no temporary file is left behind. ``mode`` sets the file's permissions
    (else the temporary file's 0600 stays)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def models_dir() -> Path:
    """Exported IR folders, one per model and weight format."""
    return data_home() / "models"


def cache_dir() -> Path:
    """OpenVINO's compiled-model cache, so that a second load is fast."""
    return data_home() / "cache"
