"""The optional ``export`` extra: what it holds, whether it is installed, and the one line that says how to add it.

The chat on an exported model needs only OpenVINO, openvino-genai and openvino-tokenizers; torch (1.2 GB,
with 3.2 GB of CUDA libraries from PyPI), transformers, optimum-intel and NNCF are needed only to export a
Hugging Face checkpoint (or dequantize a GGUF), for the optimum loop and for some benchmarks. They are an
extra so that ``./run.sh`` installs about a sixth of the bytes.
"""

from __future__ import annotations

from importlib.util import find_spec

from ovchat.errors import OvchatError

EXPORT_EXTRA = "export"
# Top-level names only: find_spec of a top-level module does not import it (torch takes seconds).
EXPORT_EXTRA_MODULES = ("torch", "transformers", "optimum", "nncf")
INSTALL_EXPORT_EXTRA = f"./run.sh setup {EXPORT_EXTRA}"


def has_export_extra() -> bool:
    """Whether torch, transformers, optimum-intel and NNCF are installed."""
    return all(find_spec(name) is not None for name in EXPORT_EXTRA_MODULES)


def require_export_extra(purpose: str) -> None:
    """Raise one line naming the install command unless the export extra is installed."""
    missing = [name for name in EXPORT_EXTRA_MODULES if find_spec(name) is None]
    if missing:
        raise OvchatError(
            f"{purpose} needs the '{EXPORT_EXTRA}' extra (torch, transformers, optimum-intel, NNCF; "
            f"{', '.join(missing)} not installed): run `{INSTALL_EXPORT_EXTRA}` in the ovchat folder, "
            f"or pip install 'ovchat[{EXPORT_EXTRA}]'"
        )


RAY_EXTRA = "ray"
INSTALL_RAY_EXTRA = f"./run.sh setup {RAY_EXTRA}"


def require_ray_extra() -> None:
    """Raise one line naming the install command unless Ray Serve is installed (``ovchat serve --ray``)."""
    if find_spec("ray") is None or find_spec("ray.serve") is None:
        raise OvchatError(
            f"ovchat serve --ray needs the '{RAY_EXTRA}' extra (ray[serve]): run `{INSTALL_RAY_EXTRA}` in the "
            f"ovchat folder, or pip install 'ovchat[{RAY_EXTRA}]'"
        )
