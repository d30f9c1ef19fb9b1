"""An export killed outright (SIGKILL) in the middle leaves nothing the page would list, and the next export into the
same folder removes what it left. Leftovers are judged by the process id in their names: a running export's are
never touched, whatever their age."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovchat.export import ExportOptions, plan_export
from ovchat.export.pipeline import clean_stale_exports
from ovchat.model_folder import is_complete
from ovchat.paths import models_dir

KILL_EXPORT = """
from ovchat.export import default_model_folder, export_model
export_model(None, default_model_folder())
"""


def listed_models() -> list[Path]:
    """The folders the page offers (chat_streamlit.model_sidebar: complete folders in models_dir())."""
    return sorted(path for path in models_dir().glob("*") if is_complete(path))


def staging_of(export: subprocess.Popen[bytes], seconds: float) -> Path:
    """The export's staging folder once it has begun writing the IR into it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert export.poll() is None, "the export ended before it could be killed"
        for path in models_dir().glob(f".*.partial-{export.pid}-*"):
            if (path / "ir").is_dir():
                return path
        time.sleep(0.05)
    raise AssertionError(f"the export made no staging folder in {seconds:.0f} s")


def test_a_killed_export_leaves_nothing_listed_and_the_next_export_cleans_up() -> None:
    # The default model's export (the GGUF's blocks kept, the page's first-use export), killed once it is writing
    # the IR into its staging folder.
    export = subprocess.Popen([sys.executable, "-c", KILL_EXPORT], env=os.environ.copy(), stderr=subprocess.DEVNULL)
    try:
        staging = staging_of(export, 240)
        os.kill(export.pid, signal.SIGKILL)
    finally:
        export.kill()
        export.wait(30)
    assert export.returncode == -signal.SIGKILL  # killed, not finished or failed before
    assert staging.is_dir()  # what the kill left: a staging folder that nobody will remove
    assert listed_models() == []
    assert [path.name for path in models_dir().iterdir()] == [staging.name]

    # The next export into the same folder removes it as it plans (before checking whether its output exists):
    # the default model's again, as the page would start it on its next visit.
    plan = plan_export(None, None, ExportOptions())
    assert plan.target.parent == models_dir() and not staging.exists()
    assert list(models_dir().iterdir()) == [] and listed_models() == []


def ended_process_id() -> int:
    """The id of a process that has run and ended (and been waited for), as a killed export's would be."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# (id, the entry's name with {dead} or {alive} for a process id, whether it is a folder, whether the export it
# belongs to exists beside it, what becomes of it)
LEFTOVERS: list[tuple[str, str, bool, bool, str]] = [
    ("staging-of-an-ended-export", ".m-int8.partial-{dead}-ab12_cd", True, False, "removed"),
    ("staging-of-a-running-export", ".m-int8.partial-{alive}-ab12_cd", True, False, "kept"),
    ("backup-when-the-new-export-is-in-place", ".m-int8.old-{dead}", True, True, "removed"),
    ("backup-when-the-kill-came-between-renames", ".m-int8.old-{dead}", True, False, "restored"),
    ("backup-of-a-running-export", ".m-int8.old-{alive}", True, False, "kept"),
    ("a-file-named-like-staging", ".m-int8.partial-{dead}-ab12_cd", False, False, "kept"),
    ("staging-without-a-process-id", ".m-int8.partial-ab12_cd", True, False, "kept"),  # older ovchat: cannot tell
    ("not-hidden", "m-int8.partial-{dead}-ab12_cd", True, False, "kept"),
    ("a-users-hidden-folder", ".cache", True, False, "kept"),
]


@pytest.mark.parametrize(
    ("template", "is_folder", "export_exists", "outcome"), [c[1:] for c in LEFTOVERS], ids=[c[0] for c in LEFTOVERS]
)
def test_leftovers_are_judged_by_their_process(
    tmp_path: Path, template: str, is_folder: bool, export_exists: bool, outcome: str
) -> None:
    entry = tmp_path / template.format(dead=ended_process_id(), alive=os.getpid())
    if is_folder:
        entry.mkdir()
        (entry / "openvino_model.bin").write_bytes(b"weights")
    else:
        entry.write_text("a file")
    export = tmp_path / "m-int8"
    if export_exists:
        export.mkdir()
        (export / "openvino_model.bin").write_bytes(b"new weights")
    cleaned = clean_stale_exports(tmp_path)
    assert cleaned == ([] if outcome == "kept" else [entry])
    assert entry.exists() == (outcome == "kept")
    if outcome == "restored":  # the replaced export is back where it was, whole
        assert (export / "openvino_model.bin").read_bytes() == b"weights"
    elif export_exists:  # the new export is untouched
        assert (export / "openvino_model.bin").read_bytes() == b"new weights"
    else:
        assert not export.exists()
