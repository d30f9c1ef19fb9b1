"""Random-weight models with the architecture and shapes of public checkpoints, built once for the bench.

Decode speed depends on a model's shapes and weight format, not on its weights' values, so a model with
Qwen2.5-0.5B's shapes and random weights decodes as many tokens a second as Qwen2.5-0.5B, without a
download (its tokenizer is another, so the same text is another number of tokens). Each
synthetic model is written once under ``root/<name>/`` in every form the bench compares on the same
weights:

- ``checkpoint/``: a transformers checkpoint (f16 safetensors, config, tokenizer);
- ``<name>-Q8_0.gguf``, ``<name>-Q4_0.gguf``: the same weights quantized as llama.cpp stores them;
- ``ir-gguf-Q8_0/``, ``ir-gguf-Q4_0/``: each GGUF exported keeping its blocks (``--weight-format gguf``);
- ``ir-int8/``, ``ir-int4/``: the checkpoint exported by optimum-intel and compressed by NNCF.

The tokenizer is the default model's (SmolLM2-135M-Instruct's, 49,152 tokens), padded with unused tokens
to the named config's vocabulary size: the logits over Qwen2.5's 151,936 rows are a large share of a
small model's decode cost, so the weights keep the real vocabulary. Every artefact is written into a
staging name and renamed into place when complete, so an interrupted build leaves nothing half-made and
the next build picks up where it stopped.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import zlib
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ovchat.errors import OvchatError
from ovchat.machine import peak_rss_mb
from ovchat.model_folder import MANIFEST, is_complete
from ovchat.paths import data_home, disk_bytes

if TYPE_CHECKING:
    from ovchat.export.gguf import GgufInfo
    from ovchat.export.pipeline import ProgressCallback

# Bumped when a change here changes what a build writes, so that an older build is not taken for a new one.
BUILD_VERSION = 1
SEED = 0
# Weights are normal with this standard deviation (a trained model's scale), norms are 1.0: the activations
# stay finite through every layer. Their values change nothing about speed, quantized or not.
INIT_STD = 0.02
# The embedding rows of the control tokens and of the padding are scaled by this, so their logits stay near
# zero: greedy decoding then never picks them, and a reply neither ends early on an end-of-turn token nor
# streams padding, whichever engine runs it.
QUIET_ROW_SCALE = 0.01
RECORD = "synthetic.json"
PARTIAL = ".partial-pid"
CHECKPOINT = "checkpoint"
GGUF_TYPES = ("Q8_0", "Q4_0")
CONVERTED_FORMATS = ("int8", "int4")
# Everything a build can write, in the order it is written; each IR needs the artefact it is exported from.
FORMATS: tuple[str, ...] = (
    CHECKPOINT,
    *(f"gguf-{kind}" for kind in GGUF_TYPES),
    *(f"ir-gguf-{kind}" for kind in GGUF_TYPES),
    *(f"ir-{kind}" for kind in CONVERTED_FORMATS),
)
NEEDS = {
    **{f"ir-gguf-{kind}": f"gguf-{kind}" for kind in GGUF_TYPES},
    **{f"ir-{kind}": CHECKPOINT for kind in CONVERTED_FORMATS},
}
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


@dataclass(frozen=True)
class SyntheticConfig:
    """The shapes of a public checkpoint, as its config.json gives them."""

    checkpoint: str  # the public checkpoint whose shapes these are
    architecture: str  # "qwen2" (q/k/v biases, NeoX rotary) or "llama" (no biases)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    public_parameters: int | None = None  # the parameter count the checkpoint's model card gives
    init_std: float = INIT_STD

    @property
    def attention_bias(self) -> bool:
        """Qwen2 has biases on q, k and v (transformers' Qwen2Attention always builds them); Llama has none."""
        return self.architecture == "qwen2"

    def problems(self) -> list[str]:
        """What makes this config impossible to build; empty for a consistent one."""
        found = []
        if self.architecture not in ARCHITECTURES:
            found.append(f"architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}")
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            found.append(f"{self.num_kv_heads} kv heads do not divide {self.num_heads} heads")
        if self.head_dim % 2:
            found.append(f"head_dim {self.head_dim} is odd; rotary embeddings rotate pairs")
        if self.architecture == "qwen2" and self.num_heads * self.head_dim != self.hidden_size:
            found.append("qwen2 needs num_heads * head_dim == hidden_size")
        # Q8_0 and Q4_0 quantize each row in blocks of 32 values.
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % 32:
                found.append(f"{name} {getattr(self, name)} is not a multiple of 32 (GGUF blocks)")
        if (self.num_heads * self.head_dim) % 32:
            found.append("num_heads * head_dim is not a multiple of 32 (GGUF blocks)")
        return found

    def tensors(self) -> list[TensorSpec]:
        """Every weight, in the order the GGUF holds them (the checkpoint takes the same set)."""
        q_rows, kv_rows = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        specs = [TensorSpec("model.embed_tokens.weight", "token_embd.weight", (self.vocab_size, self.hidden_size))]
        for layer in range(self.num_layers):
            hf, gg = f"model.layers.{layer}.", f"blk.{layer}."
            specs.append(TensorSpec(f"{hf}input_layernorm.weight", f"{gg}attn_norm.weight", (self.hidden_size,)))
            for proj, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
                hf_name, gg_name = f"{hf}self_attn.{proj}_proj", f"{gg}attn_{proj}"
                specs.append(TensorSpec(f"{hf_name}.weight", f"{gg_name}.weight", (rows, self.hidden_size)))
                if self.attention_bias:
                    specs.append(TensorSpec(f"{hf_name}.bias", f"{gg_name}.bias", (rows,)))
            specs += [
                TensorSpec(f"{hf}self_attn.o_proj.weight", f"{gg}attn_output.weight", (self.hidden_size, q_rows)),
                TensorSpec(f"{hf}post_attention_layernorm.weight", f"{gg}ffn_norm.weight", (self.hidden_size,)),
                TensorSpec(
                    f"{hf}mlp.gate_proj.weight", f"{gg}ffn_gate.weight", (self.intermediate_size, self.hidden_size)
                ),
                TensorSpec(f"{hf}mlp.up_proj.weight", f"{gg}ffn_up.weight", (self.intermediate_size, self.hidden_size)),
                TensorSpec(
                    f"{hf}mlp.down_proj.weight", f"{gg}ffn_down.weight", (self.hidden_size, self.intermediate_size)
                ),
            ]
        specs.append(TensorSpec("model.norm.weight", "output_norm.weight", (self.hidden_size,)))
        if not self.tie_word_embeddings:
            specs.append(TensorSpec("lm_head.weight", "output.weight", (self.vocab_size, self.hidden_size)))
        return specs

    @property
    def parameter_count(self) -> int:
        """Parameters as model cards count them: the tied output matrix once."""
        return sum(int(np.prod(spec.shape)) for spec in self.tensors())


@dataclass(frozen=True)
class TensorSpec:
    """One weight: its name in the checkpoint and in the GGUF, and its shape as transformers holds it."""

    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]  # (out_features, in_features) for a matrix

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2

    @property
    def is_norm(self) -> bool:
        return self.gguf_name.endswith("_norm.weight")

    @property
    def is_vocabulary(self) -> bool:
        """Rows are tokens: the embedding, and the output matrix when it is not tied."""
        return self.gguf_name in ("token_embd.weight", "output.weight")


# Typed in from each checkpoint's public config.json (no download). Parameter counts are the model cards'.
SYNTHETIC_SIZES: dict[str, SyntheticConfig] = {
    # HuggingFaceTB/SmolLM2-135M-Instruct: the default model's own shapes, so that its size is measured as the
    # larger ones are (Q8_0/Q4_0 GGUFs and their kept blocks, int8/int4). Its 49,152-token vocabulary is the
    # tokenizer's, so nothing is padded; 9 heads over 3 KV heads, with each row's 576 values in 18 GGUF blocks.
    "smollm2-135m": SyntheticConfig(
        checkpoint="HuggingFaceTB/SmolLM2-135M-Instruct",
        architecture="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        public_parameters=135_000_000,
    ),
    # Qwen/Qwen2.5-0.5B-Instruct
    "qwen2.5-0.5b": SyntheticConfig(
        checkpoint="Qwen/Qwen2.5-0.5B-Instruct",
        architecture="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        public_parameters=494_000_000,
    ),
    # Qwen/Qwen2.5-1.5B-Instruct
    "qwen2.5-1.5b": SyntheticConfig(
        checkpoint="Qwen/Qwen2.5-1.5B-Instruct",
        architecture="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        public_parameters=1_540_000_000,
    ),
    # meta-llama/Llama-3.2-1B-Instruct. Its "llama3" rope scaling (factor 32 over an original 8,192-token
    # context) is left out: it changes the rotary frequencies, not the work per token, and openvino-genai's
    # GGUF reader would have to read llama.cpp's rope_freqs tensor for the GGUF and checkpoint IRs to agree.
    "llama3.2-1b": SyntheticConfig(
        checkpoint="meta-llama/Llama-3.2-1B-Instruct",
        architecture="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        public_parameters=1_240_000_000,
    ),
    # For tests: Qwen2's layout (q/k/v biases, tied embeddings) at a size built in seconds, with 64 padding
    # tokens beyond the tokenizer's 49,152. Its larger weights make attention sharp, so that a wrong rotary
    # layout shows in the logits.
    "tiny": SyntheticConfig(
        checkpoint="(none: a test size in Qwen2's layout)",
        architecture="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        vocab_size=49216,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=2048,
        init_std=0.2,
    ),
    # For tests: Llama's layout, whose GGUF permutes the Q and K rows for llama.cpp's rotary layout.
    "tiny-llama": SyntheticConfig(
        checkpoint="(none: a test size in Llama's layout)",
        architecture="llama",
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        vocab_size=49216,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=2048,
        init_std=0.2,
    ),
}


@dataclass(frozen=True)
class SyntheticModel:
    """A built synthetic model: every artefact asked for, by format (see :data:`FORMATS`)."""

    name: str
    config: SyntheticConfig
    parameters: int
    folder: Path
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path | None:
        return self.paths.get(CHECKPOINT)

    @property
    def ggufs(self) -> dict[str, Path]:
        """The GGUF files by tensor type: ``{"Q8_0": ..., "Q4_0": ...}``."""
        return {kind: self.paths[f"gguf-{kind}"] for kind in GGUF_TYPES if f"gguf-{kind}" in self.paths}

    @property
    def irs(self) -> dict[str, Path]:
        """The IR folders by how they were made: ``gguf-Q8_0``, ``gguf-Q4_0`` (blocks kept), ``int8``, ``int4``."""
        return {key.removeprefix("ir-"): path for key, path in self.paths.items() if key.startswith("ir-")}


def default_synthetic_root() -> Path:
    """Where ``ovchat bench --synthetic`` keeps its models: under the data folder, beside the exports."""
    return data_home() / "synthetic"


def artefact_path(folder: Path, name: str, fmt: str) -> Path:
    """Where format ``fmt`` of synthetic model ``name`` lives inside its ``folder``."""
    if fmt.startswith("gguf-"):
        return folder / f"{name}-{fmt.removeprefix('gguf-')}.gguf"
    return folder / fmt


def build_synthetic(
    name: str,
    root: Path,
    formats: Collection[str] = FORMATS,
    progress: ProgressCallback | None = None,
) -> SyntheticModel:
    """Build synthetic model ``name`` (a key of :data:`SYNTHETIC_SIZES`) under ``root/<name>/``, in ``formats``
    and whatever they are made from, skipping what an earlier build completed; returns where each went.

    ``progress`` is called as ``(step, "start", None)`` and ``(step, "done", seconds)`` for each artefact
    built, and with ``"<format>: <step>"`` for the export's own steps.
    """
    if name not in SYNTHETIC_SIZES:
        raise OvchatError(f"no synthetic size {name!r}; pick one of {', '.join(SYNTHETIC_SIZES)}")
    config = SYNTHETIC_SIZES[name]
    if config.problems():
        raise OvchatError(f"synthetic size {name!r} cannot be built: {'; '.join(config.problems())}")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise OvchatError(f"unknown synthetic format {', '.join(unknown)}; pick from {', '.join(FORMATS)}")
    wanted = set(formats) | {NEEDS[fmt] for fmt in formats if fmt in NEEDS}
    folder = Path(root).expanduser().resolve() / name
    folder.mkdir(parents=True, exist_ok=True)
    record = _read_record(folder, name, config)
    _remove_abandoned(folder)
    paths: dict[str, Path] = {}
    for fmt in (fmt for fmt in FORMATS if fmt in wanted):
        path = artefact_path(folder, name, fmt)
        paths[fmt] = path
        if _is_built(fmt, path):
            continue
        if progress:
            progress(fmt, "start", None)
        started = time.perf_counter()
        _build_one(fmt, config, name, path, paths, progress)
        seconds = round(time.perf_counter() - started, 2)
        record["builds"][fmt] = {
            "seconds": seconds,
            "bytes": disk_bytes(path),
            # The process's high-water mark so far: it covers this step, and any earlier one of this process.
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        _write_json(folder / RECORD, record)
        if progress:
            progress(fmt, "done", seconds)
    return SyntheticModel(name, config, config.parameter_count, folder, paths)


def _build_one(
    fmt: str, config: SyntheticConfig, name: str, path: Path, paths: dict[str, Path], progress: ProgressCallback | None
) -> None:
    if fmt == CHECKPOINT:
        write_checkpoint(config, path)
    elif fmt.startswith("gguf-"):
        write_gguf(config, path, fmt.removeprefix("gguf-"), name=name)
    else:
        from ovchat.export import ExportOptions, export_model

        kind = fmt.removeprefix("ir-")
        source = paths[NEEDS[fmt]]
        options = ExportOptions(weight_format="gguf" if kind.startswith("gguf-") else kind)
        forward = None
        if progress:

            def forward(step: str, state: str, seconds: float | None) -> None:
                progress(f"{fmt}: {step}", state, seconds)

        # force: a folder there is not a complete export (_is_built said so), whatever left it.
        export_model(str(source), path, options, force=path.exists(), progress=forward)


def _is_built(fmt: str, path: Path) -> bool:
    if fmt == CHECKPOINT:
        return (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    if fmt.startswith("gguf-"):
        return path.is_file()
    return is_complete(path) and (path / MANIFEST).is_file()


def _read_record(folder: Path, name: str, config: SyntheticConfig) -> dict[str, Any]:
    """The folder's record of what it was built from; a folder built from another config is refused."""
    expected = {"build_version": BUILD_VERSION, "seed": SEED, "config": asdict(config)}
    path = folder / RECORD
    if path.is_file():
        record = json.loads(path.read_text())
        if {key: record.get(key) for key in expected} != expected:
            raise OvchatError(f"{folder} was built from another config of {name!r}; remove it to rebuild")
        record.setdefault("builds", {})
        return record
    record = {"name": name, **expected, "parameters": config.parameter_count, "builds": {}}
    _write_json(path, record)
    return record


# --- the weights -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Vocabulary:
    """The default model's tokenizer as its GGUF stores it, padded to the config's vocabulary size."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    fields: dict[str, Any]  # special token ids, add_bos/add_space_prefix, pre-tokenizer, chat template
    quiet_ids: list[int]  # the base vocabulary's control tokens (the padding is quiet too)
    base_size: int


@functools.cache
def _default_tokenizer_fields() -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...], dict[str, Any]]:
    """The default model's GGUF vocabulary, token types, merges and tokenizer fields (read once: gguf-py takes
    seconds over 49,152 tokens)."""
    from gguf import GGUFReader

    from ovchat.export.sources import resolve_source

    reader = GGUFReader(resolve_source(None).path)

    def value(key: str) -> Any:
        found = reader.fields.get(key)
        return found.contents() if found is not None else None

    keys = (
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_space_prefix",
        "tokenizer.chat_template",
    )
    fields = {key: value(key) for key in keys if value(key) is not None}
    types = tuple(int(kind) for kind in value("tokenizer.ggml.token_type"))
    return tuple(value("tokenizer.ggml.tokens")), types, tuple(value("tokenizer.ggml.merges")), fields


def _vocabulary(config: SyntheticConfig) -> _Vocabulary:
    from gguf import TokenType

    base_tokens, base_types, merges, base_fields = _default_tokenizer_fields()
    base = len(base_tokens)
    if config.vocab_size < base:
        raise OvchatError(f"vocab_size {config.vocab_size} is below the tokenizer's {base} tokens")
    # As llama.cpp's converter pads a vocabulary up to the embedding's rows: unused tokens nothing produces.
    tokens = [*base_tokens, *(f"[PAD{index}]" for index in range(base, config.vocab_size))]
    types = [*base_types, *[int(TokenType.UNUSED)] * (config.vocab_size - base)]
    fields = dict(base_fields)
    # The pre-tokenizer (how text is split before the merges): transformers picks its converter by the GGUF's
    # architecture, and for qwen2 that is Qwen2's split; naming it here makes llama.cpp split text the same way
    # (the real Qwen2.5 GGUFs name it too). Llama's converter agrees with SmolLM2's own "smollm".
    if config.architecture == "qwen2":
        fields["tokenizer.ggml.pre"] = "qwen2"
    quiet = [index for index, kind in enumerate(base_types) if kind == TokenType.CONTROL]
    return _Vocabulary(tokens, types, list(merges), fields, quiet, base)


def tensor_values(config: SyntheticConfig, spec: TensorSpec, quiet_ids: list[int], base_vocab: int) -> np.ndarray:
    """One weight's seeded random values in f16, the same on every call: the checkpoint and the GGUFs are
    written one tensor at a time, each from its own call."""
    if spec.is_norm:
        return np.ones(spec.shape, dtype=np.float16)
    rng = np.random.default_rng((SEED, zlib.crc32(spec.hf_name.encode())))
    values = rng.standard_normal(spec.shape, dtype=np.float32)
    values *= config.init_std
    if spec.is_vocabulary:
        values[base_vocab:] *= QUIET_ROW_SCALE
        values[quiet_ids] *= QUIET_ROW_SCALE
    return values.astype(np.float16)


def permute_for_llama_cpp(values: np.ndarray, heads: int) -> np.ndarray:
    """Q or K rows in llama.cpp's order: its rotary embedding pairs neighbouring rows of each head, where
    transformers' Llama pairs row i with row i + head_dim/2 (``LlamaModel.permute`` in convert_hf_to_gguf.py)."""
    rows = values.shape[0]
    return values.reshape(heads, 2, rows // heads // 2, *values.shape[1:]).swapaxes(1, 2).reshape(values.shape)


def _gguf_values(config: SyntheticConfig, spec: TensorSpec, vocabulary: _Vocabulary) -> np.ndarray:
    values = tensor_values(config, spec, vocabulary.quiet_ids, vocabulary.base_size).astype(np.float32)
    if config.architecture == "llama":
        # Qwen2's GGUF keeps transformers' order: llama.cpp runs it with NeoX rotary, which pairs as transformers does.
        if ".attn_q." in spec.gguf_name:
            values = permute_for_llama_cpp(values, config.num_heads)
        elif ".attn_k." in spec.gguf_name:
            values = permute_for_llama_cpp(values, config.num_kv_heads)
    return values


# Rows quantized at a time: the quantizer's temporaries are several times its input, and the embedding of a
# 1.5B model is 233M values.
_QUANTIZE_ROWS = 4096


def _quantize(values: np.ndarray, kind: Any) -> np.ndarray:
    from gguf import quant_shape_to_byte_shape
    from gguf.quants import quantize

    out = np.empty(quant_shape_to_byte_shape(values.shape, kind), dtype=np.uint8)
    for start in range(0, values.shape[0], _QUANTIZE_ROWS):
        out[start : start + _QUANTIZE_ROWS] = quantize(values[start : start + _QUANTIZE_ROWS], kind)
    return out


def write_gguf(config: SyntheticConfig, path: Path, tensor_type: str, name: str = "synthetic") -> None:
    """The synthetic model as a GGUF file whose matrices are all ``tensor_type`` (Q8_0 or Q4_0; norms and
    biases F32, as llama.cpp writes them), with the default model's tokenizer padded to the vocabulary size.

    Tensors are generated, quantized and written one at a time; the file appears at ``path`` when complete.
    """
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, quant_shape_to_byte_shape

    kind = GGMLQuantizationType[tensor_type]
    vocabulary = _vocabulary(config)
    specs = config.tensors()
    staging = _staging_path(path)
    writer = GGUFWriter(str(staging), config.architecture)
    try:
        _add_model_fields(writer, config, name)
        writer.add_file_type({"Q8_0": LlamaFileType.MOSTLY_Q8_0, "Q4_0": LlamaFileType.MOSTLY_Q4_0}[tensor_type])
        writer.add_quantization_version(2)
        _add_tokenizer_fields(writer, vocabulary)
        for spec in specs:
            if spec.is_matrix:
                shape = quant_shape_to_byte_shape(spec.shape, kind)
                writer.add_tensor_info(spec.gguf_name, shape, np.dtype(np.uint8), int(np.prod(shape)), raw_dtype=kind)
            else:
                writer.add_tensor_info(spec.gguf_name, spec.shape, np.dtype(np.float32), 4 * int(np.prod(spec.shape)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for spec in specs:  # in the order of the tensor infos, as write_tensor_data requires
            values = _gguf_values(config, spec, vocabulary)
            writer.write_tensor_data(_quantize(values, kind) if spec.is_matrix else values)
            del values
        writer.close()
        staging.replace(path)
    finally:
        writer.close()  # a second close does nothing
        staging.unlink(missing_ok=True)


def _add_model_fields(writer: Any, config: SyntheticConfig, name: str) -> None:
    writer.add_name(f"{name} (random weights in the shapes of {config.checkpoint})")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_layers)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _add_tokenizer_fields(writer: Any, vocabulary: _Vocabulary) -> None:
    fields = vocabulary.fields
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(fields["tokenizer.ggml.pre"])
    writer.add_token_list(vocabulary.tokens)
    writer.add_token_types(vocabulary.token_types)
    writer.add_token_merges(vocabulary.merges)
    for key in ("bos", "eos", "unknown", "padding"):
        if f"tokenizer.ggml.{key}_token_id" in fields:
            writer.add_uint32(f"tokenizer.ggml.{key}_token_id", int(fields[f"tokenizer.ggml.{key}_token_id"]))
    for key in ("add_bos_token", "add_space_prefix"):
        if f"tokenizer.ggml.{key}" in fields:
            writer.add_bool(f"tokenizer.ggml.{key}", bool(fields[f"tokenizer.ggml.{key}"]))
    if "tokenizer.chat_template" in fields:
        writer.add_chat_template(str(fields["tokenizer.chat_template"]))


# --- the checkpoint ----------------------------------------------------------------------------------------


def hf_config(config: SyntheticConfig, vocabulary_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json for the synthetic model, as transformers writes one for this architecture."""
    fields = vocabulary_fields or {}
    data: dict[str, Any] = {
        "architectures": [ARCHITECTURES[config.architecture]],
        "model_type": config.architecture,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "default"},
        "hidden_act": "silu",
        "initializer_range": config.init_std,
        "attention_dropout": 0.0,
        # optimum-intel loads an f16 checkpoint in f16 (patching the model for export), which halves the
        # export's memory against f32.
        "dtype": "float16",
        "use_cache": True,
    }
    if config.architecture == "llama":
        data.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    else:
        data.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": config.num_layers})
    for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        token_id = fields.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            data[f"{role}_token_id"] = int(token_id)
    return data


def write_checkpoint(config: SyntheticConfig, folder: Path) -> None:
    """The synthetic model as a transformers checkpoint folder: f16 safetensors of the same seeded weights as
    the GGUFs, config files, and the default model's tokenizer padded to the vocabulary size. The folder
    appears at ``folder`` when complete."""
    from safetensors.numpy import save_file

    vocabulary = _vocabulary(config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(folder)
    staging.mkdir()
    try:
        tokenizer = _hf_tokenizer(config, vocabulary, staging)
        tokenizer.save_pretrained(staging)
        config_data = hf_config(config, vocabulary.fields)
        _write_json(staging / "config.json", config_data)
        generation = {
            key: config_data[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in config_data
        }
        _write_json(staging / "generation_config.json", generation)
        # safetensors writes from the arrays' memory; the whole f16 model is held once (3.1 GB for 1.5B).
        tensors = {
            spec.hf_name: tensor_values(config, spec, vocabulary.quiet_ids, vocabulary.base_size)
            for spec in config.tensors()
        }
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _hf_tokenizer(config: SyntheticConfig, vocabulary: _Vocabulary, scratch: Path) -> Any:
    """The Hugging Face tokenizer transformers builds from the synthetic GGUF's vocabulary (as the kept-blocks
    export builds it), with exactly ``vocab_size`` tokens."""
    from gguf import GGUFWriter
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from ovchat.export.gguf import load_gguf_tokenizer

    # A GGUF holding only the vocabulary: the same route, load_gguf_tokenizer, as the GGUF's own export.
    path = scratch / "vocabulary.gguf"
    writer = GGUFWriter(str(path), config.architecture)
    _add_model_fields(writer, config, "vocabulary")
    _add_tokenizer_fields(writer, vocabulary)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    try:
        loaded: Any = load_gguf_tokenizer(path, _tokenizer_info(config, vocabulary))
    finally:
        path.unlink()
    # transformers' Qwen2 converter adds "<s>" and "</s>" past the vocabulary; ids the embedding has no row for
    # are dropped, so that the tokenizer and config.json agree on the vocabulary size.
    backend = json.loads(loaded.backend_tokenizer.to_str())
    backend["added_tokens"] = [token for token in backend["added_tokens"] if token["id"] < config.vocab_size]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(backend)),
        bos_token=loaded.bos_token,
        eos_token=loaded.eos_token,
        pad_token=loaded.pad_token,
        unk_token=loaded.unk_token,
        model_max_length=config.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = loaded.chat_template
    if len(tokenizer) != config.vocab_size:
        raise OvchatError(f"the synthetic tokenizer has {len(tokenizer)} tokens, not {config.vocab_size}")
    return tokenizer


def _tokenizer_info(config: SyntheticConfig, vocabulary: _Vocabulary) -> GgufInfo:
    """What :func:`ovchat.export.gguf.inspect_gguf` would read from the vocabulary's GGUF, without reading it."""
    from ovchat.export.gguf import GgufInfo

    def token_id(key: str) -> int | None:
        found = vocabulary.fields.get(f"tokenizer.ggml.{key}_token_id")
        return int(found) if found is not None else None

    return GgufInfo(
        architecture=config.architecture,
        tokenizer_model="gpt2",
        tensor_types=frozenset(),
        bos_token_id=token_id("bos"),
        eos_token_id=token_id("eos"),
        eot_token_id=None,
        pad_token_id=token_id("padding"),
        unknown_token_id=token_id("unknown"),
        has_chat_template="tokenizer.chat_template" in vocabulary.fields,
        quantization=None,
    )


# --- files -------------------------------------------------------------------------------------------------


def _staging_path(path: Path) -> Path:
    """Where ``path`` is written until it is complete: hidden, and named by this process, so that a later build
    can tell an abandoned one (:func:`_remove_abandoned`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}{PARTIAL}{os.getpid()}")


def _remove_abandoned(folder: Path) -> None:
    """Delete staging files and folders whose process has ended (killed mid-build: a GGUF can be gigabytes)."""
    for item in folder.glob(f".*{PARTIAL}*"):
        pid = item.name.rsplit(PARTIAL, 1)[1]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue  # not ours (the export's own staging folders clean up after themselves), or still running
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
