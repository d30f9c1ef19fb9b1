"""What OpenVINO Model Server (OVMS) needs to serve an exported IR folder with continuous batching.

Two files, as OVMS's own documentation for its 2026 releases describes them (followed here: the
``v2026.3`` tag of github.com/openvinotoolkit/model_server, 2026-07-30, and its ``releases/2026/3`` branch):

- ``graph.pbtxt`` inside the IR folder: a MediaPipe graph with one ``HttpLLMCalculator`` node whose
  ``LLMCalculatorOptions`` point at the folder itself (``models_path: "./"``). The node's streams, side
  packets and stream handler are those of ``docs/llm/reference.md`` ("LLM Calculator") and of the text
  generation template in ``demos/common/export_models/export_model.py``, which since 2026.3 also passes the
  ``LLM_NODE_EXECUTION_CONTEXTS:llm_ctx`` side packet and starts with the
  ``# OVMS_GRAPH_QUEUE_MAX_SIZE: AUTO`` directive (``docs/mediapipe.md``, "Graph Pool"); OVMS accepts that
  side packet from 2026.2 on. The options written are the ones that script writes for text generation
  (``models_path``, ``plugin_config``, ``enable_prefix_caching``, ``cache_size``, ``max_num_seqs``,
  ``device``), with the types of ``src/llm/llm_calculator.proto``. OVMS picks the continuous-batching
  pipeline itself for a text-only folder on CPU or GPU (reference.md, "Servable Types"); NPU would get the
  stateful one, so it is refused here.
- an entry in an OVMS ``config.json``: ``{"config": {"name": ..., "base_path": ...}}`` in
  ``model_config_list``, the form ``docs/mediapipe.md`` recommends for graphs (``mediapipe_config_list`` is
  deprecated there since 2026.0) and the one the export script writes; ``base_path`` is relative to the
  config file when the folder lies under it (``docs/mediapipe.md``, "MediaPipe configuration options").

The values are ovchat's own: the OpenVINO properties its engine compiles with (``engine/runtime.py``:
f32, the latency hint, one stream and, on CPUs without AVX-512, an f16 KV cache; ``plugin_config`` takes
any OpenVINO property, ``KV_CACHE_PRECISION`` among them, per reference.md "OpenVINO runtime settings"),
and the batched loop's ``max_num_seqs`` and KV-cache size (``engine/backends/batch_scheduler.py``) without
its cap by this machine's free memory, since OVMS may run elsewhere.

OVMS is not run here: the tests check these files against the documented fields only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovchat import __version__
from ovchat.errors import OvchatError
from ovchat.export.options import ExportOptions
from ovchat.model_folder import looks_like_ir, missing_files, read_model_configs
from ovchat.paths import write_text_atomically

OVMS_RELEASE = "2026.3"
GRAPH_FILE = "graph.pbtxt"
CONFIG_FILE = "config.json"
OVMS_IMAGE = "openvino/model_server:latest"
# OVMS's default REST port in its docs, and the path of its OpenAI-compatible API.
OVMS_REST_PORT = 8000
OVMS_API_PATH = "/v3"
MODEL_LIST = "model_config_list"
LEGACY_GRAPH_LIST = "mediapipe_config_list"  # deprecated in OVMS 2026 (docs/mediapipe.md)


@dataclass(frozen=True)
class OvmsGraph:
    """The LLM calculator's settings; None means ovchat's choice (see the module docstring)."""

    device: str = "CPU"
    max_num_seqs: int | None = None  # replies generated at once; None: ovchat's batched loop's default
    cache_size: int | None = None  # KV cache in GB; None: sized for max_num_seqs replies of the model's context
    enable_prefix_caching: bool = True  # a chat's next turn reads only its new message
    plugin_config: Mapping[str, Any] | None = None  # OpenVINO properties; None: ovchat's for the device

    def __post_init__(self) -> None:
        if not self.device.strip() or any(char in self.device for char in "\"'\\\n"):
            raise OvchatError(f"OVMS device must be a plain device name such as CPU or GPU, not {self.device!r}")
        if self.device.upper().startswith("NPU"):
            raise OvchatError(
                "OVMS serves NPU models with its stateful pipeline, not continuous batching; use CPU or GPU"
            )
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise OvchatError(f"max_num_seqs must be at least 1, not {self.max_num_seqs}")
        if self.cache_size is not None and self.cache_size < 0:
            raise OvchatError(f"cache_size is in GB and must be 0 (dynamic) or more, not {self.cache_size}")


@dataclass(frozen=True)
class OvmsPlan:
    """Where ``--ovms`` writes, checked before any slow work."""

    config_path: Path
    name: str | None  # None: the folder's name
    existing: Path | None  # a complete export to add the files to without exporting; None: export first
    graph: OvmsGraph = field(default_factory=OvmsGraph)


@dataclass(frozen=True)
class OvmsFiles:
    folder: Path
    graph_path: Path
    config_path: Path
    name: str
    base_path: str  # as written in config.json

    def summary(self) -> str:
        return f"OVMS: {self.graph_path} written; {self.config_path} serves it as {self.name!r}"

    def serve_command(self) -> str:
        """The docker command that serves the config file (or, if the folder lies outside it, the folder)."""
        start = f"docker run --rm -p {OVMS_REST_PORT}:{OVMS_REST_PORT} --user $(id -u):$(id -g)"
        if Path(self.base_path).is_absolute():
            mount, args = f"{self.folder}:/model:ro", f"--model_path /model --model_name {self.name}"
        else:
            mount, args = f"{self.config_path.parent}:/models:ro", f"--config_path /models/{self.config_path.name}"
        return f"{start} -v {mount} {OVMS_IMAGE} {args} --rest_port {OVMS_REST_PORT}"


# ----- graph.pbtxt -----


def _pbtxt_string(value: str, quote: str = '"') -> str:
    """``value`` as a protobuf text-format string literal."""
    escaped = value.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n")
    return f"{quote}{escaped}{quote}"


def default_plugin_config(device: str) -> dict[str, Any]:
    """The OpenVINO properties ovchat's engine compiles with on ``device``, without its compiled-model cache
    (a path on this machine)."""
    from ovchat.engine.runtime import compile_properties

    return compile_properties(device, use_cache_dir=False)


def default_max_num_seqs() -> int:
    from ovchat.engine.backends import DEFAULT_MAX_NUM_SEQS

    return DEFAULT_MAX_NUM_SEQS


def kv_cache_gb(folder: Path, max_num_seqs: int) -> int:
    """GB of KV cache for ``max_num_seqs`` replies of the model's context, capped as ovchat's batched loop
    caps it (whole GB, at least 1)."""
    from ovchat.engine.backends.batch_scheduler import KV_CACHE_CONTEXT_CAP, kv_bytes_per_token
    from ovchat.model_folder import model_context_length

    config = read_model_configs(folder)[0]
    wanted = max_num_seqs * min(model_context_length(config), KV_CACHE_CONTEXT_CAP) * kv_bytes_per_token(config)
    return max(1, math.ceil(wanted / 2**30))


def graph_text(folder: Path, graph: OvmsGraph | None = None) -> str:
    """The graph.pbtxt that serves ``folder`` (whose config.json sizes the KV cache)."""
    graph = graph or OvmsGraph()
    max_num_seqs = graph.max_num_seqs if graph.max_num_seqs is not None else default_max_num_seqs()
    cache_size = graph.cache_size if graph.cache_size is not None else kv_cache_gb(folder, max_num_seqs)
    plugin_config = dict(
        graph.plugin_config if graph.plugin_config is not None else default_plugin_config(graph.device)
    )
    options = [
        ("models_path", _pbtxt_string("./")),
        ("plugin_config", _pbtxt_string(json.dumps(plugin_config), "'")),
        ("enable_prefix_caching", "true" if graph.enable_prefix_caching else "false"),
        ("cache_size", str(cache_size)),
        ("max_num_seqs", str(max_num_seqs)),
        ("device", _pbtxt_string(graph.device)),
    ]
    option_lines = ",\n".join(f"      {name}: {value}" for name, value in options)
    return f"""# OVMS_GRAPH_QUEUE_MAX_SIZE: AUTO
# Written by ovchat {__version__} as OpenVINO Model Server {OVMS_RELEASE} documents it (docs/llm/reference.md):
# this folder's model with continuous batching. OVMS reads it when it loads the model.
input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"

node: {{
  name: "LLMExecutor"
  calculator: "HttpLLMCalculator"
  input_stream: "LOOPBACK:loopback"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "LLM_NODE_RESOURCES:llm"
  input_side_packet: "LLM_NODE_EXECUTION_CONTEXTS:llm_ctx"
  output_stream: "LOOPBACK:loopback"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  input_stream_info: {{
    tag_index: 'LOOPBACK:0',
    back_edge: true
  }}
  node_options: {{
    [type.googleapis.com / mediapipe.LLMCalculatorOptions]: {{
{option_lines}
    }}
  }}
  input_stream_handler {{
    input_stream_handler: "SyncSetInputStreamHandler",
    options {{
      [mediapipe.SyncSetInputStreamHandlerOptions.ext] {{
        sync_set {{
          tag_index: "LOOPBACK:0"
        }}
      }}
    }}
  }}
}}
"""


def write_graph(folder: Path, graph: OvmsGraph | None = None) -> Path:
    """Write ``folder``/graph.pbtxt (atomically) for a complete export; its path."""
    folder = Path(folder)
    missing = missing_files(folder)
    if missing:
        raise OvchatError(f"{folder} is not a complete export (no {', '.join(missing)}); export it again")
    path = folder / GRAPH_FILE
    _write_atomically(path, graph_text(folder, graph))
    return path


# ----- config.json -----


def _refuse(path: Path, reason: str) -> OvchatError:
    return OvchatError(f"{path} is not an OVMS config file ({reason}); fix or move it, ovchat leaves it as it is")


def read_config(path: Path) -> dict[str, Any]:
    """An OVMS config file's content, checked where ovchat merges into it; an empty one if it does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise _refuse(path, f"unreadable: {error}") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise _refuse(path, f"not JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    if not isinstance(content, dict):
        raise _refuse(path, "the top level is not a JSON object")
    models = content.get(MODEL_LIST, [])
    if not isinstance(models, list):
        raise _refuse(path, f"{MODEL_LIST} is not a list")
    for index, entry in enumerate(models):
        config = entry.get("config") if isinstance(entry, dict) else None
        if not isinstance(config, dict) or not isinstance(config.get("name"), str):
            raise _refuse(path, f'{MODEL_LIST}[{index}] is not {{"config": {{"name": ...}}}}')
    legacy = content.get(LEGACY_GRAPH_LIST, [])
    if not isinstance(legacy, list):
        raise _refuse(path, f"{LEGACY_GRAPH_LIST} is not a list")
    for index, entry in enumerate(legacy):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _refuse(path, f'{LEGACY_GRAPH_LIST}[{index}] is not {{"name": ...}}')
    return content


def check_config_path(path: Path) -> Path:
    """``path`` as the config file to write (a folder means its config.json), refused where it would be a
    model folder's own config.json."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        path = path / CONFIG_FILE
    if looks_like_ir(path.parent) or (path.parent / "tokenizer_config.json").is_file():
        raise OvchatError(
            f"{path} would be a model's own config.json; put OVMS's config.json in the folder above the models"
        )
    return path


def check_name(name: str) -> str:
    """A model name OVMS can be asked for: the ``model`` field of requests and ``--model_name``."""
    if not name or name != name.strip() or any(char.isspace() or char in "\"'\\" for char in name):
        raise OvchatError(f"OVMS model name must be non-empty, without spaces, quotes or backslashes: {name!r}")
    return name


def config_base_path(config_path: Path, folder: Path) -> str:
    """``folder`` as config.json's ``base_path``: relative to the config file's folder when under it (so a
    container that mounts that folder finds it), else absolute."""
    folder, root = folder.resolve(), config_path.parent.resolve()
    return folder.relative_to(root).as_posix() if folder.is_relative_to(root) else folder.as_posix()


def add_to_config(config_path: Path, name: str, folder: Path) -> str:
    """Add or replace the entry ``name`` in the OVMS config file (created if missing), keeping every other
    entry and key; a same-named entry in the deprecated ``mediapipe_config_list`` is dropped, since OVMS
    would see two models of one name. Written atomically. The ``base_path`` written."""
    config_path = Path(config_path)
    content = read_config(config_path)
    base_path = config_base_path(config_path, Path(folder))
    entry = {"config": {"name": check_name(name), "base_path": base_path}}
    models = content.setdefault(MODEL_LIST, [])
    for index, existing in enumerate(models):
        if existing["config"]["name"] == name:
            models[index] = entry
            break
    else:
        models.append(entry)
    if LEGACY_GRAPH_LIST in content:
        content[LEGACY_GRAPH_LIST] = [item for item in content[LEGACY_GRAPH_LIST] if item["name"] != name]
    _write_atomically(config_path, json.dumps(content, indent=4, ensure_ascii=False) + "\n")
    return base_path


# ----- both, for export_ir.py --ovms -----


def existing_export(
    source: str | None, output: Path | str | None, options: ExportOptions, *, force: bool
) -> Path | None:
    """The complete IR folder ``--ovms`` adds its files to without exporting, or None when the export
    must run: the source itself when it is an IR folder, or an output folder already complete (without
    ``--force``, which exports again)."""
    from ovchat.export.pipeline import default_output
    from ovchat.export.sources import SourceKind, resolve_source
    from ovchat.model_folder import is_complete

    resolved = resolve_source(source)
    if resolved.kind is SourceKind.IR:
        folder = resolved.path
        if output is not None and Path(output).expanduser().resolve() != folder:
            raise OvchatError(f"{folder} is already an IR folder: --ovms writes into it, so drop -o")
        if force or options != ExportOptions(trust_remote_code=options.trust_remote_code):
            raise OvchatError(f"{folder} is already an IR folder: --ovms adds files to it; it is not exported again")
        missing = missing_files(folder)
        if missing:
            raise OvchatError(f"{folder} is not a complete export (no {', '.join(missing)}); export it again")
        return folder
    if force:
        return None
    options = options.for_source(is_gguf=resolved.kind is SourceKind.GGUF)
    target = Path(output).expanduser().resolve() if output else default_output(resolved, options.weight_format)
    return target if is_complete(target) else None


def plan_ovms(
    source: str | None,
    output: Path | str | None,
    options: ExportOptions,
    *,
    force: bool,
    name: str | None = None,
    config_path: Path | str | None = None,
    graph: OvmsGraph | None = None,
) -> OvmsPlan:
    """Check ``--ovms``'s targets in seconds, before any export: the name, and the config file (which must
    be absent or well-formed; by default config.json in the folder that holds the export)."""
    from ovchat.paths import models_dir

    if name is not None:
        check_name(name)
    existing = existing_export(source, output, options, force=force)
    if config_path is None:
        if existing is not None:
            root = existing.parent
        else:
            root = Path(output).expanduser().resolve().parent if output else models_dir()
        config_path = root / CONFIG_FILE
    config = check_config_path(Path(config_path))
    read_config(config)
    return OvmsPlan(config, name, existing, graph or OvmsGraph())


def write_ovms_files(
    folder: Path, name: str | None = None, config_path: Path | None = None, graph: OvmsGraph | None = None
) -> OvmsFiles:
    """graph.pbtxt into ``folder`` and its entry into the config file (default: config.json beside the
    folder); the config file is checked before either is written."""
    folder = Path(folder).resolve()
    name = check_name(name if name is not None else folder.name)
    config = check_config_path(config_path if config_path is not None else folder.parent / CONFIG_FILE)
    read_config(config)
    graph_path = write_graph(folder, graph)
    base_path = add_to_config(config, name, folder)
    return OvmsFiles(folder, graph_path, config, name, base_path)


def _write_atomically(path: Path, text: str) -> None:
    """The file keeps its permissions, or gets 0644 (OVMS may run as another user)."""
    write_text_atomically(path, text, mode=path.stat().st_mode & 0o777 if path.exists() else 0o644)
