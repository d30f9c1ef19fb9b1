"""Turn a GGUF file into a Hugging Face checkpoint folder with a tokenizer that matches llama.cpp."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ovchat.errors import OvchatError


@dataclass(frozen=True)
class GgufInfo:
    architecture: str
    tokenizer_model: str  # "gpt2" (byte-level BPE), "llama" (SentencePiece), ...
    tensor_types: frozenset[str]
    bos_token_id: int | None
    eos_token_id: int | None
    eot_token_id: int | None
    pad_token_id: int | None
    unknown_token_id: int | None
    has_chat_template: bool
    quantization: str | None  # the file type as llama.cpp names it: Q4_1, Q8_0, Q4_K_M...
    metadata: dict[str, object] = field(default_factory=dict)


def _field_value(reader: object, key: str) -> object | None:
    found = reader.fields.get(key)  # type: ignore[attr-defined]
    return found.contents() if found is not None else None


def inspect_gguf(path: Path, keep_blocks: bool = False) -> GgufInfo:
    """Read the header and refuse what the route cannot take, before any slow work: openvino-genai's
    GGUF reader when the blocks are kept, else transformers' import (which dequantizes)."""
    from gguf import GGMLQuantizationType, GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as error:  # gguf raises ValueError, struct.error, ... on foreign files
        raise OvchatError(f"{path} is not a readable GGUF file ({error})") from error
    architecture = str(_field_value(reader, "general.architecture") or "")
    types = {tensor.tensor_type for tensor in reader.tensors}
    file_type = _field_value(reader, "general.file_type")
    if keep_blocks:
        from ovchat.export.gguf_blocks import ARCHITECTURES, KEPT_FILE_TYPES, KEPT_VECTOR_TYPES, KEPT_WEIGHT_TYPES

        supported_architectures = set(ARCHITECTURES)
        matrix_types = {tensor.tensor_type for tensor in reader.tensors if len(tensor.shape) > 1}
        unsupported = sorted(
            {t.name for t in types - KEPT_VECTOR_TYPES} | {t.name for t in matrix_types - KEPT_WEIGHT_TYPES}
        )
        if file_type is not None and int(file_type) not in KEPT_FILE_TYPES:  # type: ignore[call-overload]
            unsupported = [_file_type_name(file_type) or str(file_type)]  # the reader goes by the file's type
        fallback = "; --weight-format int8 or int4 dequantizes it instead"
    else:
        from gguf.quants import _type_traits  # the types gguf-py can dequantize
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        supported_architectures = set(GGUF_SUPPORTED_ARCHITECTURES)
        readable = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, *_type_traits}
        unsupported = sorted(t.name for t in types - readable)
        fallback = ""
    if architecture not in supported_architectures:
        supported = ", ".join(sorted(supported_architectures))
        raise OvchatError(
            f"{path.name}: GGUF architecture '{architecture or 'unknown'}' is not supported "
            f"(supported: {supported}){fallback}"
        )
    if unsupported:
        raise OvchatError(f"{path.name}: GGUF quantization type {', '.join(unsupported)} is not supported{fallback}")

    def token_id(key: str) -> int | None:
        value = _field_value(reader, f"tokenizer.ggml.{key}")
        return int(value) if value is not None else None  # type: ignore[arg-type]

    return GgufInfo(
        architecture=architecture,
        tokenizer_model=str(_field_value(reader, "tokenizer.ggml.model") or ""),
        tensor_types=frozenset(t.name for t in types),
        bos_token_id=token_id("bos_token_id"),
        eos_token_id=token_id("eos_token_id"),
        eot_token_id=token_id("eot_token_id"),
        pad_token_id=token_id("padding_token_id"),
        unknown_token_id=token_id("unknown_token_id"),
        has_chat_template=_field_value(reader, "tokenizer.chat_template") is not None,
        quantization=_file_type_name(file_type),
        metadata={
            key: _field_value(reader, key)
            for key in ("general.name", "general.license", "general.languages", "general.file_type")
            if key in reader.fields
        },
    )


def _file_type_name(file_type: object) -> str | None:
    from gguf import LlamaFileType

    if file_type is None:
        return None
    try:
        return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")  # type: ignore[call-overload]
    except ValueError:
        return f"file type {file_type}"


def load_gguf_tokenizer(path: Path, info: GgufInfo) -> object:
    """The tokenizer stored in the GGUF, with its special tokens as the GGUF metadata names them.

    ``AutoTokenizer`` picks a slow-tokenizer class for some GGUFs (SmolLM2's becomes an
    SPM-style tokenizer that maps spaces to ``<|endoftext|>``); the fast class built from the
    GGUF vocabulary and merges gives llama.cpp's ids. It reports ``<|im_start|>`` as eos,
    so bos/eos/pad/unk are reset from the metadata ids.
    """
    from tokenizers import decoders
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(path.parent, gguf_file=path.name)
    if info.tokenizer_model == "gpt2":
        # transformers builds byte-level BPE GGUFs with SentencePiece leftovers (byte
        # fallback, a ByteFallback/Fuse/Replace decoder chain) that openvino-tokenizers
        # cannot convert. Byte-level BPE needs none of them: every byte is in the vocabulary.
        backend = tokenizer.backend_tokenizer
        backend.decoder = decoders.ByteLevel()
        backend.model.byte_fallback = False
    roles = {
        "bos_token": info.bos_token_id,
        "eos_token": info.eos_token_id,
        "pad_token": info.pad_token_id,
        "unk_token": info.unknown_token_id,
    }
    vocab_size = len(tokenizer)
    for role, token_id in roles.items():
        if token_id is not None and 0 <= token_id < vocab_size:
            setattr(tokenizer, role, tokenizer.convert_ids_to_tokens(token_id))
    return tokenizer


def gguf_to_checkpoint(path: Path, out_dir: Path, info: GgufInfo) -> None:
    """Dequantize ``path`` to an fp32 transformers checkpoint in ``out_dir``, tokenizer included.

    ``info`` is :func:`inspect_gguf`'s reading of the same file (it takes seconds, so it is read once).
    """
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_gguf_tokenizer(path, info)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    end_ids = sorted({i for i in (info.eos_token_id, info.eot_token_id) if i is not None})
    if end_ids:
        model.generation_config.eos_token_id = end_ids if len(end_ids) > 1 else end_ids[0]
    if info.pad_token_id is not None:
        model.generation_config.pad_token_id = info.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)  # type: ignore[attr-defined]
