"""Where ovchat keeps what it writes: one data folder, ``$OVCHAT_HOME``."""

from __future__ import annotations

import os
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


def models_dir() -> Path:
    """Exported IR folders, one per model and weight format."""
    return data_home() / "models"


def cache_dir() -> Path:
    """OpenVINO's compiled-model cache, so that a second load is fast."""
    return data_home() / "cache"
