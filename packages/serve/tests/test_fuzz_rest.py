"""REST inference fuzzed: the binary tensor extension and JSON bodies against a real server.

A malformed request must get a 4xx with an ``error`` message, never a 5xx and never a hang
(every request has a timeout), and the server must answer a good request correctly afterwards.
Binary requests start right (a JSON header, ``Inference-Header-Content-Length`` and the raw
tensors) and then get one thing wrong: the header length, a cut body, a header lying about
sizes, shapes or datatypes. JSON bodies are anything hypothesis makes of JSON, near-valid
inference documents, and rows for the ``/v1`` predict route.

hypothesis runs derandomized (a fixed seed) with a bounded number of examples per property;
EXAMPLES_RUN tallies the status codes each property got.
"""

from __future__ import annotations

import json
import math
import struct

import httpx
import numpy as np
import pytest
from fuzz_helpers import fuzz
from hypothesis import given
from hypothesis import strategies as st
from serve_helpers import (
    B,
    W,
    cpu_config,
    tabular_model,
    write_bundle,
    write_protocol_models,
)

from mlp_serve.server import BackgroundServer

TIMEOUT = 10.0  # seconds; a request that takes longer is a hang
LIMIT = 1 << 20  # the server's max_request_bytes: larger bodies get 413
MAX_BATCH = 8
HEADER = "Inference-Header-Content-Length"
ELEMENT = {"FP32": ("<f4", 4), "INT64": ("<i8", 8), "INT32": ("<i4", 4), "BYTES": (None, 0)}
# model -> its inputs (name, datatype, shape with -1 for any size)
MODELS = {
    "linear": [("x", "FP32", [-1, 4])],
    "ints": [("a", "INT64", [-1, 2])],
    "strings": [("text", "BYTES", [-1, 1])],
    "tabular": [("numeric", "FP32", [-1, 2]), ("categorical", "BYTES", [-1, 1])],
}
EXAMPLES_RUN: dict[str, dict[int, int]] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_protocol_models(repo)
    write_bundle(
        repo,
        "tabular",
        1,
        tabular_model(),
        task="multiclass",
        kind="tabular",
        feature_schema={"numeric": ["bill", "flipper"], "categorical": ["island"]},
        class_labels=["a", "b", "c"],
    )
    config = cpu_config(max_request_bytes=LIMIT, batching={"max_batch_size": MAX_BATCH})
    with BackgroundServer(repo, config) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.http_url, timeout=TIMEOUT) as client:
        yield client


def post(
    http: httpx.Client, path: str, body: bytes, headers=None, count: str = ""
) -> httpx.Response:
    reply = http.post(path, content=body, headers=headers or {})
    if count:
        tally = EXAMPLES_RUN.setdefault(count, {})
        tally[reply.status_code] = tally.get(reply.status_code, 0) + 1
    return reply


def assert_refused(reply: httpx.Response) -> None:
    assert 400 <= reply.status_code < 500, f"{reply.status_code}: {reply.text[:300]}"
    message = reply.json()["error"]
    assert isinstance(message, str) and message.strip(), reply.text


def assert_not_5xx(reply: httpx.Response) -> None:
    if reply.status_code != 200:
        assert_refused(reply)


def assert_ran(name: str, at_least: int) -> None:
    tally = EXAMPLES_RUN.get(name, {})
    print(f"\n{name}: {sum(tally.values())} examples, status codes {tally}")
    assert sum(tally.values()) >= at_least, tally


def assert_still_serving(http: httpx.Client) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    document = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}]
    }
    reply = http.post("/v2/models/linear/infer", json=document)
    assert reply.status_code == 200, reply.text
    y = np.array(reply.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(y, x @ W + B, rtol=1e-5)


# --- the binary tensor extension --------------------------------------------------------------


def encode_strings(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


@st.composite
def binary_request(draw):
    """A right binary request for a model: (model, header document, raw tensors)."""
    model = draw(st.sampled_from(sorted(MODELS)))
    batch = draw(st.integers(1, MAX_BATCH))
    inputs, raws = [], []
    for name, datatype, want in MODELS[model]:
        shape = [batch, *want[1:]]
        count = math.prod(shape)
        if datatype == "BYTES":
            raw = encode_strings(
                draw(st.lists(st.text(max_size=5), min_size=count, max_size=count))
            )
        else:
            values = (
                st.floats(-1e6, 1e6, width=32)
                if datatype == "FP32"
                else st.integers(-(2**40), 2**40)
            )
            array = np.array(draw(st.lists(values, min_size=count, max_size=count)))
            raw = array.astype(ELEMENT[datatype][0]).tobytes()
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        raws.append(raw)
    binary_output = draw(st.booleans())
    document = {"inputs": inputs, "parameters": {"binary_data_output": binary_output}}
    return model, document, raws


BINARY_MUTATIONS = [
    "none",
    "header length off",
    "header length junk",
    "no header length",
    "truncated body",
    "size lie",
    "huge size",
    "shape lie",
    "datatype lie",
    "trailing bytes",
    "json junk",
]


@st.composite
def binary_case(draw):
    """(model, body, headers, mutation): a right binary request with at most one lie in it."""
    model, document, raws = draw(binary_request())
    mutation = draw(st.sampled_from(BINARY_MUTATIONS))
    target = document["inputs"][draw(st.integers(0, len(document["inputs"]) - 1))]
    if mutation == "size lie":
        size = target["parameters"]["binary_data_size"]
        target["parameters"]["binary_data_size"] = max(
            size + draw(st.integers(-8, 8).filter(bool)), 0
        )
        if target["parameters"]["binary_data_size"] == size:
            target["parameters"]["binary_data_size"] = size + 1
    elif mutation == "huge size":
        target["parameters"]["binary_data_size"] = draw(
            st.sampled_from([2**31, 2**63 - 1, 10**30, -1, 1.5, "8", True])
        )
    elif mutation == "shape lie":
        axis = draw(st.integers(0, len(target["shape"]) - 1))
        target["shape"][axis] += draw(st.sampled_from([-1, 1, 2**31]))
    elif mutation == "datatype lie":
        target["datatype"] = draw(
            st.sampled_from(
                [
                    d
                    for d in ("FP32", "INT32", "INT64", "BYTES", "FP16", "UINT8", "fp32", "")
                    if d != target["datatype"]
                ]
            )
        )
    header = json.dumps(document).encode()
    if mutation == "json junk":
        header = draw(st.binary(min_size=1, max_size=64))
    binary = b"".join(raws)
    body = header + binary
    length: str | None = str(len(header))
    if mutation == "header length off":
        length = str(len(header) + draw(st.integers(-len(header), len(binary) + 8).filter(bool)))
    elif mutation == "header length junk":
        # Junk an HTTP client can send: a value with leading or trailing blanks (" ") is refused by
        # httpx before it leaves, so it would test the client, not the server.
        length = draw(st.sampled_from(["", "abc", "-5", "1e3", "0x10", str(2**64), "1 2", "12.5"]))
    elif mutation == "no header length":
        length = None
    elif mutation == "truncated body":
        body = body[: draw(st.integers(len(header), len(body) - 1))] if binary else body[:-1]
    elif mutation == "trailing bytes":
        body += draw(st.binary(min_size=1, max_size=16))
    headers = {"Content-Type": "application/octet-stream"}
    if length is not None:
        headers[HEADER] = length
    return model, body, headers, mutation, raws


def test_binary_extension_lies_are_4xx_and_the_truth_is_answered(http):
    @fuzz(300)
    @given(binary_case())
    def case(request) -> None:
        model, body, headers, mutation, raws = request
        reply = post(http, f"/v2/models/{model}/infer", body, headers, count="binary extension")
        if mutation != "none":
            assert_refused(reply)
            return
        assert reply.status_code == 200, reply.text
        if model == "linear":  # the answer must be the model's, not just any 200
            x = np.frombuffer(raws[0], dtype="<f4").reshape(-1, 4)
            np.testing.assert_allclose(output(reply, "y"), x @ W + B, rtol=1e-4, atol=1e-2)

    case()
    assert_ran("binary extension", 300)
    assert EXAMPLES_RUN["binary extension"].get(200, 0) >= 10
    assert_still_serving(http)


def output(reply: httpx.Response, name: str) -> np.ndarray:
    """An FP32 output of a reply, JSON or binary."""
    length = reply.headers.get(HEADER)
    header = json.loads(reply.content[: int(length)] if length else reply.content)
    offset = int(length or 0)
    for entry in header["outputs"]:
        size = entry.get("parameters", {}).get("binary_data_size")
        if entry["name"] == name:
            if size is None:
                return np.array(entry["data"], dtype=np.float32).reshape(entry["shape"])
            return np.frombuffer(reply.content[offset : offset + size], "<f4").reshape(
                entry["shape"]
            )
        offset += size or 0
    raise AssertionError(f"no output {name!r}")


def test_body_over_the_limit_with_a_lying_header(http):
    @fuzz(15)
    @given(st.sampled_from([LIMIT + 1, 2 * LIMIT]), st.integers(0, 2**40))
    def case(size: int, claimed: int) -> None:
        document = {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": claimed},
                }
            ]
        }
        header = json.dumps(document).encode()
        body = header + bytes(size)
        reply = post(
            http,
            "/v2/models/linear/infer",
            body,
            {HEADER: str(len(header))},
            count="over the limit",
        )
        assert reply.status_code == 413, reply.text
        assert reply.json()["error"]

    case()
    assert_ran("over the limit", 10)
    assert_still_serving(http)


# --- JSON bodies ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def test_any_json_body_is_answered_without_a_5xx(http):
    @fuzz(150)
    @given(st.sampled_from(sorted(MODELS)), json_values)
    def case(model: str, document) -> None:
        reply = post(
            http, f"/v2/models/{model}/infer", json.dumps(document).encode(), count="any JSON"
        )
        assert_refused(reply)  # nothing hypothesis makes of JSON here is a right request

    case()
    assert_ran("any JSON", 150)
    assert_still_serving(http)


INFER_FIELDS = {
    "name": st.text(max_size=5) | st.none() | st.integers(),
    "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "BOOL", "FP16", "fp32", ""])
    | st.integers(),
    "shape": st.lists(st.integers(-(2**64), 2**64), max_size=4) | json_values,
    "data": json_values | st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8),
    "parameters": json_values,
}


@st.composite
def near_valid_json(draw):
    """A right JSON inference document for a model, then one field of one input replaced."""
    model = draw(st.sampled_from(["linear", "ints", "strings"]))
    (name, datatype, want) = MODELS[model][0]
    batch = draw(st.integers(1, 3))
    shape = [batch, *want[1:]]
    count = math.prod(shape)
    if datatype == "BYTES":
        data: list = draw(st.lists(st.text(max_size=4), min_size=count, max_size=count))
    elif datatype == "FP32":
        data = draw(st.lists(st.floats(-1e3, 1e3), min_size=count, max_size=count))
    else:
        data = draw(st.lists(st.integers(-(2**62), 2**62), min_size=count, max_size=count))
    tensor = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    field = draw(st.sampled_from([None, *INFER_FIELDS]))
    if field is not None:
        tensor[field] = draw(INFER_FIELDS[field])
    return model, {"inputs": [tensor]}, field


def test_near_valid_json_documents(http):
    @fuzz(250)
    @given(near_valid_json())
    def case(request) -> None:
        model, document, field = request
        body = json.dumps(document).encode()
        reply = post(http, f"/v2/models/{model}/infer", body, count="near-valid JSON")
        if field is None:
            assert reply.status_code == 200, reply.text
        else:  # a replaced field may happen to be right again: then a 200 is right too
            assert_not_5xx(reply)

    case()
    assert_ran("near-valid JSON", 250)
    assert EXAMPLES_RUN["near-valid JSON"].get(200, 0) >= 10
    assert_still_serving(http)


def test_rows_of_any_json_on_the_predict_route(http):
    row = st.dictionaries(
        st.sampled_from(["bill", "flipper", "island", "other"]), json_values, max_size=4
    )

    @fuzz(150)
    @given(
        st.one_of(
            json_values, st.fixed_dictionaries({"rows": st.lists(row, max_size=4) | json_values})
        )
    )
    def case(document) -> None:
        reply = post(
            http, "/v1/models/tabular/predict", json.dumps(document).encode(), count="predict rows"
        )
        assert_not_5xx(reply)
        if reply.status_code == 200:  # one prediction per row, each a distribution
            rows = document["rows"]
            predictions = reply.json()["predictions"]
            assert len(predictions) == len(rows)
            assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predictions)

    case()
    assert_ran("predict rows", 150)
    assert_still_serving(http)
