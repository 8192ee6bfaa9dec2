"""The competent baseline of bench_serve.py: FastAPI + onnxruntime as a capable user writes it.

What someone would write instead of installing mlp-serve: an async endpoint that reads the body
with ``orjson.loads(await request.body())``, the same Open Inference Protocol JSON in and out as
``mlp serve`` (so the load is identical), ``session.run`` inline, one onnxruntime thread, uvicorn
with httptools and no access log. Every ``REPO/<name>/1/model.onnx`` at
``POST /v2/models/<name>/infer``. Run by the benchmark:

    .venv/bin/python tools/bench/competent_fastapi_server.py REPO --port 8300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response


def create_app(repo: Path, provider: str, threads: int) -> FastAPI:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    sessions = {
        p.parent.parent.name: ort.InferenceSession(str(p), options, providers=[provider])
        for p in sorted(repo.glob("*/1/model.onnx"))
    }
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        session = sessions[name]
        tensor = orjson.loads(await request.body())["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        y = np.asarray(session.run(None, {tensor["name"]: x})[0])
        out = {"name": session.get_outputs()[0].name, "datatype": "FP32", "shape": y.shape}
        body = {"model_name": name, "outputs": [{**out, "data": y.ravel().tolist()}]}
        return Response(orjson.dumps(body), media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--provider", default="CPUExecutionProvider")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    app = create_app(args.repository, args.provider, args.threads)
    uvicorn.run(
        app, host=args.host, port=args.port, access_log=False, log_level="warning", http="httptools"
    )


if __name__ == "__main__":
    main()
