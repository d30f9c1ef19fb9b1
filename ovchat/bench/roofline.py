"""The memory-bandwidth roofline for decode: how fast decoding could be if it only read memory.

Decoding one token of an LLM on a CPU multiplies one activation vector by every weight matrix, so
each token reads every weight once (and the KV cache of the context so far) and does only about two
flops per weight byte: the speed is set by memory bandwidth, not by arithmetic. The roofline is

    tokens/s <= bandwidth / bytes read per token

and an engine's decode speed divided by it says how much of the machine's memory bandwidth the
engine turns into tokens.

- :func:`measure_bandwidth`: a STREAM-like copy and a read-only sum in numpy, split over Python
  threads (numpy releases the GIL in both, so the threads run at once);
- :func:`bytes_per_token_gguf`, :func:`bytes_per_token_ir`: the bytes one decode step reads, from a
  GGUF's tensor table or an IR's constants, plus the KV cache at a context length;
  :func:`bytes_per_token_compiled`: the same from the model as this machine's plugin compiled it;
- :func:`roofline_tokens_per_second`, :func:`fraction_of_roofline`, :func:`describe`: the arithmetic
  and the dict a bench report holds.

Debian's ``likwid-bench`` (STREAM kernels, pinned threads) measures the same thing more carefully, and
``sysbench memory`` roughly; this module needs none of them, so the bench runs wherever ovchat installs.
Debian's ``mbw`` (one thread, memcpy) copied at about half numpy's rate on a 2-vCPU KVM guest, counted
alike (its MiB/s counts the array once, STREAM twice); the cause was not pinned down.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

# Decimal units, as STREAM reports them: 1 GB/s = 1e9 bytes a second.
GB = 1e9
MB = 1e6
# Arrays at least this large (MB each) whatever the cache: STREAM's rule is 4x the last-level cache,
# and a VM may report a smaller cache than the host really shares between its guests.
MIN_ARRAY_MB = 512
DEFAULT_REPEATS = 5
# The bandwidth the roofline divides by: decode reads weights and writes almost nothing, so its bound
# is the read-only kernel's. Copy is reported beside it; on a 2-vCPU EPYC guest one thread's copy moved
# more bytes a second (read + write) than the sum read, since glibc's large memcpy reads four pages at
# once and writes around the cache: a fraction a little over 1 means an engine read with more streams.
ROOFLINE_KERNEL = "read"

# Bytes of one cached key or value element, by the names OpenVINO's KV_CACHE_PRECISION and
# llama.cpp's --cache-type-k/-v use.
KV_ELEMENT_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "u8": 1.0,
    "i8": 1.0,
    "u4": 0.5,
    "q8_0": 34 / 32,  # llama.cpp's blocks: 32 values and an f16 scale
    "q4_0": 18 / 32,
}
# OpenVINO's CPU plugin keeps an f32 scale and an f32 zero point (8 bytes) beside a u8/u4 cache. Its
# PagedAttention cache (the batched loop's), as compiled by openvino 2026.4 with the defaults: keys by
# channel, one pair per channel per block of KV_BLOCK_SIZE tokens (key_cache [blocks, heads, 32 + 8, 64]
# for u8); values by token, one pair per head per token (value_cache [blocks, heads, 32, 64 + 8]).
KV_QUANT_PARAMS_BYTES = 8
KV_BLOCK_SIZE = 32
# openvino 2026.4's CPU plugin default (KV_CACHE_PRECISION, read from the plugin and from a compiled
# PagedAttention model on an AVX2 EPYC; x86 CPUs have had u8 since 2024.6) and llama.cpp's (f16).
OPENVINO_KV_PRECISION = "u8"
LLAMACPP_KV_PRECISION = "f16"

# Ops between a weight Constant and the MatMul (or Gather) that uses it in OpenVINO's compressed-weight
# patterns: Convert(u8/u4) -> Subtract(zero point) -> Multiply(scale) -> Reshape(groups) -> Convert(f32).
# For the shape-only ops only the data input (0) is followed; their other inputs are shapes and axes.
_WEIGHT_PATH_OPS = {"Convert": (0,), "Subtract": (0, 1), "Multiply": (0, 1)}
_SHAPE_OPS = {"Reshape", "Transpose", "Unsqueeze", "Squeeze"}


# --- bandwidth ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bandwidth:
    """Memory bandwidth in GB/s (1e9 bytes a second), best of ``repeats`` runs over ``threads`` threads.

    ``copy_gb_s`` counts bytes as STREAM does (read + write: 2x the array); ``read_gb_s`` is a sum over
    one array (1x). The roofline uses ``read_gb_s`` (:data:`ROOFLINE_KERNEL`)."""

    threads: int
    array_mb: float
    repeats: int
    copy_gb_s: float
    read_gb_s: float

    @property
    def roofline_gb_s(self) -> float:
        return self.read_gb_s if ROOFLINE_KERNEL == "read" else self.copy_gb_s


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache the kernel reports (the L3 on most x86 machines), or None."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    if sizes:
        return max(sizes)
    try:
        return os.sysconf("SC_LEVEL3_CACHE_SIZE") or None
    except (ValueError, OSError):
        return None


def default_array_mb() -> int:
    """STREAM's rule, each array at least 4x the last-level cache, and never below :data:`MIN_ARRAY_MB`."""
    cache = last_level_cache_bytes() or 0
    return max(MIN_ARRAY_MB, math.ceil(4 * cache / MB))


def _read(chunk: np.ndarray) -> None:
    # An integer sum: numpy's float sums are pairwise and slower than memory (float32 summed 9-13 GB/s in
    # L2 on an EPYC core, below what one core reads from DRAM); the int64 sum did ~50 GB/s, so memory binds.
    np.add.reduce(chunk)


def _timed_in_threads(work: Callable[[int], None], threads: int, repeats: int) -> float:
    """The shortest wall time of ``repeats`` rounds of ``work(thread_index)`` in ``threads`` threads at once.

    The threads live for all rounds and wait at a barrier before and after each one, so a round's
    time is from the moment all start to the moment the last one ends (no thread start-up inside)."""
    start, end = threading.Barrier(threads + 1), threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        for _ in range(repeats):
            start.wait()
            try:
                work(index)
            except BaseException as error:  # reported by the caller; the barrier must still be reached
                errors.append(error)
            end.wait()

    workers = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(threads)]
    for worker in workers:
        worker.start()
    best = math.inf
    for _ in range(repeats):
        start.wait()
        began = time.perf_counter()
        end.wait()
        best = min(best, time.perf_counter() - began)
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return best


def measure_bandwidth(threads: int, megabytes: int | None = None, repeats: int = DEFAULT_REPEATS) -> Bandwidth:
    """Copy and read bandwidth of this machine's memory over ``threads`` threads, best of ``repeats``.

    Each array is ``megabytes`` MB (default :func:`default_array_mb`: far beyond the caches, so the
    figure is the memory's, not the cache's); the copy needs two of them. Each thread works on its own
    contiguous slice. numpy releases the GIL in ``copyto`` and in reductions of numbers (a thread ticking
    beside a 70 ms sum waited at most 8 ms, beside a sum of Python objects the whole time), so the threads
    read at once; whether 2 measure more than 1 depends on whether one core can fill the memory bus.
    """
    if threads < 1 or repeats < 1:
        raise ValueError("threads and repeats must be at least 1")
    size_mb = megabytes if megabytes is not None else default_array_mb()
    elements = max(threads, int(size_mb * MB) // 8)
    source = np.empty(elements, dtype=np.int64)
    target = np.empty_like(source)
    # Touch every page first: a fresh array's pages are mapped on first write, which is not memory speed.
    source.fill(1)
    target.fill(0)
    sources, targets = np.array_split(source, threads), np.array_split(target, threads)
    copy_s = _timed_in_threads(lambda index: np.copyto(targets[index], sources[index]), threads, repeats)
    read_s = _timed_in_threads(lambda index: _read(sources[index]), threads, repeats)
    return Bandwidth(
        threads=threads,
        array_mb=source.nbytes / MB,
        repeats=repeats,
        copy_gb_s=2 * source.nbytes / copy_s / GB,
        read_gb_s=source.nbytes / read_s / GB,
    )


# --- bytes per token ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenBytes:
    """Bytes read from memory to decode one token, by what they are.

    ``weights``: every weight matrix, read whole (the lm_head too, also when it is the tied embedding);
    ``embedding``: the one row of the token-embedding table a token looks up (0 when the table is the
    tied lm_head: then it is read whole, in ``weights``); ``kv_cache``: the keys and values of
    ``context_tokens`` earlier tokens in every layer, at ``kv_precision``."""

    weights: int
    embedding: int
    kv_cache: int
    context_tokens: int
    kv_precision: str
    tied_embeddings: bool

    @property
    def total(self) -> int:
        return self.weights + self.embedding + self.kv_cache


@dataclass(frozen=True)
class AttentionShape:
    """What the KV cache's size depends on: layers, key/value heads, and each head's key and value widths."""

    layers: int
    kv_heads: int
    key_dim: int
    value_dim: int


def kv_cache_bytes(shape: AttentionShape, context_tokens: int, precision: str) -> int:
    """Bytes of keys and values cached for ``context_tokens`` tokens: what attention reads for one new token.

    A u8/u4 cache (OpenVINO's) adds its f32 scales and zero points: for keys, 8 bytes per channel per
    block of :data:`KV_BLOCK_SIZE` tokens; for values, 8 bytes per head per token. llama.cpp's
    q8_0/q4_0 carry their scales inside their blocks (in the element size).
    """
    if precision not in KV_ELEMENT_BYTES:
        raise ValueError(f"unknown KV cache precision {precision!r}; known: {', '.join(KV_ELEMENT_BYTES)}")
    element = KV_ELEMENT_BYTES[precision]
    key, value = shape.key_dim * element, shape.value_dim * element
    if precision in ("u8", "u4"):
        key += KV_QUANT_PARAMS_BYTES * shape.key_dim / KV_BLOCK_SIZE
        value += KV_QUANT_PARAMS_BYTES
    return round(shape.layers * shape.kv_heads * (key + value) * context_tokens)


def gguf_attention_shape(metadata: Mapping[str, Any]) -> AttentionShape:
    """The attention shape from a GGUF's metadata (``{arch}.block_count``, ``.attention.*``)."""
    architecture = str(metadata["general.architecture"])

    def value(key: str, default: Any = None) -> Any:
        return metadata.get(f"{architecture}.{key}", default)

    heads = int(value("attention.head_count"))
    head_dim = int(value("embedding_length")) // heads
    return AttentionShape(
        layers=int(value("block_count")),
        kv_heads=int(value("attention.head_count_kv", heads)),
        key_dim=int(value("attention.key_length", head_dim)),
        value_dim=int(value("attention.value_length", head_dim)),
    )


def config_attention_shape(config: Mapping[str, Any]) -> AttentionShape:
    """The attention shape from a transformers ``config.json``, as the batched loop sizes its cache."""
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    return AttentionShape(
        layers=int(config["num_hidden_layers"]),
        kv_heads=int(config.get("num_key_value_heads") or heads),
        key_dim=head_dim,
        value_dim=head_dim,
    )


def bytes_per_token_gguf(
    path: Path, context_tokens: int, kv_precision: str = LLAMACPP_KV_PRECISION, tokens_tensor: str = "token_embd"
) -> TokenBytes:
    """Bytes llama.cpp reads to decode one token of the GGUF at ``path`` after ``context_tokens`` tokens.

    Every tensor counts whole at its exact size in the file (the norms too, a few hundred KB), except
    the token embeddings, of which a token reads one row; a file without ``output.weight`` uses the
    token embeddings as its lm_head too, and then reads them whole. The KV cache defaults to llama.cpp's
    f16.
    """
    from gguf import GGUFReader

    reader = GGUFReader(path)
    names = {tensor.name for tensor in reader.tensors}
    tied = "output.weight" not in names
    weights = embedding = 0
    for tensor in reader.tensors:
        size = int(tensor.n_bytes)
        if tensor.name == f"{tokens_tensor}.weight" and not tied:
            # GGUF's shape is (ne0, ne1, ...): ne0 values a row, each row whole blocks, so a row is exact.
            rows = int(tensor.n_elements) // int(tensor.shape[0])
            embedding += size // rows
        else:
            weights += size
    metadata = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("tokenizer.")}
    shape = gguf_attention_shape(metadata)
    return TokenBytes(
        weights=weights,
        embedding=embedding,
        kv_cache=kv_cache_bytes(shape, context_tokens, kv_precision),
        context_tokens=context_tokens,
        kv_precision=kv_precision,
        tied_embeddings=tied,
    )


def _weight_constants(output: Any) -> list[Any] | None:
    """The Constants a MatMul or Gather input is computed from, through OpenVINO's decompression ops;
    None when anything else (an activation, a Parameter, a state) feeds it: then it is not a weight."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return [node]
    inputs = (0,) if kind in _SHAPE_OPS else _WEIGHT_PATH_OPS.get(kind)
    if inputs is None:
        return None
    found: list[Any] = []
    for index in inputs:
        constants = _weight_constants(node.input_value(index))
        if constants is None:
            return None
        found += constants
    return found


def bytes_per_token_ir(
    folder: Path, context_tokens: int, kv_precision: str = OPENVINO_KV_PRECISION, model: Any | None = None
) -> TokenBytes:
    """Bytes OpenVINO reads to decode one token of the IR in ``folder`` after ``context_tokens`` tokens.

    Weights are the Constants behind each MatMul's weight input (compressed weights with their scales and zero points,
    each Constant counted once, at its stored size: a u4 Constant is half a byte a value). The token
    embedding is the largest Constant-fed Gather; a token reads one row of each of its Constants, unless
    a MatMul also uses them (tied embeddings: the lm_head reads them whole). The KV cache's shape comes
    from ``config.json``; its precision defaults to the CPU plugin's (:data:`OPENVINO_KV_PRECISION`).
    ``model`` is the already read ``openvino_model.xml``, if the caller has it.
    """
    import openvino as ov

    from ovchat.model_folder import IR_XML, read_model_configs

    if model is None:
        model = ov.Core().read_model(folder / IR_XML)
    # By instance id: a tied table's Constant is one node behind both the Gather and the lm_head's MatMul.
    matmul_constants: dict[int, Any] = {}
    gathers: list[list[Any]] = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "MatMul":
            # A linear layer is MatMul(activations, weight): the weight is input 1. (Input 0 is a Constant
            # only in the rotary embedding's few inverse frequencies, which are no weight matrix.)
            for constant in _weight_constants(op.input_value(1)) or []:
                matmul_constants[constant.get_instance_id()] = constant
        elif kind == "Gather":
            constants = _weight_constants(op.input_value(0))
            if constants:
                gathers.append(constants)
    weights = sum(constant.get_byte_size() for constant in matmul_constants.values())
    table = max(gathers, key=lambda constants: sum(c.get_byte_size() for c in constants), default=[])
    tied = any(constant.get_instance_id() in matmul_constants for constant in table)
    embedding = 0
    if not tied:
        for constant in table:
            shape = list(constant.shape)
            if len(shape) >= 2:  # the table, its per-row scales and zero points; not a Reshape's target shape
                embedding += constant.get_byte_size() // shape[0]
    shape = config_attention_shape(read_model_configs(folder)[0])
    return TokenBytes(
        weights=int(weights),
        embedding=int(embedding),
        kv_cache=kv_cache_bytes(shape, context_tokens, kv_precision),
        context_tokens=context_tokens,
        kv_precision=kv_precision,
        tied_embeddings=tied,
    )


def _layer_type(node: Any) -> str:
    """A node's kind in a compiled model's runtime graph (its rt_info, not its OpenVINO op type)."""
    return str(node.get_rt_info()["layerType"].astype(str))


def compiled_weight_bytes(runtime_model: Any) -> int:
    """The bytes of the Constants behind the FullyConnected layers of a compiled model's runtime graph.

    The plugin may keep a weight at another precision than the IR: with ovchat's f32 inference on an
    AVX2 CPU, openvino 2026.4 keeps u8/u4/f16 weights as they are but turns their f16 scales and zero
    points into f32, so a Q4_1 group of 32 reads 16 + 4 + 4 bytes instead of the file's 16 + 2 + 2.
    """
    sizes: dict[str, int] = {}
    for node in runtime_model.get_ordered_ops():
        if _layer_type(node) != "FullyConnected":
            continue
        for port in node.inputs()[1:]:  # input 0 is the activations
            source = port.get_source_output()
            element = source.get_element_type()
            if _layer_type(source.get_node()) != "Const" or not element.is_static():
                continue  # an activation, or the empty bias the plugin adds
            values = math.prod(source.get_partial_shape().to_shape())
            sizes[source.get_node().get_friendly_name()] = math.ceil(values * element.bitwidth / 8)
    return sum(sizes.values())


def bytes_per_token_compiled(
    folder: Path,
    context_tokens: int,
    kv_precision: str | None = None,
    device: str = "CPU",
    properties: Mapping[str, Any] | None = None,
) -> TokenBytes:
    """:func:`bytes_per_token_ir` with the weights counted in the model as compiled for ``device`` (by
    default with the properties the chat compiles with): what this machine's plugin really reads, which
    :func:`compiled_weight_bytes` says may be more than the IR holds. The embedding row and the KV cache
    are the IR's count; the KV cache's precision is ``kv_precision``, or the compiled model's (ovchat's
    default depends on the CPU). Compiling takes seconds and the model's memory.
    """
    import openvino as ov

    from ovchat.engine.runtime import compile_properties
    from ovchat.model_folder import IR_XML

    core = ov.Core()
    model = core.read_model(folder / IR_XML)
    config = dict(properties) if properties is not None else compile_properties(device, use_cache_dir=False)
    compiled = core.compile_model(model, device, config)
    if kv_precision is None:
        kv_precision = _element_name(compiled.get_property("KV_CACHE_PRECISION"))
    from_ir = bytes_per_token_ir(folder, context_tokens, kv_precision, model=model)
    return replace(from_ir, weights=compiled_weight_bytes(compiled.get_runtime_model()))


def _element_name(element_type: Any) -> str:
    """``u8`` for OpenVINO's ``<Type: 'uint8_t'>``; a name as it is when given as a string."""
    return element_type.get_type_name() if hasattr(element_type, "get_type_name") else str(element_type)


# --- the roofline ------------------------------------------------------------------------------------------


def roofline_tokens_per_second(bandwidth: Bandwidth | float, token_bytes: TokenBytes | int) -> float:
    """The decode speed memory allows: bandwidth (a :class:`Bandwidth`, or GB/s) over bytes per token."""
    gb_s = bandwidth.roofline_gb_s if isinstance(bandwidth, Bandwidth) else float(bandwidth)
    total = token_bytes.total if isinstance(token_bytes, TokenBytes) else int(token_bytes)
    if total <= 0:
        raise ValueError("a token reads a positive number of bytes")
    return gb_s * GB / total


def fraction_of_roofline(
    measured_tps: float | None, bandwidth: Bandwidth | float, token_bytes: TokenBytes | int
) -> float | None:
    """``measured_tps`` as a share of the roofline (1.0 = every byte at full bandwidth); None without one."""
    if measured_tps is None:
        return None
    return measured_tps / roofline_tokens_per_second(bandwidth, token_bytes)


def describe_bandwidth(bandwidth: Bandwidth) -> dict[str, Any]:
    """The measurement (threads, array size, copy and read GB/s), the ``kernel`` the roofline divides by, and
    its ``gb_s``."""
    return {**asdict(bandwidth), "kernel": ROOFLINE_KERNEL, "gb_s": bandwidth.roofline_gb_s}


def describe(bandwidth: Bandwidth, token_bytes: TokenBytes, measured_tps: float | None = None) -> dict[str, Any]:
    """The roofline figures of one engine at one context length, as a bench report's JSON holds them.

    - ``bandwidth``: the measurement (threads, array size, copy and read GB/s) and ``kernel``, the one
      the roofline divides by;
    - ``bytes_per_token``: ``weights``, ``embedding``, ``kv_cache`` and ``total`` bytes, with the
      ``context_tokens``, the ``kv_precision`` and whether the embeddings are tied;
    - ``roofline_tok_s``: bandwidth / total bytes;
    - ``decode_tok_s`` and ``fraction_of_roofline``: the measured speed and its share (None if not given).
    """
    return {
        "bandwidth": describe_bandwidth(bandwidth),
        "bytes_per_token": {**asdict(token_bytes), "total": token_bytes.total},
        "roofline_tok_s": roofline_tokens_per_second(bandwidth, token_bytes),
        "decode_tok_s": measured_tps,
        "fraction_of_roofline": fraction_of_roofline(measured_tps, bandwidth, token_bytes),
    }
