"""Export a GGUF file keeping its own quantized blocks: no dequantization, no second quantization.

openvino-genai reads the GGUF itself (its GGUF reader maps Q4_0/Q4_1/Q8_0 blocks onto OpenVINO's
compressed weights) and saves the model and tokenizers it built as IR. The Hugging Face
files the engine reads beside the IR (``config.json``, ``generation_config.json``,
``tokenizer_config.json``) are written here from the GGUF's metadata, so this route needs neither
transformers nor torch. Where transformers is installed, the GGUF's tokenizer is also saved as a
Hugging Face tokenizer (the optimum loop needs one) and checked against the OpenVINO tokenizer.

The metadata mapping is written by hand: transformers has one, but importing it pulls in torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gguf import GGMLQuantizationType, LlamaFileType

from ovchat.errors import OvchatError, first_line

if TYPE_CHECKING:
    from ovchat.export.gguf import GgufInfo

# What openvino-genai 2026.4's GGUF reader builds: these architectures (with their transformers class),
# and files of these types, whose Q4_0/Q4_1/Q8_0 blocks it keeps as compressed weights. It refuses
# other file types (a Q4_K_M file, say) and has no other reader in this release. F32 is read for
# vectors (the norms) only: its weight builder has no F32 case ("Unsupported quantization type"), so
# an all-F32 file, or any F32 matrix, is refused before the export starts.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
KEPT_WEIGHT_TYPES = frozenset(
    {
        GGMLQuantizationType.F16,
        GGMLQuantizationType.Q4_0,
        GGMLQuantizationType.Q4_1,
        GGMLQuantizationType.Q8_0,
    }
)
KEPT_VECTOR_TYPES = frozenset({GGMLQuantizationType.F32, *KEPT_WEIGHT_TYPES})
KEPT_FILE_TYPES = frozenset(
    {
        LlamaFileType.MOSTLY_F16,
        LlamaFileType.MOSTLY_Q4_0,
        LlamaFileType.MOSTLY_Q4_1,
        LlamaFileType.MOSTLY_Q8_0,
    }
)


def _fields(reader: Any) -> dict[str, Any]:
    skipped = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
    return {key: field.contents() for key, field in reader.fields.items() if key not in skipped}


def read_gguf_metadata(path: Path) -> tuple[dict[str, Any], list[str], set[str]]:
    """The GGUF's metadata (without its vocabulary), its vocabulary, and its tensor names."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return _fields(reader), list(reader.fields["tokenizer.ggml.tokens"].contents()), {t.name for t in reader.tensors}


# The special tokens' roles, as transformers names them and as GGUF metadata keys them.
SPECIAL_TOKEN_KEYS = {"bos": "bos", "eos": "eos", "pad": "padding", "unk": "unknown"}


def special_token_ids(metadata: Mapping[str, Any]) -> dict[str, int]:
    """The ids the GGUF names for each special-token role it has."""
    ids = {role: metadata.get(f"tokenizer.ggml.{key}_token_id") for role, key in SPECIAL_TOKEN_KEYS.items()}
    return {role: int(token_id) for role, token_id in ids.items() if token_id is not None}


def hf_config(metadata: Mapping[str, Any], vocab_size: int, tensor_names: set[str]) -> dict[str, Any]:
    """A transformers ``config.json`` for the GGUF's model, from its metadata."""
    architecture = str(metadata.get("general.architecture", ""))
    if architecture not in ARCHITECTURES:
        raise OvchatError(f"the GGUF architecture {architecture!r} cannot keep its blocks")

    def value(key: str, default: Any = None) -> Any:
        return metadata.get(f"{architecture}.{key}", default)

    heads = int(value("attention.head_count"))
    hidden = int(value("embedding_length"))
    rope_theta = float(value("rope.freq_base", 10000.0))
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[architecture]],
        "model_type": architecture,
        "hidden_size": hidden,
        "intermediate_size": int(value("feed_forward_length")),
        "num_hidden_layers": int(value("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(value("attention.head_count_kv", heads)),
        "head_dim": int(value("attention.key_length", hidden // heads)),
        "max_position_embeddings": int(value("context_length", 2048)),
        "rms_norm_eps": float(value("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_theta": rope_theta, "rope_type": "default"},
        "vocab_size": vocab_size,
        # A GGUF without its own output matrix reuses the token embeddings for the logits.
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "hidden_act": "silu",
        "use_cache": True,
    }
    config.update({f"{role}_token_id": token_id for role, token_id in special_token_ids(metadata).items()})
    return config


def tokenizer_config(metadata: Mapping[str, Any], vocab: list[str]) -> dict[str, Any]:
    """The special tokens and chat template as ``tokenizer_config.json`` holds them."""
    config: dict[str, Any] = {
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "model_max_length": int(metadata.get(f"{metadata.get('general.architecture')}.context_length", 2048)),
    }
    for role, token_id in special_token_ids(metadata).items():
        if 0 <= token_id < len(vocab):
            config[f"{role}_token"] = vocab[token_id]
    template = metadata.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = str(template)
    return config


def convert_keeping_blocks(gguf_path: Path, ir_dir: Path) -> None:
    """openvino-genai's GGUF reader builds the model and tokenizers; they are saved as IR in ``ir_dir``,
    with Q4_1 blocks' offsets made exact (:func:`exact_q4_1_offsets`)."""
    import openvino as ov
    import openvino_genai

    ir_dir.mkdir(parents=True, exist_ok=True)
    # The reader saves the IR beside the file it reads: a link in the staging folder keeps the
    # source's own folder untouched.
    link = ir_dir / "source.gguf"
    link.symlink_to(gguf_path.resolve())
    try:
        pipeline = openvino_genai.LLMPipeline(str(link), "CPU", enable_save_ov_model=True)
        del pipeline
    except Exception as error:
        raise OvchatError(f"openvino-genai could not read {gguf_path.name}: {first_line(error)}") from error
    finally:
        link.unlink()
    model_xml = ir_dir / "openvino_model.xml"
    model = ov.Core().read_model(model_xml)
    if exact_q4_1_offsets(model, gguf_path):
        staged = ir_dir / "exact"
        staged.mkdir()
        # compress_to_fp16 would round the model's f32 constants (norms, the float tensors) to f16.
        ov.save_model(model, staged / model_xml.name, compress_to_fp16=False)
        del model
        for path in staged.iterdir():
            path.replace(ir_dir / path.name)
        staged.rmdir()


def _unpermute_rows(values: Any, heads: int) -> Any:
    """Undo the row order llama.cpp's converter gives Q and K for its rotary layout (as the reader does)."""
    rows = values.shape[0]
    return values.reshape(heads, rows // heads // 2, 2, *values.shape[1:]).swapaxes(1, 2).reshape(values.shape)


def exact_q4_1_offsets(model: Any, gguf_path: Path) -> int:
    """Give the model each Q4_1 block's own offset; returns how many weights were changed.

    A Q4_1 block is 32 4-bit values q with a scale d and a minimum m: w = d*q + m. openvino-genai
    2026.4 stores it as (q - z)*d with z a 4-bit integer, round(-m/d), which moves every weight of a
    block by up to half a step: perplexity on the shipped text went from llama.cpp's 23.1 to 35.0.
    Here z becomes -m/d in f16, the form OpenVINO's CPU plugin still runs as compressed weights.
    The reader's constants carry no names, so each is found by its scales, which equal the
    GGUF block scales (Q and K rows in the reader's order).
    """
    import numpy as np
    import openvino as ov
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    architecture = str(reader.fields["general.architecture"].contents())
    heads = int(reader.fields[f"{architecture}.attention.head_count"].contents())
    kv_field = reader.fields.get(f"{architecture}.attention.head_count_kv")
    kv_heads = int(kv_field.contents()) if kv_field is not None else heads
    offsets: dict[bytes, Any] = {}
    for tensor in reader.tensors:
        if tensor.tensor_type != GGMLQuantizationType.Q4_1:
            continue
        blocks = np.asarray(tensor.data).reshape(tensor.data.shape[0], -1, 20)  # f16 d, f16 m, 16 bytes of q
        scale, minimum = blocks[..., 0:2].copy().view(np.float16), blocks[..., 2:4].copy().view(np.float16)
        if ".attn_q." in tensor.name or ".attn_k." in tensor.name:
            tensor_heads = heads if ".attn_q." in tensor.name else kv_heads
            scale, minimum = _unpermute_rows(scale, tensor_heads), _unpermute_rows(minimum, tensor_heads)
        key = np.ascontiguousarray(scale).tobytes()
        if key in offsets:  # the match by scales would be ambiguous
            raise OvchatError(f"two Q4_1 tensors of {gguf_path.name} have the same scales; export it as int8 or int4")
        offsets[key] = (scale, minimum)
    if not offsets:
        return 0
    changed = 0
    for subtract in model.get_ordered_ops():
        if subtract.get_type_name() != "Subtract":
            continue
        consumers = [target.get_node() for target in subtract.output(0).get_target_inputs()]
        if len(consumers) != 1 or consumers[0].get_type_name() != "Multiply":
            continue
        scale_node = consumers[0].input_value(1).get_node()
        if scale_node.get_type_name() != "Constant":
            continue
        found = offsets.pop(np.ascontiguousarray(scale_node.get_data()).tobytes(), None)
        if found is None:
            continue
        scale, minimum = (part.astype(np.float32) for part in found)
        # A block whose values were all equal has d = 0 and q = 0: w = m, kept as (0 - (-m)) * 1.
        flat = scale == 0
        zero_point = np.where(flat, -minimum, -minimum / np.where(flat, 1, scale)).astype(np.float16)
        if flat.any():
            exact_scale = ov.op.Constant(np.where(flat, 1, scale).astype(np.float16))
            consumers[0].input(1).replace_source_output(exact_scale.output(0))
        subtract.input(1).replace_source_output(ov.op.Constant(zero_point).output(0))
        changed += 1
    if offsets:
        raise OvchatError(f"could not place {len(offsets)} Q4_1 tensors of {gguf_path.name} in the model exactly")
    return changed


def end_token_ids(metadata: Mapping[str, Any], vocab: list[str]) -> list[int]:
    """The GGUF's eos and end-of-turn ids, and the end-of-turn tokens its chat template uses."""
    from ovchat.export.pipeline import end_of_turn_ids

    configured = [metadata.get(f"tokenizer.ggml.{key}_token_id") for key in ("eos", "eot")]
    template = str(metadata.get("tokenizer.chat_template") or "")
    ids = {token: index for index, token in enumerate(vocab)}
    return end_of_turn_ids(ids, template, [int(i) for i in configured if i is not None])


def _hf_tokenizer(gguf_path: Path, info: GgufInfo) -> Any | None:
    """The GGUF's tokenizer as a Hugging Face tokenizer, or None without transformers."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None
    from ovchat.export.gguf import load_gguf_tokenizer

    return load_gguf_tokenizer(gguf_path, info)


def write_hf_files(gguf_path: Path, info: GgufInfo, ir_dir: Path) -> tuple[list[int], Any | None]:
    """config.json, generation_config.json and the tokenizer's files from the GGUF's metadata (``info`` is
    the export plan's reading of its header). Returns the end-of-reply ids and the Hugging Face tokenizer
    saved beside them (None without transformers)."""
    metadata, vocab, tensor_names = read_gguf_metadata(gguf_path)
    config = hf_config(metadata, len(vocab), tensor_names)
    _write_json(ir_dir / "config.json", config)
    end_ids = end_token_ids(metadata, vocab)
    generation = {key: config[key] for key in ("bos_token_id", "pad_token_id") if key in config}
    if end_ids:
        generation["eos_token_id"] = end_ids if len(end_ids) > 1 else end_ids[0]
    _write_json(ir_dir / "generation_config.json", generation)
    hf_tokenizer = _hf_tokenizer(gguf_path, info)
    if hf_tokenizer is None:
        _write_json(ir_dir / "tokenizer_config.json", tokenizer_config(metadata, vocab))
    else:
        hf_tokenizer.save_pretrained(ir_dir)
    return end_ids, hf_tokenizer


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
