"""mlp_core.tensors: tensor descriptors and the Open Inference Protocol datatype table."""

import numpy as np
import pytest
from pydantic import ValidationError

from mlp_core.tensors import (
    BATCH_AXIS_NAME,
    DATATYPES,
    DYNAMIC,
    ModelSignature,
    TensorSpec,
    UnknownDatatype,
    element_size,
    from_numpy_dtype,
    to_numpy_dtype,
)


def test_every_datatype_maps_to_numpy_and_back():
    assert DATATYPES == (
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    )  # fmt: skip
    for datatype in DATATYPES:
        assert from_numpy_dtype(to_numpy_dtype(datatype)) == datatype
    assert to_numpy_dtype("FP32") == np.float32 and to_numpy_dtype("BYTES") == np.dtype(object)


def test_text_is_bytes_and_unknown_types_are_errors():
    assert from_numpy_dtype(np.dtype("<U5")) == "BYTES"
    assert from_numpy_dtype(np.dtype("S3")) == "BYTES"
    assert from_numpy_dtype(np.float16) == "FP16"
    with pytest.raises(UnknownDatatype, match="complex128"):
        from_numpy_dtype(np.complex128)
    with pytest.raises(ValueError, match="unknown datatype 'FP8'"):  # a ValueError for callers
        to_numpy_dtype("FP8")


def test_element_size():
    assert element_size("FP64") == 8 and element_size("FP16") == 2 and element_size("BOOL") == 1
    assert element_size("BYTES") is None


def test_a_tensor_spec_describes_its_shape():
    spec = TensorSpec(name="numeric", datatype="FP32", shape=(DYNAMIC, 4))
    assert spec.numpy_dtype == np.float32
    assert spec.dynamic_axes == (0,)
    assert spec.concrete_shape(8) == (8, 4)
    assert spec.describe() == "numeric FP32 [-1, 4]"
    image = TensorSpec(name="image", datatype="UINT8", shape=(-1, -1, -1, 3))
    assert image.dynamic_axes == (0, 1, 2) and image.concrete_shape(2) == (2, 2, 2, 3)
    assert TensorSpec(name="scalar", datatype="INT64", shape=()).dynamic_axes == ()


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"datatype": "FLOAT"}, "datatype"),
        ({"shape": (-2, 4)}, "sizes are -1"),
        ({"unit": "mm"}, "unit"),
    ],
)
def test_a_bad_tensor_spec_is_refused(fields, problem):
    with pytest.raises(ValidationError, match=problem):
        TensorSpec(**{"name": "x", "datatype": "FP32", "shape": (-1,), **fields})


def test_a_signature_names_its_tensors_and_their_dynamic_axes():
    signature = ModelSignature(
        inputs=(
            TensorSpec(name="numeric", datatype="FP32", shape=(-1, 5)),
            TensorSpec(name="categorical", datatype="BYTES", shape=(-1, 2)),
        ),
        outputs=(
            TensorSpec(name="probabilities", datatype="FP32", shape=(-1, 3)),
            TensorSpec(name="classes", datatype="BYTES", shape=(3,)),
        ),
    )
    assert signature.input_names == ["numeric", "categorical"]
    assert signature.output_names == ["probabilities", "classes"]
    assert BATCH_AXIS_NAME == "batch"
    assert signature.dynamic_axes == {
        "numeric": {0: "batch"},
        "categorical": {0: "batch"},
        "probabilities": {0: "batch"},
        "classes": {},
    }
