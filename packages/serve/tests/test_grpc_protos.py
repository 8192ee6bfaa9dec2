"""Our generated protobuf modules: wire-identical to Triton's, importable beside tritonclient,
loadable under protobuf 7 as well as 6."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton

import mlp_serve
from mlp_serve._generated import mlp_inference_pb2 as pb
from mlp_serve._generated import mlp_model_config_pb2 as pb_config
from mlp_serve.grpc import server as grpc_server

GENERATED = Path(mlp_serve.__file__).parent / "_generated"
PROTOBUF7_PYTHON = Path(__file__).resolve().parents[3] / ".venvs" / "protobuf7" / "bin" / "python"

# Every message of the methods we serve, each the whole of Triton's (no field left out).
COMPLETE_MESSAGES = [
    name
    for method in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata")
    for name in (f"{method}Request", f"{method}Response")
] + [
    "InferParameter",
    "InferTensorContents",
    "ModelInferRequest",
    "ModelInferResponse",
    "ModelConfigRequest",
    "ModelConfigResponse",
]
# model_config.proto: ours is the subset mlp-serve describes, with Triton's numbers and types.
SUBSET_MESSAGES = [
    "ModelConfig",
    "ModelInput",
    "ModelOutput",
    "ModelDynamicBatching",
    "ModelQueuePolicy",
    "ModelInstanceGroup",
    "ModelVersionPolicy",
    "ModelParameter",
    "ModelTensorReshape",
]


def _short(full_name: str) -> str:
    for package in ("inference.", "mlp.serve.v2."):
        if full_name.startswith(package):
            return full_name[len(package) :]
    raise AssertionError(f"{full_name} is in neither package")


def _assert_same_enum(ours: EnumDescriptor, theirs: EnumDescriptor) -> None:
    assert {v.name: v.number for v in ours.values} == {v.name: v.number for v in theirs.values}


def _assert_wire_compatible(ours: Descriptor, theirs: Descriptor, *, complete: bool) -> None:
    where = _short(ours.full_name)
    assert _short(ours.full_name) == _short(theirs.full_name)
    if complete:
        assert set(ours.fields_by_number) == set(theirs.fields_by_number), where
    for number, field in ours.fields_by_number.items():
        assert number in theirs.fields_by_number, f"{where}.{field.name}: Triton has no #{number}"
        other = theirs.fields_by_number[number]
        assert (field.name, field.type) == (other.name, other.type), f"{where}.{field.name}"
        assert field.is_repeated == other.is_repeated, f"{where}.{field.name}"
        oneof = field.containing_oneof
        assert (oneof.name if oneof else None) == (
            other.containing_oneof.name if other.containing_oneof else None
        ), f"{where}.{field.name}"
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            assert _short(field.message_type.full_name) == _short(other.message_type.full_name)
            # Maps and service messages are whole; model_config.proto's are a subset.
            nested_complete = field.message_type.GetOptions().map_entry or (
                complete and field.message_type.file is not pb_config.DESCRIPTOR
            )
            _assert_wire_compatible(
                field.message_type, other.message_type, complete=nested_complete
            )
        if field.type == FieldDescriptor.TYPE_ENUM:
            _assert_same_enum(field.enum_type, other.enum_type)


@pytest.mark.parametrize("name", COMPLETE_MESSAGES)
def test_service_messages_match_triton_field_for_field(name):
    _assert_wire_compatible(
        pb.DESCRIPTOR.message_types_by_name[name],
        triton.DESCRIPTOR.message_types_by_name[name],
        complete=True,
    )


@pytest.mark.parametrize("name", SUBSET_MESSAGES)
def test_model_config_messages_use_tritons_numbers_and_types(name):
    _assert_wire_compatible(
        pb_config.DESCRIPTOR.message_types_by_name[name],
        triton_config.DESCRIPTOR.message_types_by_name[name],
        complete=False,
    )


def test_data_type_enum_matches_triton():
    _assert_same_enum(
        pb_config.DESCRIPTOR.enum_types_by_name["DataType"],
        triton_config.DESCRIPTOR.enum_types_by_name["DataType"],
    )


def test_our_packages_differ_from_tritons_and_both_live_in_one_pool():
    default = descriptor_pool.Default()
    ours = default.FindMessageTypeByName("mlp.serve.v2.ModelInferRequest")
    theirs = default.FindMessageTypeByName("inference.ModelInferRequest")
    assert ours is not theirs
    assert ours.file.name != theirs.file.name
    # The service name is Triton's, but only in the server's private pool.
    with pytest.raises(KeyError):
        default.FindFileByName("mlp_inference_service.proto")
    service = grpc_server.service_pool().FindServiceByName("inference.GRPCInferenceService")
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
    ]
    for method in service.methods:
        triton_method = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name[
            method.name
        ]
        assert _short(method.input_type.full_name) == _short(triton_method.input_type.full_name)
        assert _short(method.output_type.full_name) == _short(triton_method.output_type.full_name)


def test_a_triton_request_parses_as_ours_and_back_byte_for_byte():
    theirs = triton.ModelInferRequest(model_name="m", model_version="2", id="r1")
    tensor = theirs.inputs.add(name="x", datatype="INT64", shape=[2, 3])
    tensor.parameters["p"].string_param = "v"
    theirs.inputs.add(name="y", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.5)
    theirs.outputs.add(name="out").parameters["classification"].int64_param = 2
    theirs.parameters["priority"].uint64_param = 7
    theirs.raw_input_contents.append(bytes(48))
    body = theirs.SerializeToString(deterministic=True)

    ours = pb.ModelInferRequest.FromString(body)
    assert ours.inputs[0].parameters["p"].string_param == "v"
    assert list(ours.inputs[1].contents.fp32_contents) == [1.5]
    assert ours.parameters["priority"].uint64_param == 7
    assert ours.SerializeToString(deterministic=True) == body


def test_our_model_config_parses_as_tritons():
    ours = pb.ModelConfigResponse()
    config = ours.config
    config.name, config.platform, config.backend, config.max_batch_size = (
        "m",
        "onnxruntime_onnx",
        "onnxruntime",
        8,
    )
    config.input.add(name="x", data_type=pb_config.TYPE_FP32, dims=[-1, 4])
    config.output.add(name="y", data_type=pb_config.TYPE_STRING, dims=[-1])
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.parameters["provider"].string_value = "CPUExecutionProvider"
    theirs = triton.ModelConfigResponse.FromString(ours.SerializeToString())
    assert theirs.config.input[0].data_type == triton_config.TYPE_FP32
    assert theirs.config.output[0].data_type == triton_config.TYPE_STRING
    assert list(theirs.config.input[0].dims) == [-1, 4]
    assert theirs.config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert theirs.config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert theirs.config.parameters["provider"].string_value == "CPUExecutionProvider"
    assert theirs.config.backend == "onnxruntime"


def test_generated_folder_needs_only_protobuf():
    imports = [
        line.strip()
        for path in GENERATED.glob("*.py")
        for line in path.read_text().splitlines()
        if line.startswith(("import ", "from "))
    ]
    foreign = [
        line
        for line in imports
        if not line.startswith(("from google.protobuf", "import google.protobuf", "from . import"))
    ]
    assert foreign == []


def test_generated_modules_load_and_round_trip_under_protobuf_7(tmp_path):
    if not PROTOBUF7_PYTHON.exists():
        pytest.fail(
            f"{PROTOBUF7_PYTHON} does not exist: run tools/ci/make_protobuf7_env.sh first "
            "(a venv holding only protobuf 7, for this test)"
        )
    # A copy of the folder alone: proves it is self-contained (mlp_serve's own folder cannot go
    # on sys.path, its types.py would shadow the standard library's).
    shutil.copytree(
        GENERATED, tmp_path / "_generated", ignore=shutil.ignore_patterns("__pycache__")
    )
    original = pb.ModelInferRequest(model_name="m", id="r")
    tensor = original.inputs.add(name="x", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"a", b"\x00\xff"])
    original.raw_input_contents.append(b"\x01\x00\x00\x00z")
    original.parameters["n"].int64_param = -3
    script = textwrap.dedent(
        """
        import sys
        import google.protobuf
        from _generated import mlp_inference_pb2 as pb, mlp_model_config_pb2 as pb_config
        request = pb.ModelInferRequest.FromString(sys.stdin.buffer.read())
        assert request.inputs[0].contents.bytes_contents[1] == b"\\x00\\xff", request
        assert request.parameters["n"].int64_param == -3, request
        request.outputs.add(name="y")
        config = pb.ModelConfigResponse()
        config.config.input.add(name="x", data_type=pb_config.TYPE_FP16)
        sys.stdout.buffer.write(request.SerializeToString())
        print(google.protobuf.__version__, file=sys.stderr)
        """
    )
    result = subprocess.run(
        [
            str(PROTOBUF7_PYTHON),
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n{script}",
        ],
        input=original.SerializeToString(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().strip().startswith("7."), result.stderr.decode()
    echoed = pb.ModelInferRequest.FromString(result.stdout)
    assert echoed.inputs == original.inputs
    assert echoed.raw_input_contents == original.raw_input_contents
    assert [o.name for o in echoed.outputs] == ["y"]
    assert sys.modules["mlp_serve._generated.mlp_inference_pb2"] is pb
