"""Export a model once: checkpoint or GGUF -> stateful OpenVINO IR with tokenizers and a manifest.

The steps (load, convert, compress, save, check) run in a staging folder beside the
output, which is renamed into place only after the check passed, so a failure or an
interrupt never leaves a half-written model where the chat would pick it up. A process
killed outright (SIGKILL, a power cut) cannot remove its staging folder; the next export
into the same folder does (:func:`clean_stale_exports`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovchat import __version__
from ovchat.errors import OvchatError, first_line
from ovchat.export.options import KEEP_GGUF_BLOCKS, ExportOptions
from ovchat.export.sources import ModelSource, SourceKind, resolve_source, sha256_file
from ovchat.extras import require_export_extra
from ovchat.machine import peak_rss_mb
from ovchat.model_folder import IR_BIN, MANIFEST, ROUTE_KEEP_GGUF_BLOCKS, ROUTE_OPTIMUM, missing_files
from ovchat.paths import disk_bytes, models_dir

if TYPE_CHECKING:
    from ovchat.export.gguf import GgufInfo

TASK = "text-generation-with-past"

# Tokens that end an assistant turn in common chat templates. The hub's generation
# configs do not always list them, and a model that never emits its configured eos
# chats on into the next turn.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")

# Text for the tokenizer parity check: scripts, emoji, code and whitespace.
TOKENIZER_PROBES = (
    "Hello, world! How are you today?",
    "数学是被发明还是被发现的？",
    "日本語のテキストと emoji 😀👍🏽🇫🇷",
    'def add(a, b):\n    return a + b  # "sum"\n',
    "  leading and   inner   spaces\t\ttabs\n\n\nnewlines  ",
)

ProgressCallback = Callable[[str, str, float | None], None]
"""Called as ``(step, "start", None)`` and ``(step, "done", seconds)`` for each step."""


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportPlan:
    """What :func:`plan_export` checked: the source, where it goes and how."""

    source: ModelSource
    target: Path
    options: ExportOptions
    force: bool
    gguf: GgufInfo | None  # the GGUF header, for GGUF sources


def default_output(source: ModelSource, weight_format: str) -> Path:
    return models_dir() / f"{source.name}-{weight_format}"


def _package_versions() -> dict[str, str]:
    names = ("openvino", "openvino-tokenizers", "optimum-intel", "optimum", "nncf", "transformers", "torch")
    versions = {"ovchat": __version__}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


class _Steps:
    """Times each step and reports it to the progress callback."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.progress:
            self.progress(name, "start", None)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 2)
        if self.progress:
            self.progress(name, "done", self.seconds[name])


def end_of_turn_ids(vocab: Mapping[str, int], template: str, configured: Iterable[int]) -> list[int]:
    """The configured eos ids plus the end-of-turn tokens the chat template actually uses."""
    ids = set(configured)
    for token in END_OF_TURN_TOKENS:
        if token in template and token in vocab:
            ids.add(int(vocab[token]))
    return sorted(ids)


def end_of_turn_token_ids(tokenizer: Any, configured: int | list[int] | None) -> list[int]:
    """:func:`end_of_turn_ids` for a Hugging Face tokenizer and the generation config's eos ids."""
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return end_of_turn_ids(tokenizer.get_vocab(), template, ids)


def _prepare_checkpoint(plan: ExportPlan, staging: Path) -> tuple[Path, dict]:
    """A local transformers checkpoint folder for the plan's source, and facts for the manifest."""
    source = plan.source
    facts: dict[str, Any] = {}
    if plan.gguf is not None:
        from ovchat.export.gguf import gguf_to_checkpoint

        facts = _gguf_facts(plan)
        checkpoint = staging / "_checkpoint"
        gguf_to_checkpoint(source.path, checkpoint, plan.gguf)
        return checkpoint, facts
    if source.kind is SourceKind.HUB:
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(source.location)
        except Exception as error:
            raise OvchatError(
                f"could not download {source.location} from the Hugging Face hub: {type(error).__name__}"
            ) from error
        return Path(path), facts
    return source.path, facts


def _gguf_facts(plan: ExportPlan) -> dict[str, Any]:
    """The GGUF source's checksum (checked against the one expected, if any) and header, for the manifest."""
    source, info = plan.source, plan.gguf
    assert info is not None
    digest = sha256_file(source.path)
    if source.expected_sha256 and digest != source.expected_sha256:
        raise OvchatError(f"{source.path} has sha256 {digest}, expected {source.expected_sha256}; reinstall it")
    return {
        "source_sha256": digest,
        "quantization": info.quantization,
        "gguf": {
            "architecture": info.architecture,
            "tensor_types": sorted(info.tensor_types),
            **{k: v for k, v in info.metadata.items() if isinstance(v, str | int | list)},
        },
    }


def _check_loadable(checkpoint: Path, options: ExportOptions) -> Any:
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(checkpoint, trust_remote_code=options.trust_remote_code)
    except Exception as error:
        raise OvchatError(f"{checkpoint} is not a loadable checkpoint: {first_line(error)}") from error
    try:
        return AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=options.trust_remote_code)
    except Exception as error:
        raise OvchatError(f"{checkpoint} has no usable tokenizer: {first_line(error)}") from error


def _convert(checkpoint: Path, ir_dir: Path, options: ExportOptions) -> None:
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig

    # As optimum-cli does: fp16 is applied while saving; for int8/int4 the IR is written
    # uncompressed here and compressed by _compress. Passing the quantization config also
    # keeps main_export from int8-compressing models over 1B parameters on its own.
    qconfig = options.quantization_config()
    ov_config = OVConfig(dtype="fp16") if qconfig is None else OVConfig(quantization_config=qconfig)
    try:
        main_export(
            model_name_or_path=str(checkpoint),
            output=ir_dir,
            task=TASK,
            trust_remote_code=options.trust_remote_code,
            ov_config=ov_config,
            stateful=True,
            convert_tokenizer=True,
            library_name="transformers",
        )
    except (ValueError, KeyError, NotImplementedError) as error:
        # optimum raises these for architectures it cannot export.
        raise OvchatError(f"OpenVINO export failed: {first_line(error)}") from error


def _compress(checkpoint: Path, ir_dir: Path, options: ExportOptions) -> None:
    # _main_quantize is what optimum-cli runs after main_export; it compresses the IR in
    # place with NNCF. It is private API, hence the pinned optimum-intel version.
    from optimum.exporters.openvino.__main__ import _main_quantize

    _main_quantize(
        model_name_or_path=str(checkpoint),
        task=TASK,
        library_name="transformers",
        quantization_config=options.quantization_config(),
        output=ir_dir,
        cache_dir=str(ir_dir / ".hf-cache"),
        trust_remote_code=options.trust_remote_code,
    )
    shutil.rmtree(ir_dir / ".hf-cache", ignore_errors=True)


def _write_tokenizer_and_generation_config(checkpoint: Path, ir_dir: Path, tokenizer: Any) -> list[int]:
    from transformers import GenerationConfig

    tokenizer.save_pretrained(ir_dir)
    try:
        generation = GenerationConfig.from_pretrained(checkpoint)
    except OSError:
        generation = GenerationConfig()
    eos_ids = end_of_turn_token_ids(tokenizer, generation.eos_token_id)
    if eos_ids:
        generation.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    generation.save_pretrained(ir_dir)
    return eos_ids


def check_tokenizer_parity(ir_dir: Path, tokenizer: Any) -> None:
    """The OpenVINO tokenizer must give the same ids as the Hugging Face one."""
    import openvino as ov
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations)

    path = ir_dir / "openvino_tokenizer.xml"
    if not path.is_file():
        raise OvchatError("export produced no OpenVINO tokenizer (openvino_tokenizer.xml)")
    compiled = ov.Core().compile_model(path, "CPU")
    for text in TOKENIZER_PROBES:
        ov_ids = compiled([text])["input_ids"][0].tolist()
        hf_ids = tokenizer(text)["input_ids"]
        if ov_ids != hf_ids:
            raise OvchatError(f"OpenVINO tokenizer disagrees with the Hugging Face tokenizer on {text!r}")


def smoke_reply(ir_dir: Path) -> dict[str, Any]:
    """A short greedy chat reply from the IR, proving it loads and answers."""
    from ovchat.engine import Engine
    from ovchat.settings import GenerationSettings

    engine = Engine.load(ir_dir, use_cache_dir=False)
    reply = engine.generate(
        [{"role": "user", "content": "Say hello in one short sentence."}],
        GenerationSettings(max_new_tokens=24, temperature=0.0),
    )
    if reply.stats.new_tokens < 1:
        raise OvchatError("the exported model generated no tokens in the smoke test")
    return {
        "prompt": "Say hello in one short sentence.",
        "reply": reply.text,
        "new_tokens": reply.stats.new_tokens,
        "finish_reason": reply.stats.finish_reason,
    }


# What an export leaves beside its output while it runs, named with its process id so that another process can
# tell whether it is still running: the staging folder (tempfile.mkdtemp's random letters at the end), and the
# export being replaced, kept until the new one is in place.
_STAGING_NAME = re.compile(r"^\..+\.partial-(?P<pid>\d+)-[a-z0-9_]+$")
_BACKUP_NAME = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


def _process_running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # a zombie has ended; its parent has not looked
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # another user's process: running, and not ours to judge


def clean_stale_exports(folder: Path) -> list[Path]:
    """Remove what exports killed mid-way left in ``folder``: staging folders, and the backup of an export being
    replaced, which is put back if the new export never took its place. Returns the paths cleaned.

    Stale means the process id in the name no longer runs. Age cannot tell a stale staging folder from a running
    export's (a 7B model's export runs for most of an hour); a reused process id only keeps a stale folder until
    a later export. Folders on a disk shared by several machines are judged by this machine's processes."""
    cleaned: list[Path] = []
    if not folder.is_dir():
        return cleaned
    for entry in sorted(folder.iterdir()):
        found = _STAGING_NAME.match(entry.name) or _BACKUP_NAME.match(entry.name)
        if found is None or not entry.is_dir() or _process_running(int(found["pid"])):
            continue
        original = folder / found["name"] if "name" in found.groupdict() else None
        if original is not None and not original.exists():
            entry.rename(original)  # killed between its two renames: the replaced export is all there is
        else:
            shutil.rmtree(entry, ignore_errors=True)
        cleaned.append(entry)
    return cleaned


def _move_into_place(staging: Path, output: Path, force: bool) -> None:
    if not output.exists():
        staging.rename(output)
        return
    if not force:
        raise OvchatError(f"{output} already exists; pass --force to replace it")
    # Keep the old export until the new one is in place.
    backup = output.with_name(f".{output.name}.old-{os.getpid()}")
    output.rename(backup)
    try:
        staging.rename(output)
    except BaseException:
        backup.rename(output)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def plan_export(
    source: str | ModelSource | None,
    output: str | Path | None,
    options: ExportOptions,
    *,
    force: bool = False,
) -> ExportPlan:
    """Check what can be checked in seconds (source, GGUF header, output) before the slow work."""
    resolved = source if isinstance(source, ModelSource) else resolve_source(source)
    if resolved.kind is SourceKind.IR:
        raise OvchatError(
            f"{resolved.location} is already an OpenVINO IR folder; nothing to export "
            "(--ovms only adds the files OpenVINO Model Server needs)"
        )
    options = options.for_source(is_gguf=resolved.kind is SourceKind.GGUF)
    gguf = None
    if options.keeps_gguf_blocks and resolved.kind is not SourceKind.GGUF:
        raise OvchatError(
            f"--weight-format {KEEP_GGUF_BLOCKS} keeps a GGUF file's own quantized blocks, and "
            f"{resolved.location} is not a GGUF file; pick fp16, int8 or int4"
        )
    if not options.keeps_gguf_blocks:
        what = "dequantizing a GGUF file" if resolved.kind is SourceKind.GGUF else "exporting a checkpoint"
        require_export_extra(f"{what} to {options.weight_format}")
    if resolved.kind is SourceKind.GGUF:
        from ovchat.export.gguf import inspect_gguf

        gguf = inspect_gguf(resolved.path, keep_blocks=options.keeps_gguf_blocks)
    target = Path(output).expanduser().resolve() if output else default_output(resolved, options.weight_format)
    clean_stale_exports(target.parent)  # first: a replaced export put back by it is one that exists
    if target.exists() and not force:
        raise OvchatError(f"{target} already exists; pass --force to replace it")
    return ExportPlan(resolved, target, options, force, gguf)


def export_model(
    source: str | ModelSource | None = None,
    output: str | Path | None = None,
    options: ExportOptions | None = None,
    *,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export ``source`` (default model when None) to an IR folder and return where it went."""
    plan = plan_export(source, output, options or ExportOptions(), force=force)
    return execute_export(plan, progress=progress)


def execute_export(plan: ExportPlan, *, progress: ProgressCallback | None = None) -> ExportResult:
    """Run the slow steps of a checked plan."""
    resolved, target, options = plan.source, plan.target, plan.options
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    steps = _Steps(progress)
    started = time.perf_counter()
    keep_blocks = options.keeps_gguf_blocks
    ir_dir = staging / "ir"
    try:
        with steps.step("load"):
            if keep_blocks:
                facts = _gguf_facts(plan)
            else:
                checkpoint, facts = _prepare_checkpoint(plan, staging)
                tokenizer = _check_loadable(checkpoint, options)
        with steps.step("convert"):
            if keep_blocks:
                from ovchat.export.gguf_blocks import convert_keeping_blocks

                convert_keeping_blocks(resolved.path, ir_dir)
            else:
                _convert(checkpoint, ir_dir, options)
        if options.quantization_config() is not None:
            with steps.step("compress"):
                _compress(checkpoint, ir_dir, options)
        with steps.step("save"):
            if keep_blocks:
                from ovchat.export.gguf_blocks import write_hf_files

                assert plan.gguf is not None  # a GGUF source: plan_export read its header
                eos_ids, tokenizer = write_hf_files(resolved.path, plan.gguf, ir_dir)
            else:
                eos_ids = _write_tokenizer_and_generation_config(checkpoint, ir_dir, tokenizer)
                shutil.rmtree(staging / "_checkpoint", ignore_errors=True)
        with steps.step("check"):
            missing = missing_files(ir_dir)
            if missing:
                raise OvchatError(f"export produced no {', '.join(missing)}")
            # Without transformers (a lean install exporting a GGUF) there is no Hugging Face tokenizer to
            # compare with; the OpenVINO tokenizer is openvino-genai's own reading of the GGUF's vocabulary.
            if tokenizer is not None:
                check_tokenizer_parity(ir_dir, tokenizer)
            smoke = smoke_reply(ir_dir)
        from ovchat.engine.backends.genai_tokenizer import read_chat_template

        manifest = {
            "ovchat_manifest": 1,
            "name": resolved.name,
            "source": {"kind": resolved.kind.value, "location": resolved.location, **facts},
            "weight_format": options.weight_format,
            # How the weights were made: kept from the GGUF's blocks, or converted by optimum-intel
            # (and compressed by NNCF).
            "route": ROUTE_KEEP_GGUF_BLOCKS if keep_blocks else ROUTE_OPTIMUM,
            "quantization": options.quantization_config(),
            "task": TASK,
            "eos_token_ids": eos_ids,
            "has_chat_template": read_chat_template(ir_dir) is not None,
            "sizes": {
                "ir_bin_bytes": (ir_dir / IR_BIN).stat().st_size,
                "folder_bytes": disk_bytes(ir_dir),
            },
            "step_seconds": steps.seconds,
            "export_seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "smoke": smoke,
            "versions": _package_versions(),
            "options": asdict(options),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (ir_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        _move_into_place(ir_dir, target, plan.force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(target, manifest)
