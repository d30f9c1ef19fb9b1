"""The OpenVINO runtime: which devices exist, and the properties every model is compiled with."""

from __future__ import annotations

from typing import Any

from ovchat.errors import OvchatError
from ovchat.machine import cpu_flags
from ovchat.paths import cache_dir

# f32 inference: bf16, which the CPU plugin picks on CPUs with AVX-512-BF16 or AMX, decoded slower
# in `ovchat bench` (README, Performance), and f32 gives the same greedy tokens as PyTorch.
DEFAULT_CPU_CONFIG: dict[str, str] = {
    "PERFORMANCE_HINT": "LATENCY",
    "NUM_STREAMS": "1",
    "INFERENCE_PRECISION_HINT": "f32",
}
# The KV cache in f16 where the CPU has no AVX-512: on an AVX2 AMD EPYC the CPU plugin's default u8 cache
# decoded slower (`ovchat bench --variant kvf16:KV_CACHE_PRECISION=f16`, README "What the page's path
# runs"); on the AVX-512 Xeon, u8 and f16 were within noise, so u8 (half the memory) stays there.
AVX2_KV_CACHE_PRECISION = "f16"


def cpu_config() -> dict[str, str]:
    """ovchat's CPU properties for this CPU: :data:`DEFAULT_CPU_CONFIG`, and the KV cache by capability."""
    config = dict(DEFAULT_CPU_CONFIG)
    if "avx512f" not in cpu_flags():
        config["KV_CACHE_PRECISION"] = AVX2_KV_CACHE_PRECISION
    return config


def compile_properties(device: str, ov_config: dict[str, Any] | None = None, use_cache_dir: bool = True) -> dict:
    """OpenVINO properties for ``device``: ovchat's defaults, the compiled-model cache, then ``ov_config``."""
    properties: dict[str, Any] = cpu_config() if device.upper() == "CPU" else {"PERFORMANCE_HINT": "LATENCY"}
    if use_cache_dir:
        # optimum-intel fills the compiled-model cache only for GPU; on CPU it must be asked for.
        cache = cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        properties["CACHE_DIR"] = str(cache)
    properties.update(ov_config or {})
    return properties


def available_devices() -> list[tuple[str, str]]:
    """The devices OpenVINO can run on here, as (device, full name) pairs."""
    import openvino as ov

    core = ov.Core()
    return [(device, str(core.get_property(device, "FULL_DEVICE_NAME"))) for device in core.available_devices]


def check_device(device: str) -> None:
    """Fail early, naming the devices that exist, instead of deep inside compile_model."""
    base = device.upper().split(":")[0].split(".")[0]
    if base in ("AUTO", "MULTI", "HETERO"):
        return
    names = [name for name, _ in available_devices()]
    if device.upper() not in names and base not in {name.split(".")[0] for name in names}:
        raise OvchatError(f"device {device} is not available here; available: {', '.join(names)} or AUTO")
