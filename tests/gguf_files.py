"""Tiny GGUF files written in tests: a random 2-layer llama whose weights are all of one GGUF tensor type."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FFN = 128
HEAD_DIM = HIDDEN // HEADS
# (name, rows, columns) of each layer's weights as transformers shapes them: (out_features, in_features).
LAYER_WEIGHTS = (
    ("attn_q", HEADS * HEAD_DIM, HIDDEN),
    ("attn_k", KV_HEADS * HEAD_DIM, HIDDEN),
    ("attn_v", KV_HEADS * HEAD_DIM, HIDDEN),
    ("attn_output", HIDDEN, HEADS * HEAD_DIM),
    ("ffn_gate", FFN, HIDDEN),
    ("ffn_up", FFN, HIDDEN),
    ("ffn_down", HIDDEN, FFN),
)
# A byte-level BPE as small as the readers take: SmolLM2's special tokens, the 256 bytes and two merges
# (transformers needs merges, and reads a list of one as a string). Nearly every token is one byte, so
# openvino-genai's tokenizer and transformers' agree on the export's parity probes whatever their
# pre-tokenizers; the vocabulary keeps token_embd and output at 261 rows.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = (("Ġ", "t"), ("Ġ", "a"))
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Which llama.cpp file type announces a file whose weights are all of one tensor type.
FILE_TYPES = {
    "F32": "ALL_F32",
    "F16": "MOSTLY_F16",
    "Q4_0": "MOSTLY_Q4_0",
    "Q4_1": "MOSTLY_Q4_1",
    "Q8_0": "MOSTLY_Q8_0",
}


@dataclass(frozen=True)
class GgufWeight:
    """One weight as the GGUF stores it: numpy rows are the weight's rows (GGUF's ne1), each row's values
    (ne0) in blocks of 32 for a quantized type."""

    name: str
    tensor_type: str
    raw: np.ndarray  # float32/float16 values, or the uint8 bytes of a quantized type's blocks


def byte_level_tokens() -> list[str]:
    """GPT-2's byte-level alphabet: each of the 256 bytes as the printable character BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(byte) if byte in printable else chr(next(shifted)) for byte in range(256)]


def write_tiny_llama_gguf(
    path: Path, tensor_type: str, seed: int = 0, announce_file_type: bool = True
) -> list[GgufWeight]:
    """A random llama of HIDDEN/LAYERS/HEADS/KV_HEADS/FFN with every weight in ``tensor_type`` and F32
    norms (as llama.cpp writes them), a byte-level BPE vocabulary, and an untied output matrix; its
    ``general.file_type`` names that type unless ``announce_file_type`` is false.
    Returns the weights as written (Q and K rows in the GGUF's own order, which llama.cpp permutes)."""
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType
    from gguf.quants import quantize

    quant = GGMLQuantizationType[tensor_type]
    tokens = [*SPECIAL_TOKENS, *byte_level_tokens(), *(left + right for left, right in MERGES)]
    vocab = len(tokens)
    rng = np.random.default_rng(seed)
    shapes = [("token_embd.weight", vocab, HIDDEN)]
    for layer in range(LAYERS):
        shapes += [(f"blk.{layer}.{name}.weight", rows, columns) for name, rows, columns in LAYER_WEIGHTS]
    shapes.append(("output.weight", vocab, HIDDEN))

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    if announce_file_type:
        writer.add_file_type(LlamaFileType[FILE_TYPES[tensor_type]])
    writer.add_quantization_version(2)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    specials = len(SPECIAL_TOKENS)
    writer.add_token_types([TokenType.CONTROL] * specials + [TokenType.NORMAL] * (vocab - specials))
    writer.add_token_merges([f"{left} {right}" for left, right in MERGES])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    weights = []
    for name, rows, columns in shapes:
        # Weights of a trained model's scale; quantize works row by row in blocks of 32 along the columns.
        values = rng.normal(0.0, 0.05, size=(rows, columns)).astype(np.float32)
        raw = quantize(values, quant)
        writer.add_tensor(name, raw, raw_dtype=quant if raw.dtype == np.uint8 else None)
        weights.append(GgufWeight(name, tensor_type, raw))
    norms = [f"blk.{layer}.{norm}.weight" for layer in range(LAYERS) for norm in ("attn_norm", "ffn_norm")]
    for name in [*norms, "output_norm.weight"]:
        writer.add_tensor(name, rng.uniform(0.5, 1.5, size=HIDDEN).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights
