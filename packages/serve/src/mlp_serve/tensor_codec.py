"""Raw tensor bytes, as the binary tensor extension (REST) and raw contents (gRPC) carry them.

Fixed-size datatypes are the little-endian elements in row-major order; BYTES elements are each
a 4-byte little-endian length followed by that many bytes, which is what tritonclient writes.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from mlp_core.tensors import DATATYPES, to_numpy_dtype
from mlp_serve.errors import InvalidInput

_LENGTH = struct.Struct("<I")
# numpy refuses an array whose non-zero dimensions multiply past this many bytes, even when
# another dimension is 0 and the array holds nothing ("array is too big").
_MAX_BYTES = int(np.iinfo(np.intp).max)
# Each fixed-size datatype's bytes per element and little-endian dtype, looked up once per tensor
# on every request's path.
_FIXED = {
    name: (to_numpy_dtype(name).itemsize, to_numpy_dtype(name).newbyteorder("<"))
    for name in DATATYPES
    if name != "BYTES"
}
_POINTER_BYTES = 8  # what numpy holds per element of a BYTES (object) array


def _layout(datatype: str) -> tuple[int, np.dtype] | None:
    """``_FIXED[datatype]``; None for BYTES; an unknown name is an UnknownDatatype."""
    layout = _FIXED.get(datatype)
    if layout is None and datatype != "BYTES":
        to_numpy_dtype(datatype)  # raises, naming the datatypes there are
    return layout


def check_shape_size(name: str, datatype: str, shape: list[int]) -> None:
    """Refuse a shape no array can have: [0, 2**62, 4] holds nothing, yet numpy cannot make it."""
    dims = math.prod(shape)
    if not dims:  # a zero dimension: what numpy refuses is the product of the others
        dims = math.prod(d for d in shape if d)
    layout = _layout(datatype)
    extent = dims * (layout[0] if layout is not None else _POINTER_BYTES)
    if extent > _MAX_BYTES:
        raise InvalidInput(
            f"input {name!r}: shape {shape} is too large: its non-zero dimensions multiply to "
            f"more than {_MAX_BYTES} bytes"
        )


def array_from_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    """The tensor ``name`` decoded from ``raw``; a size that does not fit the shape is refused.

    A fixed-size tensor is a view of ``raw``'s bytes, not a copy (read-only, as ``raw`` is)."""
    count = math.prod(shape)
    layout = _layout(datatype)
    if layout is None:
        return _strings_from_raw(name, shape, count, raw)
    size, dtype = layout
    if len(raw) != count * size:
        raise InvalidInput(
            f"input {name!r}: {len(raw)} bytes of data, but {datatype} {shape} needs "
            f"{count * size} ({count} elements of {size} bytes)"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _strings_from_raw(name: str, shape: list[int], count: int, raw: bytes) -> np.ndarray:
    values = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES data ends inside a 4-byte length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(
                f"input {name!r}: BYTES element {len(values)} claims {length} bytes but only "
                f"{len(raw) - offset} remain"
            )
        values.append(bytes(view[offset : offset + length]))
        offset += length
    if len(values) != count:
        raise InvalidInput(
            f"input {name!r}: {len(values)} BYTES elements given for shape {shape}, "
            f"which holds {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = values
    return array.reshape(shape)


def array_to_raw(array: np.ndarray, datatype: str) -> bytes:
    """``array`` as raw bytes in the layout :func:`array_from_raw` reads."""
    layout = _layout(datatype)
    if layout is not None:
        return np.ascontiguousarray(array, dtype=layout[1]).tobytes()
    parts = []
    for value in np.asarray(array, dtype=object).flat:
        data = as_bytes(value)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")
