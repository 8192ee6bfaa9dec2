"""ModelInfer fuzzed: bad bytes and lying messages against a real gRPC server.

Every malformed request must get INVALID_ARGUMENT (RESOURCE_EXHAUSTED for what exceeds a limit,
NOT_FOUND for a model that is not there), never UNKNOWN or INTERNAL, never a hang (every call
has a deadline), and the server must answer a good request correctly afterwards. Requests go as
raw bytes through a generic channel, so nothing on the client side checks or fixes them; what a
well-formed message means is read with tritonclient's own protobuf classes, independently of
the server's codec.

hypothesis runs derandomized (a fixed seed) with a bounded number of examples per property, so
CI runs the same cases each time; EXAMPLES_RUN records how many each property ran.
"""

from __future__ import annotations

import math
import struct

import grpc
import numpy as np
import pytest
from fuzz_helpers import fuzz
from grpc_helpers import INFERENCE, GrpcServerThread
from hypothesis import given
from hypothesis import strategies as st
from serve_helpers import B, W, cpu_config, write_protocol_models
from tritonclient.grpc import service_pb2 as triton

DEADLINE = 10.0  # seconds; a call that takes longer is a hang
MAX_BATCH = 8  # the server's max_batch_size: a larger first axis is refused
# Codes a malformed request may get. UNKNOWN and INTERNAL mean the server broke, and
# DEADLINE_EXCEEDED that it hung.
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
DATATYPES = ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
ELEMENT_SIZE = {"BOOL": 1, "UINT8": 1, "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8}
# model -> its inputs (name, datatype, shape with -1 for any size)
MODELS = {
    "linear": [("x", "FP32", [-1, 4])],
    "ints": [("a", "INT64", [-1, 2])],
    "strings": [("text", "BYTES", [-1, 1])],
}
# property -> status code name -> examples: what the closing note reports.
EXAMPLES_RUN: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_protocol_models(repo)
    config = cpu_config(batching={"max_batch_size": MAX_BATCH})
    with GrpcServerThread(repo, config) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as open_channel:
        yield open_channel


def call(
    channel: grpc.Channel, body: bytes, metadata=None, count: str = ""
) -> tuple[grpc.StatusCode, bytes]:
    """ModelInfer with ``body`` as the request bytes: (status code, reply bytes or details);
    ``count`` names the property whose tally of codes it adds to."""
    stub = channel.unary_unary(INFERENCE + "ModelInfer")
    try:
        code, reply = grpc.StatusCode.OK, stub(body, metadata=metadata, timeout=DEADLINE)
    except grpc.RpcError as exc:
        code, reply = exc.code(), (exc.details() or "").encode()
    if count:
        tally = EXAMPLES_RUN.setdefault(count, {})
        tally[code.name] = tally.get(code.name, 0) + 1
    return code, reply


def assert_refused(code: grpc.StatusCode, details: bytes, allowed=REFUSALS) -> None:
    assert code in allowed, f"{code.name}: {details[:300]!r}"
    assert details.strip(), "a refusal must say why"


def good_request() -> bytes:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    request = triton.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def assert_still_serving(channel: grpc.Channel) -> None:
    code, reply = call(channel, good_request())
    assert code is grpc.StatusCode.OK, reply
    response = triton.ModelInferResponse.FromString(reply)
    y = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 3)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(y, x @ W + B, rtol=1e-5)


def assert_ran(name: str, at_least: int) -> None:
    """hypothesis ran the property's examples (it stops early only when it runs out of them)."""
    tally = EXAMPLES_RUN.get(name, {})
    print(f"\n{name}: {sum(tally.values())} examples, {tally}")
    assert sum(tally.values()) >= at_least, tally


# --- strategies ---------------------------------------------------------------------------------

dims = st.one_of(
    st.integers(0, 10),
    st.integers(-(2**63), -1),
    st.integers(2**20, 2**63 - 1),  # products that overflow 64 bits, or memory
    st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1]),
)
shapes = st.lists(dims, max_size=4)


NAMES = st.sampled_from(["x", "a", "text", "", "y", "x" * 300])
MUTATIONS = ["none", "datatype", "dim", "rank", "size", "name", "drop", "duplicate", "batch"]


@st.composite
def tensors(draw, names=NAMES):
    """(name, datatype, shape, raw): each part sometimes right for some model, sometimes not."""
    datatype = draw(st.sampled_from([*DATATYPES, "", "FP8", "fp32", "STRING", "\x00"]))
    shape = draw(st.one_of(st.lists(st.integers(0, 10), min_size=1, max_size=3), shapes))
    size = ELEMENT_SIZE.get(datatype, 1)
    count = math.prod(shape) if shape and max(shape) <= 64 and min(shape) >= 0 else 0
    # Mostly the right number of bytes for the shape (so the checks after the size check run
    # too), sometimes one more or one fewer, sometimes anything.
    length = draw(
        st.one_of(
            st.just(count * size),
            st.sampled_from([max(count * size - 1, 0), count * size + 1]),
            st.integers(0, 256),
        )
    )
    raw = draw(st.binary(min_size=length, max_size=length))
    return draw(names), datatype, shape, raw


def raw_values(draw, datatype: str, count: int) -> bytes:
    if datatype != "BYTES":
        return draw(st.binary(min_size=count * ELEMENT_SIZE[datatype], max_size=count * 8 + 8))[
            : count * ELEMENT_SIZE[datatype]
        ]
    texts = draw(st.lists(st.text(max_size=6), min_size=count, max_size=count))
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


@st.composite
def near_valid(draw):
    """(model, inputs): a right request for the model, then at most one thing made wrong."""
    model = draw(st.sampled_from(sorted(MODELS)))
    batch = draw(st.integers(1, MAX_BATCH))
    inputs = []
    for name, datatype, want in MODELS[model]:
        shape = [batch, *want[1:]]
        inputs.append((name, datatype, shape, raw_values(draw, datatype, math.prod(shape))))
    name, datatype, shape, raw = inputs[0]
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "datatype":
        datatype = draw(st.sampled_from([d for d in DATATYPES if d != datatype]))
    elif mutation == "dim":
        axis = draw(st.integers(0, len(shape) - 1))
        shape = [*shape[:axis], draw(dims), *shape[axis + 1 :]]
    elif mutation == "rank":
        shape = draw(st.sampled_from([shape[:-1], [*shape, 1], [math.prod(shape)]]))
    elif mutation == "size":
        cut = draw(st.integers(-4, 4).filter(bool))
        raw = raw[:cut] if cut < 0 else raw + bytes(cut)
    elif mutation == "name":
        name = draw(NAMES.filter(lambda n: n != name))
    elif mutation == "batch":
        shape = [draw(st.sampled_from([0, MAX_BATCH + 1, 2**31])), *shape[1:]]
    inputs[0] = (name, datatype, shape, raw)
    if mutation == "drop":
        inputs = inputs[1:]
    elif mutation == "duplicate":
        inputs = [*inputs, inputs[0]]
    return model, inputs


def expected_ok(model: str, inputs: list[tuple[str, str, list[int], bytes]]) -> bool:
    """Whether a request with raw contents is right for ``model`` (the oracle, by the spec)."""
    wanted = MODELS[model]
    if not inputs or sorted(t[0] for t in inputs) != sorted(w[0] for w in wanted):
        return False
    batch = None
    for name, datatype, shape, raw in inputs:
        _, want_type, want_shape = next(w for w in wanted if w[0] == name)
        if datatype != want_type or len(shape) != len(want_shape):
            return False
        if any(w >= 0 and d != w for d, w in zip(shape, want_shape)) or min(shape) < 0:
            return False
        if not 1 <= shape[0] <= MAX_BATCH or batch not in (None, shape[0]):
            return False
        batch = shape[0]
        count = math.prod(shape)
        if datatype == "BYTES":
            if _split_strings(raw) is None or len(_split_strings(raw) or []) != count:
                return False
            if any(not _is_utf8(s) for s in _split_strings(raw) or []):
                return False
        elif len(raw) != count * ELEMENT_SIZE[datatype]:
            return False
    return True


def _split_strings(raw: bytes) -> list[bytes] | None:
    """The length-prefixed elements of ``raw``, or None when a prefix lies."""
    values, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            return None
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            return None
        values.append(raw[offset : offset + length])
        offset += length
    return values


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def infer_message(model: str, inputs, raw_count: int | None = None) -> bytes:
    request = triton.ModelInferRequest(model_name=model)
    for name, datatype, shape, _ in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    raws = [t[3] for t in inputs]
    if raw_count is not None:  # more or fewer raw contents than inputs
        raws = (raws + [b"\x00" * 16] * raw_count)[:raw_count]
    request.raw_input_contents.extend(raws)
    return request.SerializeToString()


# --- the properties -----------------------------------------------------------------------------


def test_random_bytes_are_refused_and_the_server_goes_on(channel):
    @fuzz(150)
    @given(st.binary(max_size=512))
    def case(body: bytes) -> None:
        code, details = call(channel, body, count="random bytes")
        try:
            message = triton.ModelInferRequest.FromString(body)
        except Exception:  # not protobuf at all: the decoder must refuse it
            assert_refused(code, details, {grpc.StatusCode.INVALID_ARGUMENT})
            return
        # Bytes that happen to parse name a model this server lacks, or carry no valid tensor.
        allowed = {grpc.StatusCode.INVALID_ARGUMENT}
        if message.model_name not in MODELS:
            allowed.add(grpc.StatusCode.NOT_FOUND)
        assert_refused(code, details, allowed)

    case()
    assert_ran("random bytes", 150)
    assert_still_serving(channel)


def test_messages_with_mismatched_names_shapes_datatypes_and_sizes(channel):
    @fuzz(250)
    @given(
        st.one_of(
            near_valid(),
            st.tuples(st.sampled_from(sorted(MODELS)), st.lists(tensors(), min_size=1, max_size=3)),
        )
    )
    def case(request) -> None:
        model, inputs = request
        code, reply = call(channel, infer_message(model, inputs), count="mismatched tensors")
        if not expected_ok(model, inputs):
            assert_refused(code, reply)
            return
        assert code is grpc.StatusCode.OK, reply
        response = triton.ModelInferResponse.FromString(reply)
        if model == "linear":  # the answer must be the model's, not just any 200
            _, _, shape, raw = inputs[0]
            x = np.frombuffer(raw, dtype="<f4").reshape(shape)
            y = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(-1, 3)
            with np.errstate(all="ignore"):
                np.testing.assert_allclose(y, x @ W + B, rtol=1e-4, atol=1e-4, equal_nan=True)

    case()
    assert_ran("mismatched tensors", 250)
    # Right requests were among them, and their answers were checked above.
    assert EXAMPLES_RUN["mismatched tensors"].get("OK", 0) >= 10
    assert_still_serving(channel)


def test_raw_input_contents_count_that_does_not_match_the_inputs(channel):
    x = ("x", "FP32", [1, 4], b"\x00" * 16)

    @fuzz(40)
    @given(st.integers(0, 6).filter(lambda n: n != 1), st.integers(1, 3))
    def case(raw_count: int, inputs: int) -> None:
        body = infer_message("linear", [x] * inputs, raw_count=raw_count)
        if inputs == raw_count:  # several inputs named x: refused as given twice
            body = infer_message("linear", [x] * inputs)
        assert_refused(*call(channel, body, count="raw contents count"))

    case()
    assert_ran("raw contents count", 18)
    assert_still_serving(channel)


def test_dimensions_that_overflow_or_are_negative(channel):
    @fuzz(120)
    @given(
        st.sampled_from(sorted(MODELS)),
        st.lists(dims, min_size=1, max_size=5).filter(
            lambda s: min(s) < 0 or max(s) > 64 or math.prod(s) > 2**40
        ),
        st.sampled_from(["raw", "typed", "empty"]),
    )
    def case(model: str, shape: list[int], how: str) -> None:
        name, datatype, _ = MODELS[model][0]
        request = triton.ModelInferRequest(model_name=model)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if how == "raw":
            request.raw_input_contents.append(b"\x01" * 64)
        elif how == "typed":
            if datatype == "BYTES":
                tensor.contents.bytes_contents.extend([b"a"] * 3)
            elif datatype == "INT64":
                tensor.contents.int64_contents.extend([1, 2, 3])
            else:
                tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
        assert_refused(*call(channel, request.SerializeToString(), count="overflowing dims"))

    case()
    assert_ran("overflowing dims", 120)
    assert_still_serving(channel)


def test_zero_sized_dimensions_beside_huge_ones(channel):
    # The product is 0, so the (empty) data fits: the huge axis alone must still be refused.
    @fuzz(60)
    @given(
        st.sampled_from(sorted(MODELS)),
        st.lists(st.sampled_from([0, 1, 2**31, 2**32 + 1, 2**62, 2**63 - 1]), min_size=2).filter(
            lambda s: 0 in s and max(s) > 2**20
        ),
        st.booleans(),
    )
    def case(model: str, shape: list[int], raw: bool) -> None:
        name, datatype, _ = MODELS[model][0]
        request = triton.ModelInferRequest(model_name=model)
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            request.raw_input_contents.append(b"")
        assert_refused(*call(channel, request.SerializeToString(), count="zero beside huge dims"))

    case()
    assert_ran("zero beside huge dims", 40)
    assert_still_serving(channel)


@st.composite
def broken_strings(draw):
    """Length-prefixed BYTES data with at least one prefix that lies, or a cut-off prefix."""
    elements = draw(st.lists(st.binary(max_size=12), min_size=0, max_size=4))
    parts = [struct.pack("<I", len(e)) + e for e in elements]
    how = draw(st.sampled_from(["short prefix", "long claim", "huge claim", "cut tail"]))
    if how == "short prefix":
        parts.append(draw(st.binary(min_size=1, max_size=3)))
    elif how == "long claim":
        tail = draw(st.binary(max_size=8))
        parts.append(struct.pack("<I", len(tail) + draw(st.integers(1, 100))) + tail)
    elif how == "huge claim":
        parts.append(struct.pack("<I", draw(st.sampled_from([2**31, 2**32 - 1]))) + b"ab")
    else:
        body = b"".join(parts) + struct.pack("<I", 5) + b"abcde"
        return body[: draw(st.integers(0, len(body) - 1))], len(elements) + 1
    return b"".join(parts), len(elements) + 1


def test_bytes_tensors_with_broken_length_prefixes(channel):
    @fuzz(120)
    @given(broken_strings(), st.integers(0, 6))
    def case(data, rows: int) -> None:
        raw, _ = data
        shape = [rows, 1]
        if _split_strings(raw) is not None and len(_split_strings(raw) or []) == rows:
            shape = [rows + 1, 1]  # the cut happened to land on a boundary: make it lie anyway
        body = infer_message("strings", [("text", "BYTES", shape, raw)])
        assert_refused(*call(channel, body, count="broken BYTES prefixes"))

    case()
    assert_ran("broken BYTES prefixes", 120)
    assert_still_serving(channel)


def test_bytes_tensors_that_are_not_utf8(channel):
    @fuzz(40)
    @given(st.binary(min_size=1, max_size=16).filter(lambda b: not _is_utf8(b)))
    def case(value: bytes) -> None:
        raw = struct.pack("<I", len(value)) + value
        body = infer_message("strings", [("text", "BYTES", [1, 1], raw)])
        assert_refused(*call(channel, body, count="non-UTF-8 BYTES"))

    case()
    assert_ran("non-UTF-8 BYTES", 40)
    assert_still_serving(channel)


def test_huge_metadata(channel):
    # grpc itself limits what a call's metadata may hold; the server must refuse past it (or
    # ignore what it does not read) and stay up.
    @fuzz(25)
    @given(
        st.sampled_from([1 << 10, 8 << 10, 16 << 10, 64 << 10, 1 << 20]),
        st.integers(1, 64),
        st.sampled_from(["x-junk", "authorization", "x-junk-bin"]),
    )
    def case(size: int, keys: int, key: str) -> None:
        each = max(size // keys, 1)
        value: str | bytes = b"\xff" * each if key.endswith("-bin") else "v" * each
        names = [key if key == "authorization" else f"x-{i}-{key}" for i in range(keys)]
        code, reply = call(
            channel, good_request(), metadata=[(n, value) for n in names], count="huge metadata"
        )
        assert code in {*REFUSALS, grpc.StatusCode.OK}, f"{code.name}: {reply[:300]!r}"

    case()
    assert_ran("huge metadata", 25)
    assert_still_serving(channel)


def test_regression_an_empty_shape_numpy_cannot_make_is_invalid_argument(channel):
    # Found by the fuzzing above: [0, 2**28, 2**32] holds no element, so the empty typed
    # contents fit it, but numpy cannot make the array: INTERNAL ("array is too big") before.
    request = triton.ModelInferRequest(model_name="ints")
    request.inputs.add(name="a", datatype="INT64", shape=[0, 2**28, 2**32])
    code, details = call(channel, request.SerializeToString())
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert b"too large" in details
    assert_still_serving(channel)
