"""The baseline of bench_serve.py: a plain FastAPI + onnxruntime server, written the naive way.

JSON rows in (``{"inputs": [[...], ...]}``), ``session.run``, JSON rows out
(``{"outputs": [[...], ...]}``): a pydantic body, a synchronous endpoint that FastAPI runs in its
thread pool, no batching, no binary tensors. It serves every ``REPO/<name>/1/model.onnx``, each
at ``POST /models/<name>/predict``. Run by the benchmark, not by hand:

    .venvs/serve/bin/python tools/bench/plain_fastapi_server.py REPO --port 8100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel


class PredictRequest(BaseModel):
    inputs: list[list[float]]


def load_sessions(repo: Path, provider: str, threads: int) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    providers = (
        [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    )
    return {
        path.parent.parent.name: ort.InferenceSession(str(path), options, providers=providers)
        for path in sorted(repo.glob("*/1/model.onnx"))
    }


def create_app(sessions: dict[str, ort.InferenceSession]) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"models": {name: s.get_providers()[0] for name, s in sessions.items()}}

    @app.post("/models/{name}/predict")
    def predict(name: str, request: PredictRequest) -> dict:
        session = sessions.get(name)
        if session is None:
            raise HTTPException(404, f"unknown model {name!r}")
        features = np.asarray(request.inputs, dtype=np.float32)
        (outputs,) = session.run(None, {session.get_inputs()[0].name: features})
        return {"outputs": outputs.tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--provider", default="CPUExecutionProvider")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    app = create_app(load_sessions(args.repository, args.provider, args.threads))
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
