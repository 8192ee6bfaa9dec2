"""The KServe baseline of bench_serve.py: KServe's Python model server with an onnxruntime model.

A ``kserve.Model`` per ``REPO/<name>/1/model.onnx`` whose ``predict`` takes the Open Inference
Protocol's InferRequest (REST v2 and gRPC alike) and answers an InferResponse, served by
``kserve.ModelServer`` the way KServe's own sklearn and lightgbm servers are. It runs in its own
environment, which bench_serve.py creates (``.venvs/bench-kserve``: kserve, onnxruntime, numpy):

    .venvs/bench-kserve/bin/python tools/bench/kserve_onnx_server.py REPO \\
        --http_port 8200 --grpc_port 8201 --configure_logging false
"""

from __future__ import annotations

import argparse
from pathlib import Path

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse
from kserve.model_server import parser as kserve_parser
from kserve.utils.utils import generate_uuid


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: Path, provider: str, threads: int) -> None:
        super().__init__(name)
        self.path = path
        self.provider = provider
        self.threads = threads
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = self.threads
        providers = [self.provider]
        if self.provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        features = payload.inputs[0].as_numpy()
        (outputs,) = self.session.run(None, {self.input_name: features})
        output = InferOutput(name=self.output_name, shape=list(outputs.shape), datatype="FP32")
        output.set_data_from_numpy(outputs, binary_data=payload.use_binary_outputs)
        return InferResponse(
            response_id=payload.id or generate_uuid(), model_name=self.name, infer_outputs=[output]
        )


def main() -> None:
    # KServe's own flags (--http_port, --grpc_port, --configure_logging, ...) come with its parser.
    parser = argparse.ArgumentParser(parents=[kserve_parser], description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--provider", default="CPUExecutionProvider")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    models = [
        OnnxModel(path.parent.parent.name, path, args.provider, args.threads)
        for path in sorted(args.repository.glob("*/1/model.onnx"))
    ]
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start(models)


if __name__ == "__main__":
    main()
