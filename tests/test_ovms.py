"""export_ir.py --ovms: the graph.pbtxt and config.json OpenVINO Model Server serves an export from.

OVMS is not run here. graph.pbtxt is parsed by protobuf's own text-format parser against a schema of
the fields OVMS documents for its 2026 releases (the v2026.3 tag: MediaPipe's CalculatorGraphConfig
as docs/llm/reference.md uses it, LLMCalculatorOptions as in src/llm/llm_calculator.proto), so an unknown
field, a wrong type or a syntax error fails; then every field is checked. config.json is checked
against docs/mediapipe.md's model_config_list entry.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, text_format
from test_export_cli import assert_one_line_error, run_export_ir

from ovchat.errors import OvchatError
from ovchat.export import ExportOptions
from ovchat.export.ovms import (
    CONFIG_FILE,
    GRAPH_FILE,
    OvmsGraph,
    add_to_config,
    graph_text,
    kv_cache_gb,
    plan_ovms,
    write_ovms_files,
)
from ovchat.model_folder import REQUIRED_FILES, is_complete, read_manifest

# A 2-layer model with 2 KV heads of 16: 256 bytes of KV cache a token, 512 tokens of context.
TINY_CONFIG = {
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_size": 64,
    "max_position_embeddings": 512,
}
# SmolLM2-135M's shape: 23,040 bytes a token, 8192 tokens of context.
SMOLLM2_CONFIG = {
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "max_position_embeddings": 8192,
}

# ----- the schema: protobuf descriptors for the fields OVMS 2026.3 documents -----

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _F.TYPE_STRING,
    "bool": _F.TYPE_BOOL,
    "uint64": _F.TYPE_UINT64,
    "uint32": _F.TYPE_UINT32,
}


def _message(
    parent: Any, name: str, fields: list[tuple[str, str, int, str]], extensions: bool = False
) -> descriptor_pb2.DescriptorProto:
    """A message with ``(name, type, number, label)`` fields; a type not in _SCALARS names a message."""
    message = parent.add()
    message.name = name
    for field_name, type_name, number, label in fields:
        field = message.field.add(name=field_name, number=number)
        field.label = {"optional": _F.LABEL_OPTIONAL, "required": _F.LABEL_REQUIRED, "repeated": _F.LABEL_REPEATED}[
            label
        ]
        if type_name in _SCALARS:
            field.type = _SCALARS[type_name]
        elif type_name == "PipelineType":
            field.type = _F.TYPE_ENUM
            field.type_name = ".mediapipe.LLMCalculatorOptions.PipelineType"
        else:
            field.type = _F.TYPE_MESSAGE
            field.type_name = type_name
    if extensions:
        message.extension_range.add(start=20000, end=536870912)
    return message


def _schema() -> tuple[descriptor_pool.DescriptorPool, Any, Any, Any]:
    """The graph's message class, LLMCalculatorOptions' class and the sync-set handler options' extension."""
    pool = descriptor_pool.DescriptorPool()
    any_file = descriptor_pb2.FileDescriptorProto()
    any_pb2.DESCRIPTOR.CopyToProto(any_file)
    pool.Add(any_file)
    file = descriptor_pb2.FileDescriptorProto(
        name="ovms_graph_subset.proto", package="mediapipe", syntax="proto2", dependency=["google/protobuf/any.proto"]
    )
    _message(file.message_type, "MediaPipeOptions", [], extensions=True)
    _message(
        file.message_type,
        "InputStreamHandlerConfig",
        [("input_stream_handler", "string", 1, "optional"), ("options", ".mediapipe.MediaPipeOptions", 3, "optional")],
    )
    _message(
        file.message_type,
        "InputStreamInfo",
        [("tag_index", "string", 1, "optional"), ("back_edge", "bool", 2, "optional")],
    )
    graph = _message(
        file.message_type,
        "CalculatorGraphConfig",
        [
            ("node", ".mediapipe.CalculatorGraphConfig.Node", 1, "repeated"),
            ("input_stream", "string", 10, "repeated"),
            ("output_stream", "string", 15, "repeated"),
        ],
    )
    _message(
        graph.nested_type,
        "Node",
        [
            ("name", "string", 1, "optional"),
            ("calculator", "string", 2, "optional"),
            ("input_stream", "string", 3, "repeated"),
            ("output_stream", "string", 4, "repeated"),
            ("input_side_packet", "string", 5, "repeated"),
            ("node_options", ".google.protobuf.Any", 8, "repeated"),
            ("input_stream_handler", ".mediapipe.InputStreamHandlerConfig", 11, "optional"),
            ("input_stream_info", ".mediapipe.InputStreamInfo", 13, "repeated"),
        ],
    )
    sync = _message(
        file.message_type,
        "SyncSetInputStreamHandlerOptions",
        [("sync_set", ".mediapipe.SyncSetInputStreamHandlerOptions.SyncSet", 1, "repeated")],
    )
    _message(sync.nested_type, "SyncSet", [("tag_index", "string", 1, "repeated")])
    sync.extension.add(
        name="ext",
        number=97756474,
        label=_F.LABEL_OPTIONAL,
        type=_F.TYPE_MESSAGE,
        type_name=".mediapipe.SyncSetInputStreamHandlerOptions",
        extendee=".mediapipe.MediaPipeOptions",
    )
    # LLMCalculatorOptions' scalar fields, as src/llm/llm_calculator.proto declares them in OVMS 2026.3.
    llm = _message(
        file.message_type,
        "LLMCalculatorOptions",
        [
            ("models_path", "string", 1, "required"),
            ("max_num_batched_tokens", "uint64", 2, "optional"),
            ("cache_size", "uint64", 3, "optional"),
            ("max_num_seqs", "uint64", 4, "optional"),
            ("dynamic_split_fuse", "bool", 5, "optional"),
            ("device", "string", 6, "optional"),
            ("plugin_config", "string", 7, "optional"),
            ("best_of_limit", "uint32", 8, "optional"),
            ("max_tokens_limit", "uint32", 9, "optional"),
            ("enable_prefix_caching", "bool", 10, "optional"),
            ("draft_models_path", "string", 11, "optional"),
            ("draft_device", "string", 12, "optional"),
            ("draft_max_num_batched_tokens", "uint64", 13, "optional"),
            ("draft_cache_size", "uint64", 14, "optional"),
            ("draft_block_size", "uint64", 15, "optional"),
            ("draft_max_num_seqs", "uint64", 16, "optional"),
            ("draft_dynamic_split_fuse", "bool", 17, "optional"),
            ("draft_eagle3_mode", "bool", 18, "optional"),
            ("pipeline_type", "PipelineType", 19, "optional"),
            ("tool_parser", "string", 21, "optional"),
            ("reasoning_parser", "string", 22, "optional"),
            ("enable_tool_guided_generation", "bool", 23, "optional"),
            ("cache_interval_multiplier", "uint64", 25, "optional"),
        ],
    )
    pipeline_type = llm.enum_type.add(name="PipelineType")
    for number, name in enumerate(("LM", "VLM", "LM_CB", "VLM_CB", "OMNI", "AUTO")):
        pipeline_type.value.add(name=name, number=number)
    pool.Add(file)
    graph_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("mediapipe.CalculatorGraphConfig"))
    llm_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("mediapipe.LLMCalculatorOptions"))
    return pool, graph_class, llm_class, pool.FindExtensionByName("mediapipe.SyncSetInputStreamHandlerOptions.ext")


POOL, GRAPH, LLM_OPTIONS, SYNC_SET_EXT = _schema()


def parse_graph(text: str) -> tuple[Any, dict[str, Any]]:
    """The parsed graph and its LLM calculator's options that are set, by name."""
    graph = text_format.Parse(text, GRAPH(), descriptor_pool=POOL)
    assert len(graph.node) == 1
    assert len(graph.node[0].node_options) == 1
    packed = graph.node[0].node_options[0]
    assert packed.type_url == "type.googleapis.com/mediapipe.LLMCalculatorOptions"
    options = LLM_OPTIONS()
    assert packed.Unpack(options)
    assert options.IsInitialized()  # models_path is required
    return graph, {field.name: value for field, value in options.ListFields()}


def model_folder(root: Path, config: dict[str, Any] = TINY_CONFIG, name: str = "tiny") -> Path:
    """A folder with every file an export must have (only config.json has content)."""
    folder = root / name
    folder.mkdir(parents=True)
    for file in REQUIRED_FILES:
        (folder / file).write_text("{}")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def avx2_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU without AVX-512, where ovchat keeps the KV cache in f16."""
    monkeypatch.setattr("ovchat.engine.runtime.cpu_flags", lambda: frozenset({"avx2"}))


# ----- graph.pbtxt -----


def test_the_schema_refuses_what_ovms_would(tmp_path: Path) -> None:
    """The check has teeth: a misspelt option, a string where a number goes, a broken brace."""
    text = graph_text(model_folder(tmp_path))
    for broken in (
        text.replace("enable_prefix_caching:", "enable_prefix_cache:"),
        text.replace("cache_size: 1", 'cache_size: "1"'),
        text.replace("node: {", "node: {{", 1),
    ):
        with pytest.raises(text_format.ParseError):
            parse_graph(broken)


def test_graph_field_by_field(tmp_path: Path, avx2_cpu: None) -> None:
    text = graph_text(model_folder(tmp_path))
    # The graph pool directive the 2026.3 exporters write first (docs/mediapipe.md, "Graph Pool").
    assert text.splitlines()[0] == "# OVMS_GRAPH_QUEUE_MAX_SIZE: AUTO"
    graph, options = parse_graph(text)
    assert list(graph.input_stream) == ["HTTP_REQUEST_PAYLOAD:input"]
    assert list(graph.output_stream) == ["HTTP_RESPONSE_PAYLOAD:output"]
    node = graph.node[0]
    assert node.name == "LLMExecutor"
    assert node.calculator == "HttpLLMCalculator"
    assert list(node.input_stream) == ["LOOPBACK:loopback", "HTTP_REQUEST_PAYLOAD:input"]
    assert list(node.output_stream) == ["LOOPBACK:loopback", "HTTP_RESPONSE_PAYLOAD:output"]
    # reference.md: "Every node based on LLM Calculator MUST have exactly that specification of this side
    # packet"; the execution contexts are what 2026.3's graph pool needs.
    assert list(node.input_side_packet) == ["LLM_NODE_RESOURCES:llm", "LLM_NODE_EXECUTION_CONTEXTS:llm_ctx"]
    assert len(node.input_stream_info) == 1
    assert node.input_stream_info[0].tag_index == "LOOPBACK:0"
    assert node.input_stream_info[0].back_edge is True
    handler = node.input_stream_handler
    assert handler.input_stream_handler == "SyncSetInputStreamHandler"
    sync_sets = handler.options.Extensions[SYNC_SET_EXT].sync_set
    assert [list(sync.tag_index) for sync in sync_sets] == [["LOOPBACK:0"]]

    plugin_config = json.loads(options.pop("plugin_config"))
    assert options == {
        "models_path": "./",
        "enable_prefix_caching": True,
        "cache_size": 1,  # GB: 8 replies x 512 tokens x 256 bytes, rounded up to a whole GB
        "max_num_seqs": 8,
        "device": "CPU",
    }
    assert plugin_config == {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_PRECISION_HINT": "f32",
        "KV_CACHE_PRECISION": "f16",
    }


def test_graph_takes_ovchats_engine_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same properties and batch size as ovchat's own batched loop, so OVMS runs what ovchat runs."""
    from ovchat.engine.backends.batch_scheduler import DEFAULT_MAX_NUM_SEQS
    from ovchat.engine.runtime import compile_properties

    monkeypatch.setattr("ovchat.engine.runtime.cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    _, options = parse_graph(graph_text(model_folder(tmp_path)))
    assert options["max_num_seqs"] == DEFAULT_MAX_NUM_SEQS
    plugin_config = json.loads(options["plugin_config"])
    assert plugin_config == compile_properties("CPU", use_cache_dir=False)
    assert "KV_CACHE_PRECISION" not in plugin_config  # the CPU plugin's own u8 cache on AVX-512
    assert "CACHE_DIR" not in plugin_config  # a path on this machine, not in OVMS's container


def test_cache_size_grows_with_the_model(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, SMOLLM2_CONFIG)
    # 8 x 8192 x 23,040 bytes = 1.41 GiB -> 2 GB; 4 replies fit in 1.
    assert kv_cache_gb(folder, 8) == 2
    assert kv_cache_gb(folder, 4) == 1
    _, options = parse_graph(graph_text(folder))
    assert options["cache_size"] == 2


def test_graph_with_other_settings(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    graph = OvmsGraph(
        device="GPU",
        max_num_seqs=4,
        cache_size=0,
        enable_prefix_caching=False,
        plugin_config={"KV_CACHE_PRECISION": "u8", "CACHE_DIR": '/tmp/it\'s "quoted"'},
    )
    _, options = parse_graph(graph_text(folder, graph))
    assert json.loads(options.pop("plugin_config")) == {"KV_CACHE_PRECISION": "u8", "CACHE_DIR": '/tmp/it\'s "quoted"'}
    assert options == {
        "models_path": "./",
        "enable_prefix_caching": False,
        "cache_size": 0,  # OVMS: allocated as it is needed
        "max_num_seqs": 4,
        "device": "GPU",
    }
    _, options = parse_graph(graph_text(folder, OvmsGraph(device="GPU")))
    assert json.loads(options["plugin_config"]) == {"PERFORMANCE_HINT": "LATENCY"}  # ovchat's GPU properties


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"device": "NPU"}, "stateful pipeline, not continuous batching"),
        ({"device": 'CPU"'}, "plain device name"),
        ({"max_num_seqs": 0}, "max_num_seqs must be at least 1"),
        ({"cache_size": -1}, "cache_size is in GB"),
    ],
)
def test_graph_settings_refused(settings: dict[str, Any], fragment: str) -> None:
    with pytest.raises(OvchatError, match=fragment):
        OvmsGraph(**settings)


# ----- config.json -----


def test_config_created(tmp_path: Path) -> None:
    config = tmp_path / "models" / CONFIG_FILE
    assert add_to_config(config, "tiny", tmp_path / "models" / "tiny") == "tiny"
    assert json.loads(config.read_text()) == {"model_config_list": [{"config": {"name": "tiny", "base_path": "tiny"}}]}
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    assert sorted(path.name for path in config.parent.iterdir()) == [CONFIG_FILE]  # no temporary file left


def test_config_merged_with_its_other_entries(tmp_path: Path) -> None:
    config = tmp_path / CONFIG_FILE
    existing = {
        "monitoring": {"metrics": {"enable": True}},
        "model_config_list": [
            {"config": {"name": "resnet", "base_path": "/opt/models/resnet", "batch_size": "16"}},
            {"config": {"name": "tiny", "base_path": "old-tiny", "graph_path": "old.pbtxt"}},
            {"config": {"name": "qwen", "base_path": "qwen"}},
        ],
        "mediapipe_config_list": [{"name": "tiny", "base_path": "legacy"}, {"name": "holistic"}],
    }
    config.write_text(json.dumps(existing))
    config.chmod(0o640)
    add_to_config(config, "tiny", tmp_path / "tiny-int8")
    add_to_config(config, "new", tmp_path / "deeper" / "new-int4")
    assert json.loads(config.read_text()) == {
        "monitoring": {"metrics": {"enable": True}},
        "model_config_list": [
            {"config": {"name": "resnet", "base_path": "/opt/models/resnet", "batch_size": "16"}},
            {"config": {"name": "tiny", "base_path": "tiny-int8"}},  # replaced where it was
            {"config": {"name": "qwen", "base_path": "qwen"}},
            {"config": {"name": "new", "base_path": "deeper/new-int4"}},
        ],
        # The deprecated list keeps its other graphs; "tiny" would be served twice.
        "mediapipe_config_list": [{"name": "holistic"}],
    }
    assert stat.S_IMODE(config.stat().st_mode) == 0o640


def test_config_base_path_outside_its_folder_is_absolute(tmp_path: Path) -> None:
    config = tmp_path / "ovms" / CONFIG_FILE
    folder = tmp_path / "elsewhere" / "tiny"
    assert add_to_config(config, "tiny", folder) == folder.resolve().as_posix()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        ("[]", "the top level is not a JSON object"),
        ('{"model_config_list": {}}', "model_config_list is not a list"),
        ('{"model_config_list": [{"name": "x", "base_path": "x"}]}', "model_config_list[0] is not"),
        ('{"mediapipe_config_list": "tiny"}', "mediapipe_config_list is not a list"),
        ('{"mediapipe_config_list": [{"base_path": "x"}]}', "mediapipe_config_list[0] is not"),
    ],
)
def test_malformed_config_refused_and_left_alone(tmp_path: Path, content: str, fragment: str) -> None:
    folder = model_folder(tmp_path)
    config = tmp_path / CONFIG_FILE
    config.write_text(content)
    with pytest.raises(OvchatError) as raised:
        write_ovms_files(folder)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{config} is not an OVMS config file (")
    assert fragment in message
    assert config.read_text() == content
    assert not (folder / GRAPH_FILE).exists()  # checked before anything is written
    assert sorted(path.name for path in tmp_path.iterdir()) == [CONFIG_FILE, "tiny"]


def test_a_models_own_config_is_refused(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    before = (folder / "config.json").read_text()
    with pytest.raises(OvchatError, match=r"would be a model's own config\.json"):
        write_ovms_files(folder, config_path=folder / "config.json")
    with pytest.raises(OvchatError, match=r"would be a model's own config\.json"):
        write_ovms_files(folder, config_path=folder)
    assert (folder / "config.json").read_text() == before


@pytest.mark.parametrize("name", ["", " tiny", "my model", 'ti"ny'])
def test_bad_names_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(OvchatError, match="OVMS model name"):
        write_ovms_files(model_folder(tmp_path), name=name)


def test_write_ovms_files_and_the_serve_command(tmp_path: Path, avx2_cpu: None) -> None:
    folder = model_folder(tmp_path / "models")
    files = write_ovms_files(folder, name="org/tiny")
    assert files.graph_path == folder / GRAPH_FILE
    assert files.config_path == tmp_path / "models" / CONFIG_FILE
    parse_graph(files.graph_path.read_text())
    assert json.loads(files.config_path.read_text())["model_config_list"] == [
        {"config": {"name": "org/tiny", "base_path": "tiny"}}
    ]
    assert files.serve_command() == (
        f"docker run --rm -p 8000:8000 --user $(id -u):$(id -g) -v {tmp_path / 'models'}:/models:ro "
        "openvino/model_server:latest --config_path /models/config.json --rest_port 8000"
    )
    outside = write_ovms_files(folder, name="tiny", config_path=tmp_path / "ovms" / CONFIG_FILE)
    assert outside.config_path == tmp_path / "ovms" / CONFIG_FILE
    assert outside.serve_command() == (
        f"docker run --rm -p 8000:8000 --user $(id -u):$(id -g) -v {folder}:/model:ro "
        "openvino/model_server:latest --model_path /model --model_name tiny --rest_port 8000"
    )


def test_an_incomplete_folder_gets_no_graph(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    (folder / "openvino_model.bin").unlink()
    with pytest.raises(OvchatError, match=r"not a complete export \(no openvino_model.bin\)"):
        write_ovms_files(folder)
    assert not (folder / GRAPH_FILE).exists()


def test_plan_for_an_ir_folder_adds_files_only(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "models")
    plan = plan_ovms(str(folder), None, ExportOptions(), force=False)
    assert plan.existing == folder
    assert plan.config_path == tmp_path / "models" / CONFIG_FILE
    for output, options, force in (
        (tmp_path / "other", ExportOptions(), False),
        (None, ExportOptions(weight_format="int4"), False),
        (None, ExportOptions(), True),
    ):
        with pytest.raises(OvchatError, match="is already an IR folder"):
            plan_ovms(str(folder), output, options, force=force)


# ----- export_ir.py --ovms, end to end on the tiny model -----


def test_export_ir_with_ovms(tiny_checkpoint: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    out = models / "tiny-fp16"
    result = run_export_ir(str(tiny_checkpoint), "-o", str(out), "--weight-format", "fp16", "--ovms")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert "✓ check" in result.stderr
    assert f"OVMS: {out / GRAPH_FILE} written; {models / CONFIG_FILE} serves it as 'tiny-fp16'" in result.stderr
    assert f"-v {models}:/models:ro openvino/model_server:latest --config_path /models/config.json" in result.stderr

    _, options = parse_graph((out / GRAPH_FILE).read_text())
    assert options["models_path"] == "./"
    assert options["cache_size"] == 1
    assert options["device"] == "CPU"
    config = json.loads((models / CONFIG_FILE).read_text())
    assert config == {"model_config_list": [{"config": {"name": "tiny-fp16", "base_path": "tiny-fp16"}}]}
    # Still a complete export with its manifest, and the page lists it and nothing else (it lists the
    # complete folders in the models folder, as chat_streamlit.py does).
    assert is_complete(out)
    assert read_manifest(out)["weight_format"] == "fp16"
    assert [path for path in models.glob("*") if is_complete(path)] == [out]

    # The folder is there: --ovms without --force only adds the files, under another name here.
    again = run_export_ir(str(tiny_checkpoint), "-o", str(out), "--weight-format", "fp16", "--ovms", "--ovms-name", "t")
    assert again.returncode == 0, again.stderr
    assert "already exported; writing only the OVMS files" in again.stderr
    assert "✓ convert" not in again.stderr
    names = [entry["config"]["name"] for entry in json.loads((models / CONFIG_FILE).read_text())["model_config_list"]]
    assert names == ["tiny-fp16", "t"]

    # An IR folder as the source, and a config file that is not one: one line, nothing touched.
    (models / CONFIG_FILE).write_text("{oops")
    graph_before = (out / GRAPH_FILE).read_text()
    refused = run_export_ir(str(out), "--ovms")
    assert_one_line_error(refused, f"{models / CONFIG_FILE} is not an OVMS config file (not JSON")
    assert (models / CONFIG_FILE).read_text() == "{oops"
    assert (out / GRAPH_FILE).read_text() == graph_before


def test_ovms_flags_need_ovms(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run_export_ir(str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--ovms-name", "tiny")
    assert_one_line_error(result, "--ovms-name and --ovms-config apply only with --ovms")
    assert not (tmp_path / "out").exists()
