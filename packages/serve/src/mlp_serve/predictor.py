"""The Predictor: mlp-serve's data plane in your own program or notebook, no server, no torch.

::

    from mlp_serve import Predictor

    with Predictor.load("repo/penguins/1") as model:          # a bundle folder
        model.predict([{"bill_length_mm": 39.1, "island": "Torgersen"}])
    with Predictor.load("repo", name="penguins") as model:    # the highest ready version
        model.predict(frame)                                  # a pandas DataFrame
        model.predict({"numeric": x, "categorical": c})       # raw tensors -> arrays

It is the server's own path, not a copy of it: a :class:`~mlp_serve.dataplane.DataPlane` over the
model repository (the bundle checks, the warm-up, the execution provider choice), the rows and
image conversions of the REST ``/v1/.../predict`` routes (:mod:`mlp_serve.rows`,
:mod:`mlp_serve.images`), the same validation and the same typed errors
(:class:`~mlp_serve.errors.InvalidInput` naming the row, column or tensor). A call runs in the
calling thread through the model's runner, as a gRPC call does; the data plane's event loop runs
in a thread of its own, so this works inside a running loop (Jupyter) too.

This module imports nothing heavy at import time: ``mlp_serve.Predictor`` costs no onnxruntime
until :meth:`Predictor.load`.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mlp_serve.errors import InvalidInput

if TYPE_CHECKING:
    from PIL import Image

    from mlp_core.tensors import TensorSpec
    from mlp_serve.bundle import Manifest
    from mlp_serve.config import ServeConfig
    from mlp_serve.dataplane import DataPlane
    from mlp_serve.repository import ModelVersion
    from mlp_serve.types import InferRequest, InferResponse

# The protocol label of the Predictor's requests in the data plane's metrics.
PROTOCOL = "python"
TENSORS_HINT = "Pass a dict of numpy arrays, the model's input tensors, instead."
_T = TypeVar("_T")


class Predictor:
    """One model version, loaded and checked as ``mlp serve`` loads it. Use :meth:`load`."""

    def __init__(
        self, dataplane: DataPlane, loop: _LoopThread, name: str, version: str | None
    ) -> None:
        self._dataplane = dataplane
        self._loop = loop
        self._name = name
        self._version = version
        self._closed = False
        # Removes the scratch repository of a bundle folder: at close(), or when collected.
        self._cleanup: weakref.finalize | None = None

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        name: str | None = None,
        *,
        version: int | str | None = None,
        config: ServeConfig | None = None,
    ) -> Predictor:
        """A bundle folder (``REPO/penguins/1``), or a repository and a model ``name``.

        With ``name``, ``version`` pins one version; without it the model's highest ready
        version answers, as the server picks it. ``config`` is a serve config (onnxruntime
        options, ``device``, ``batching``); by default polling and dynamic batching are off
        (batching pays off only when several threads call :meth:`predict` at once).
        A version that fails the server's checks raises the reason here.
        """
        from mlp_core.errors import ConfigError
        from mlp_serve.config import BatchingConfig, ServeConfig
        from mlp_serve.dataplane import DataPlane
        from mlp_serve.errors import BundleError

        folder = Path(path)
        scratch: str | None = None
        if name is None:
            if version is not None:
                raise ConfigError(
                    "version= goes with a repository and name=; a bundle folder is one version"
                )
            if not (folder / "model.onnx").is_file():
                raise BundleError(
                    f"{folder} is not a bundle folder (no model.onnx)",
                    hint="Pass a bundle folder (REPO/<name>/<version>), or a repository and name=.",
                )
            # A repository holding only this bundle, so that no sibling version is loaded.
            scratch = tempfile.mkdtemp(prefix="mlp-predictor-")
            name, number = _bundle_identity(folder)
            os.mkdir(os.path.join(scratch, name))
            os.symlink(folder.resolve(), os.path.join(scratch, name, number), True)
            root: str | Path = scratch
            version = number
        else:
            root = folder
        if config is None:
            config = ServeConfig(poll_seconds=None, batching=BatchingConfig(enabled=False))
        config = config.model_copy(update={"models": [name]})
        loop = _LoopThread()
        dataplane = DataPlane(root, config)
        wanted = None if version is None else str(version)
        try:
            loop.call(dataplane.start())
            dataplane.model_entry(name, wanted)  # not ready: raises the reason it was refused
        except BaseException:
            loop.call(dataplane.stop(drain_seconds=0))
            loop.close()
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        predictor = cls(dataplane, loop, name, wanted)
        if scratch:
            predictor._cleanup = weakref.finalize(
                predictor, shutil.rmtree, scratch, ignore_errors=True
            )
        return predictor

    # -- what it is ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int:
        """The version answering (the highest ready one unless one was pinned)."""
        return self._entry().version

    @property
    def manifest(self) -> Manifest | None:
        return self._entry().manifest

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._entry().runtime.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._entry().runtime.outputs)

    # -- predicting ------------------------------------------------------------------------

    def predict(self, data: Any) -> Any:
        """Predictions for ``data``, by what it is:

        - rows (a list of ``{column: value}``) or a DataFrame (anything with
          ``.to_dict("records")``), for a bundle with a feature schema: one ``{"label",
          "probabilities"}`` (classification) or ``{"value"}`` (regression) per row, as the REST
          rows endpoint answers. NaN and None are missing values.
        - images (file paths, encoded JPEG/PNG bytes or PIL images; one or a list), for an image
          bundle: one ``{"label", "probabilities"}`` per image, as the upload endpoint answers.
        - tensors (a dict of numpy arrays by input name; a bare array for a one-input model), for
          any bundle: a dict of numpy arrays by output name. Arrays are cast to the input's
          datatype where numpy's same-kind casting allows, as JSON numbers are.

        Bad input raises the server's :class:`~mlp_serve.errors.InvalidInput`.
        """
        if isinstance(data, np.ndarray):
            return self._predict_tensors(self._single_input(data))
        if isinstance(data, Mapping):
            return self._predict_tensors(data)
        to_dict = getattr(data, "to_dict", None)
        if callable(to_dict):  # a DataFrame, duck-typed: pandas is no dependency of mlp-serve
            records = to_dict("records")
            if not isinstance(records, list):
                raise InvalidInput(f"{type(data).__name__}.to_dict('records') gave no list of rows")
            return self._predict_rows(records)
        if _is_image(data):
            return self._predict_images([data])
        if isinstance(data, (list, tuple)):
            items = list(data)
            if not items:
                raise InvalidInput("nothing to predict: the list is empty")
            # A list for a bundle with a feature schema is rows (a bad one is refused by its
            # index, as the server refuses it); for any other bundle, images or rows by content.
            manifest = self._entry().manifest
            if manifest is not None and manifest.feature_schema is not None:
                return self._predict_rows(items)
            if all(_is_image(item) for item in items):
                return self._predict_images(items)
            if all(isinstance(item, Mapping) for item in items):
                return self._predict_rows(items)
        raise InvalidInput(
            f"cannot predict from {type(data).__name__}: pass rows (a list of dicts or a "
            "DataFrame), images (paths, bytes or PIL images) or tensors (a dict of numpy arrays)"
        )

    def _predict_rows(self, rows: list[Any]) -> list[dict]:
        from mlp_serve.rows import feature_schema_of, format_predictions, predict_rows_request

        entry = self._entry()
        schema = feature_schema_of(self._name, entry.manifest, TENSORS_HINT)
        request = predict_rows_request(
            schema,
            [_native_row(row) for row in rows],
            [t.name for t in entry.runtime.inputs],
            [t.name for t in entry.runtime.outputs],
        )
        response = self._infer(entry, request)
        return format_predictions(response, _class_labels(entry))

    def _predict_images(self, images: list[Any]) -> list[Any]:
        from mlp_serve.images import image_spec_of, images_request
        from mlp_serve.rows import format_predictions

        entry = self._entry()
        if entry.detection is not None:
            return self._detect(entry, images)
        spec = image_spec_of(self._name, entry.manifest, TENSORS_HINT)
        request = images_request(
            spec, [_image_source(i, n) for n, i in enumerate(images)], _names(entry.runtime.outputs)
        )
        response = self._infer(entry, request)
        return format_predictions(response, _class_labels(entry))

    def _detect(self, entry: ModelVersion, images: list[Any]) -> list[list[dict]]:
        """A detection bundle's boxes per image, ``[{box, score, class_id, label}]`` in that
        image's pixels, as the upload endpoint answers (the bundle's default thresholds)."""
        from mlp_serve.detection_images import detection_images_request, format_detections

        detection = entry.detection
        assert detection is not None
        sources = [_image_source(i, n) for n, i in enumerate(images)]
        request, _, letterboxes = detection_images_request(
            detection.spec, detection.image_input.name, sources
        )
        response = self._infer(entry, request)
        return format_detections(response, letterboxes, detection.class_labels)

    def _predict_tensors(self, tensors: Mapping[Any, Any]) -> dict[str, np.ndarray]:
        from mlp_core.tensors import from_numpy_dtype
        from mlp_serve.types import InferRequest, Tensor

        entry = self._entry()
        expected = {t.name: t for t in entry.runtime.inputs}
        _refuse_a_single_row(tensors, expected, entry.manifest)
        inputs = []
        for name, value in tensors.items():
            array = np.asarray(value)
            spec = expected.get(str(name))
            if array.dtype.kind == "U" and spec is not None and spec.datatype == "BYTES":
                # The protocol's strings are bytes, as the wire codecs make them.
                array = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array)
            # Declared as the input's datatype: validation then casts, or refuses, as it does
            # JSON data. An unknown name keeps its own, and validation says it is unknown.
            datatype = spec.datatype if spec is not None else _datatype(array, from_numpy_dtype)
            inputs.append(Tensor(str(name), datatype, list(array.shape), array))
        response = self._infer(entry, InferRequest(inputs=inputs))
        return {t.name: np.asarray(t.data) for t in response.outputs}

    def predict_table(self, table: Any) -> Any:
        """Predictions for a pyarrow ``Table`` or ``RecordBatch`` of raw feature columns, as a
        pyarrow Table in the same row order: ``label`` and one ``probability_<class>`` column per
        class (classification) or ``value`` (regression), what :meth:`predict` gives for the
        same rows. Columns the model does not take are ignored; see :mod:`mlp_serve.tables`.

        Runs of at most the model's ``max_batch_size`` rows (the config's ``batching``); needs
        pyarrow (``mlp-serve[parquet]``).
        """
        tables = import_tables()
        import pyarrow as pa

        from mlp_serve.rows import feature_schema_of

        entry = self._entry()
        schema = feature_schema_of(self._name, entry.manifest, TENSORS_HINT)
        inputs, outputs = _names(entry.runtime.inputs), _names(entry.runtime.outputs)
        step = entry.max_batch_size or table.num_rows or 1
        parts = []
        for start in range(0, max(table.num_rows, 1), step):
            request = tables.table_request(schema, table.slice(start, step), inputs, outputs)
            response = self._infer(entry, request)
            parts.append(pa.table(tables.prediction_columns(response, _class_labels(entry))))
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def _single_input(self, array: np.ndarray) -> dict[str, np.ndarray]:
        names = _names(self._entry().runtime.inputs)
        if len(names) != 1:
            raise InvalidInput(
                f"model {self._name!r} takes {len(names)} inputs ({', '.join(names)}): pass a "
                "dict of arrays by input name"
            )
        return {names[0]: array}

    def _infer(self, entry: ModelVersion, request: InferRequest) -> InferResponse:
        version = str(entry.version)
        # In this thread through the model's runner (what a gRPC call does); None means the
        # loop must say why not (unloaded, stopping), so it asks the loop's path.
        response = self._dataplane.infer_in_thread(self._name, version, request, PROTOCOL)
        if response is None:
            response = self._loop.call(
                self._dataplane.infer(self._name, version, request, PROTOCOL)
            )
        return response

    def _entry(self) -> ModelVersion:
        if self._closed:
            from mlp_serve.errors import ModelUnavailable

            raise ModelUnavailable(f"the Predictor of {self._name!r} is closed")
        entry = self._dataplane.repository.ready_version(self._name, self._version)
        if entry is None:  # the loop's lookup raises the reason
            return self._loop.call(_lookup(self._dataplane, self._name, self._version))
        return entry

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Unload the model and stop the data plane's thread; calling it twice is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.call(self._dataplane.stop(drain_seconds=5))
        finally:
            self._loop.close()
            if self._cleanup is not None:
                self._cleanup()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"version {self.version}"
        return f"Predictor({self._name!r}, {state})"


def import_tables() -> Any:
    """:mod:`mlp_serve.tables`, or the extra to install when pyarrow is missing."""
    try:
        from mlp_serve import tables
    except ModuleNotFoundError as exc:
        if exc.name != "pyarrow":
            raise
        from mlp_core.errors import MissingDependencyError

        raise MissingDependencyError(
            "predicting from Parquet or CSV tables (pyarrow)", "mlp-serve[parquet]"
        ) from None
    return tables


class _LoopThread:
    """An event loop in a daemon thread: the data plane's home, whatever loop the caller runs."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mlp-predictor-loop", daemon=True
        )
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _lookup(dataplane: DataPlane, name: str, version: str | None) -> ModelVersion:
    return dataplane.model_entry(name, version)


def _bundle_identity(folder: Path) -> tuple[str, str]:
    """The model name and version of a bundle folder: ``REPO/<name>/<version>`` as the server
    reads it, or the folder's own name as version 1 for a bundle kept elsewhere."""
    resolved = folder.resolve()
    if resolved.name.isdigit() and int(resolved.name) > 0 and resolved.parent.name:
        return resolved.parent.name, resolved.name
    return resolved.name, "1"


def _class_labels(entry: ModelVersion) -> list[str] | None:
    return entry.manifest.class_labels if entry.manifest is not None else None


def _names(specs: list[TensorSpec]) -> list[str]:
    return [t.name for t in specs]


def _datatype(array: np.ndarray, from_numpy_dtype: Any) -> str:
    try:
        return from_numpy_dtype(array.dtype)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def _native_row(row: Any) -> Any:
    """A row with numpy scalars as Python values and NaN as None (a DataFrame's missing value);
    the rest is left to the rows conversion, which refuses what is wrong by row and column."""
    if not isinstance(row, Mapping):
        return row
    native = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and math.isnan(value):
            value = None
        native[str(key)] = value
    return native


def _is_image(item: Any) -> bool:
    if isinstance(item, (bytes, bytearray, memoryview, str, os.PathLike)):
        return True
    from PIL import Image

    return isinstance(item, Image.Image)


def _image_source(item: Any, index: int) -> tuple[bytes | Image.Image, str]:
    """What the images conversion takes: encoded bytes or a decoded image, and a name."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        try:
            return path.read_bytes(), f"file {str(path)!r}"
        except OSError as exc:
            raise InvalidInput(f"image file {str(path)!r} cannot be read: {exc}") from None
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item), f"image {index}"
    return item, f"image {index}"


def _refuse_a_single_row(
    tensors: Mapping[Any, Any], expected: Mapping[str, Any], manifest: Manifest | None
) -> None:
    """A dict of feature columns is one row given without its list: say so, not 'unknown
    input'."""
    schema = manifest.feature_schema if manifest is not None else None
    if schema is None or not tensors:
        return
    columns = set(schema.numeric) | set(schema.categorical)
    keys = {str(k) for k in tensors}
    if keys <= columns and not keys & set(expected):
        raise InvalidInput(
            "this dict names feature columns, not input tensors: pass rows as a list, "
            "[{column: value, ...}]"
        )
