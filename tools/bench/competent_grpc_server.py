"""The competent gRPC baseline of bench_serve.py: grpcio + onnxruntime as a capable user writes it.

What someone would write instead of installing mlp-serve, over the same protocol: a servicer of
the Open Inference Protocol's ``ModelInfer`` on the stubs tritonclient ships (the KServe v2
proto), grpc's synchronous server with a thread pool, the raw input contents read with
``np.frombuffer`` (no copy), ``session.run`` inline with one onnxruntime thread, the raw output
back. No validation, no metrics, no logs, no batching. Every ``REPO/<name>/1/model.onnx``. Run by
the benchmark:

    .venv/bin/python tools/bench/competent_grpc_server.py REPO --port 8301

``--do-nothing`` answers every ``ModelInfer`` with empty bytes, the request neither parsed nor run:
grpc's own per-call work, the most any servicer on grpcio can answer.
"""

from __future__ import annotations

import argparse
import signal
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repo: Path, provider: str, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        self.sessions = {
            p.parent.parent.name: ort.InferenceSession(str(p), options, providers=[provider])
            for p in sorted(repo.glob("*/1/model.onnx"))
        }

    def ModelInfer(self, request, context):  # the protocol's method name
        session = self.sessions[request.model_name]
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tensor.shape)
        y = np.asarray(session.run(None, {tensor.name: x})[0])
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        output = response.outputs.add(name=session.get_outputs()[0].name, datatype="FP32")
        output.shape.extend(y.shape)
        response.raw_output_contents.append(y.tobytes())
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8301)
    parser.add_argument("--provider", default="CPUExecutionProvider")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--workers", type=int, default=16, help="grpc's call threads")
    parser.add_argument("--do-nothing", action="store_true", help="grpc's floor: empty answers")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(args.workers))
    if args.do_nothing:
        # Bytes in, bytes out: no (de)serializer, so not even protobuf runs.
        nothing = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
        service = "inference.GRPCInferenceService"
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ModelInfer": nothing}),)
        )
    else:
        servicer = Servicer(args.repository, args.provider, args.threads)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
