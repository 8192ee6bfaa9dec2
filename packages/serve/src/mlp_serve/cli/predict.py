"""`mlp predict`: send rows (CSV or JSON) or an image to a running server, over REST or gRPC,
or run the model in this process (``--local BUNDLE``), where ``--input`` streams a Parquet or
CSV file bigger than memory into ``--output`` (see :mod:`mlp_serve.batch_predict`).

REST uses the people-facing endpoints (``/v1/models/{m}/predict`` and ``.../predict/image``).
gRPC speaks the Open Inference Protocol: the client reads the model's feature schema (or image
preprocessing) from its metadata, builds the ``numeric``/``categorical`` (or ``image``) tensors
itself and labels the outputs with the class labels the metadata lists. Both print one JSON
document: ``{"predictions": [...]}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from mlp_core.cli import Command
from mlp_core.errors import ServingError

SERVICE = "/inference.GRPCInferenceService/"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name in the server's (or --local's) repository")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="a CSV file of raw feature rows (with a header)")
    source.add_argument("--json", help='JSON rows: a file, or inline text [{"col": value}, ...]')
    source.add_argument("--image", type=Path, help="a JPEG or PNG for an image model")
    source.add_argument(
        "--input",
        type=Path,
        help="a Parquet or CSV file of raw feature rows, streamed in chunks into --output "
        "(with --local; needs mlp-serve[parquet])",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", default=None, help="REST base URL (default http://127.0.0.1:8000)")
    where.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at this address instead")
    where.add_argument(
        "--local",
        type=Path,
        metavar="BUNDLE",
        help="no server: run the model in this process from a bundle folder, or from a "
        "repository holding MODEL",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where --input's predictions go, row for row (.parquet or .csv)",
    )
    parser.add_argument("--version", default=None, help="model version (default: the newest)")
    parser.add_argument("--token", default=None, help="bearer token, if the server wants one")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rows per request; keep within the model's max_batch_size (default 64); with "
        f"--local, rows per chunk read and per run (default {LOCAL_BATCH_ROWS})",
    )


LOCAL_BATCH_ROWS = 4096
REMOTE_BATCH_ROWS = 64


def run(args: argparse.Namespace) -> int:
    for option, path in (("--csv", args.csv), ("--image", args.image), ("--input", args.input)):
        if path is not None and not path.is_file():
            raise ServingError(f"{option} {path}: no such file")
    if args.output is not None and args.input is None:
        raise ServingError("--output goes with --input: it is where a file's predictions go")
    if args.input is not None and (args.local is None or args.output is None):
        raise ServingError(
            "--input streams a file through the model in this process: give --local BUNDLE "
            "and --output FILE too",
            hint="mlp predict MODEL --local REPO --input rows.parquet --output preds.parquet",
        )
    if args.batch_size is not None and args.batch_size < 1:
        raise ServingError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.local is not None:
        return _local_predict(args)
    args.batch_size = args.batch_size or REMOTE_BATCH_ROWS
    predictions = _grpc_predict(args) if args.grpc else _rest_predict(args)
    print(json.dumps({"predictions": predictions}, indent=2))
    return 0


# -- in this process ---------------------------------------------------------------------


def _local_predict(args: argparse.Namespace) -> int:
    from mlp_serve.errors import InferenceError

    try:
        return _run_locally(args)
    except InferenceError as exc:
        # The server's errors, with a hint for this command rather than a server's client.
        raise ServingError(
            exc.message, hint="Check MODEL, --local and the input named above."
        ) from None


def _run_locally(args: argparse.Namespace) -> int:
    import os

    from mlp_obs.log import LEVEL_ENV, configure_logging
    from mlp_serve.config import BatchingConfig, ServeConfig
    from mlp_serve.predictor import Predictor, import_tables

    # On stderr, and quiet unless asked: stdout is the predictions' JSON, and the loading
    # lines a server logs (provider, threads, ready) are noise to a one-off prediction.
    quiet = None if os.environ.get(LEVEL_ENV) else "WARNING"
    configure_logging("DEBUG" if getattr(args, "debug", False) else quiet)
    if args.input is not None:
        import_tables()  # pyarrow, or the extra to install, before a model is loaded
    batch_rows = args.batch_size or LOCAL_BATCH_ROWS
    # One run per chunk: the batch limit is the chunk's size, and nobody else shares the model.
    config = ServeConfig(
        poll_seconds=None, batching=BatchingConfig(enabled=False, max_batch_size=batch_rows)
    )
    bundle = args.local
    if (bundle / "model.onnx").is_file():
        if args.version is not None:
            raise ServingError(f"--version goes with a repository; {bundle} is one version")
        predictor = Predictor.load(bundle, config=config)
    elif bundle.is_dir():
        predictor = Predictor.load(bundle, args.model, version=args.version, config=config)
    else:
        raise ServingError(f"--local {bundle}: no such bundle folder or model repository")
    with predictor:
        if args.input is not None:
            return _predict_file(predictor, args, batch_rows)
        if args.image is not None:
            predictions = predictor.predict([args.image])
        else:
            rows = read_rows(args)
            if args.csv is not None:
                schema = predictor.manifest.feature_schema if predictor.manifest else None
                if schema is None:
                    raise ServingError(f"model {args.model!r} lists no feature schema")
                rows = typed_rows(rows, schema)
            predictions = [
                p for chunk in _chunks(rows, batch_rows) for p in predictor.predict(chunk)
            ]
    print(json.dumps({"predictions": predictions}, indent=2))
    return 0


def _predict_file(predictor: Any, args: argparse.Namespace, batch_rows: int) -> int:
    from mlp_serve.batch_predict import Progress, predict_file

    summary = predict_file(
        predictor, args.input, args.output, batch_rows=batch_rows, progress=Progress()
    )
    print(
        f"mlp predict: {summary.rows:,} rows in {summary.seconds:.1f} s "
        f"({summary.rows_per_second:,.0f} rows/s) -> {summary.output}",
        file=sys.stderr,
    )
    print(json.dumps({"rows": summary.rows, "output": str(summary.output)}))
    return 0


# -- inputs ------------------------------------------------------------------------------


def read_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.csv is not None:
        with open(args.csv, newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    text = args.json
    path = Path(text)
    if not text.lstrip().startswith(("[", "{")) and path.exists():
        text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServingError(f"--json: not valid JSON ({exc})") from None
    rows = rows.get("rows", rows) if isinstance(rows, dict) else rows
    if not isinstance(rows, list):
        raise ServingError('--json: expected a list of rows [{"column": value}, ...]')
    return rows


def typed_rows(rows: list[dict[str, Any]], schema: Any) -> list[dict[str, Any]]:
    """CSV cells are text: numbers become floats, empty cells missing values, and columns the
    model does not take (the target of a training file, say) are left out, with a note."""
    known = set(schema.numeric) | set(schema.categorical)
    ignored = sorted({key for row in rows for key in row} - known)
    if ignored:
        print(f"mlp predict: ignoring columns the model does not take: {ignored}", file=sys.stderr)
    typed = []
    for index, row in enumerate(rows, start=1):
        out: dict[str, Any] = {}
        for key, value in row.items():
            if key not in known or value in ("", None, "NA", "NaN"):
                continue
            if key in schema.numeric and isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ServingError(
                        f"row {index}, column {key!r}: expected a number, got {value!r}"
                    ) from None
            out[key] = value
        typed.append(out)
    return typed


# -- REST --------------------------------------------------------------------------------


def _rest_predict(args: argparse.Namespace) -> list[dict]:
    import httpx

    base = (args.url or "http://127.0.0.1:8000").rstrip("/")
    try:
        return _rest_exchange(args, base)
    except httpx.TransportError as exc:
        # A server that is not there is the user's next step, not a traceback.
        raise ServingError(
            f"cannot reach the server at {base}: {exc}",
            hint="Start it with `mlp serve REPO`, or pass --url (or --grpc) with its address.",
        ) from None


def _rest_exchange(args: argparse.Namespace, base: str) -> list[dict]:
    import httpx

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    params = {"version": args.version} if args.version else {}
    with httpx.Client(base_url=base, headers=headers, timeout=args.timeout) as client:
        if args.image is not None:
            content_type = "image/png" if args.image.suffix.lower() == ".png" else "image/jpeg"
            files = {"file": (args.image.name, args.image.read_bytes(), content_type)}
            reply = client.post(
                f"/v1/models/{args.model}/predict/image", files=files, params=params
            )
        else:
            rows = read_rows(args)
            if args.csv is not None:
                rows = typed_rows(rows, _rest_feature_schema(client, args.model, params))
            predictions = []
            for chunk in _chunks(rows, args.batch_size):
                reply = client.post(
                    f"/v1/models/{args.model}/predict", json={"rows": chunk}, params=params
                )
                _check(reply, base)
                predictions += reply.json()["predictions"]
            return predictions
    _check(reply, base)
    return reply.json()["predictions"]


def _check(reply: Any, base: str) -> None:
    if reply.status_code != 200:
        raise ServingError(f"{base} answered {reply.status_code}: {_error_text(reply)}")


def _chunks(rows: list, size: int) -> list[list]:
    return [rows[start : start + max(size, 1)] for start in range(0, len(rows), max(size, 1))]


def _rest_feature_schema(client: Any, model: str, params: dict) -> Any:
    from mlp_serve.bundle import FeatureSchema

    path = f"/v2/models/{model}" + (f"/versions/{params['version']}" if params else "")
    reply = client.get(path)
    if reply.status_code != 200:
        raise ServingError(f"model {model!r}: {_error_text(reply)}")
    schema = reply.json().get("parameters", {}).get("feature_schema")
    if not schema:
        raise ServingError(f"model {model!r} lists no feature schema: not a tabular model")
    return FeatureSchema.model_validate_json(schema)


def _error_text(reply: Any) -> str:
    try:
        return reply.json().get("error") or reply.text
    except ValueError:
        return reply.text


# -- gRPC --------------------------------------------------------------------------------


def _grpc_predict(args: argparse.Namespace) -> list[dict]:
    import grpc

    from mlp_serve._generated import mlp_inference_pb2 as pb
    from mlp_serve.bundle import FeatureSchema
    from mlp_serve.grpc.codec import decode_infer_response, encode_infer_request
    from mlp_serve.rows import format_predictions, predictions_outputs, rows_request

    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    with grpc.insecure_channel(args.grpc) as channel:

        def call(method: str, request: Any, reply_class: Any) -> Any:
            stub = channel.unary_unary(
                SERVICE + method,
                request_serializer=_serialize,
                response_deserializer=reply_class.FromString,
            )
            try:
                return stub(request, metadata=metadata, timeout=args.timeout)
            except grpc.RpcError as exc:
                raise ServingError(f"{args.grpc}: {exc.code().name}: {exc.details()}") from None

        meta = call(
            "ModelMetadata",
            pb.ModelMetadataRequest(name=args.model, version=args.version or ""),
            pb.ModelMetadataResponse,
        )
        # ModelMetadata carries no parameters in the protocol; the model config does.
        config = call(
            "ModelConfig",
            pb.ModelConfigRequest(name=args.model, version=args.version or ""),
            pb.ModelConfigResponse,
        ).config
        params = {key: value.string_value for key, value in config.parameters.items()}
        if args.image is not None and "detection" in params:
            return _grpc_detect(args, call, meta.inputs[0].name, params)
        input_names = [tensor.name for tensor in meta.inputs]
        output_names = [tensor.name for tensor in meta.outputs]
        if args.image is not None:
            requests = [_image_request(args.image, params)]
        else:
            if "feature_schema" not in params:
                raise ServingError(f"model {args.model!r} lists no feature schema: not tabular")
            schema = FeatureSchema.model_validate_json(params["feature_schema"])
            rows = read_rows(args)
            rows = typed_rows(rows, schema) if args.csv is not None else rows
            requests = [
                rows_request(schema, chunk, input_names) for chunk in _chunks(rows, args.batch_size)
            ]
        labels = params.get("class_labels")
        class_labels = json.loads(labels) if labels else None
        predictions = []
        for request in requests:
            request.outputs = predictions_outputs(output_names)
            message = encode_infer_request(args.model, request, args.version or "")
            reply = call("ModelInfer", message, pb.ModelInferResponse)
            predictions += format_predictions(decode_infer_response(reply), class_labels)
    return predictions


def _grpc_detect(args: argparse.Namespace, call: Any, input_name: str, params: dict) -> list:
    """A detection model's boxes for ``--image``, in its pixels (as the REST endpoint answers)."""
    from mlp_serve._generated import mlp_inference_pb2 as pb
    from mlp_serve.detection_images import detection_images_request, format_detections
    from mlp_serve.grpc.codec import decode_infer_response, encode_infer_request
    from mlp_serve.images import eval_spec

    spec = eval_spec(json.loads(params["preprocessing"]))
    request, _, letterboxes = detection_images_request(
        spec, input_name, [(args.image.read_bytes(), str(args.image))]
    )
    message = encode_infer_request(args.model, request, args.version or "")
    reply = call("ModelInfer", message, pb.ModelInferResponse)
    labels = json.loads(params.get("class_labels") or "[]")
    return format_detections(decode_infer_response(reply), letterboxes, labels)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _image_request(path: Path, params: dict[str, Any]) -> Any:
    import numpy as np

    from mlp_serve.images import decode_image, eval_spec
    from mlp_serve.types import InferRequest, Tensor

    if "preprocessing" not in params:
        raise ServingError("this model lists no image preprocessing: not an image model")
    spec = eval_spec(json.loads(params["preprocessing"]))
    pixels = spec.apply(decode_image(path.read_bytes(), str(path)))[np.newaxis]
    return InferRequest(inputs=[Tensor("image", "FP32", list(pixels.shape), pixels)])


predict_command = Command(
    help="send rows (CSV/JSON) or an image to a running server over REST or gRPC, or run a "
    "bundle in this process (--local), streaming big Parquet/CSV files (--input/--output)",
    configure=configure,
    run=run,
)

if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="mlp predict")
    configure(parser)
    sys.exit(run(parser.parse_args()))
