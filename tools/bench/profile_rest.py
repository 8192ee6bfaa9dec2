"""Where a REST inference request's time goes: our ASGI app against the competent server's,
called in-process (no sockets, no uvicorn: what both share is left out), one request at a time.

Prints CPU microseconds per request for each app and for our app with parts taken away (the
middleware, the batcher's thread hop), then, with ``--profile``, cProfile's top functions of ours.

    .venv/bin/python tools/bench/profile_rest.py                  # mlp_small, 3000 requests
    .venv/bin/python tools/bench/profile_rest.py --model mlp_1m --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_serve import MODELS, v2_json_body, write_repository  # beside this script
from competent_fastapi_server import create_app as competent_app

from mlp_obs.log import configure_logging
from mlp_serve.config import ServeConfig
from mlp_serve.dataplane import DataPlane
from mlp_serve.rest.app import create_app


def scope_for(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: Any, scope: dict, body: bytes) -> bytes:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(dict(scope), receive, send)
    status = sent[0]["status"]
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {sent[1].get('body', b'')[:300]!r}")
    return b"".join(m.get("body", b"") for m in sent[1:])


async def per_request(app: Any, scope: dict, body: bytes, count: int) -> float:
    """CPU microseconds of this process (every thread) per request: steadier than wall time
    on a shared machine, and it counts a thread hop's work on both sides."""
    for _ in range(50):
        await call(app, scope, body)
    started = time.process_time_ns()
    for _ in range(count):
        await call(app, scope, body)
    return (time.process_time_ns() - started) / count / 1000


async def main_async(args: argparse.Namespace) -> None:
    spec = next(s for s in MODELS if s.name == args.model)
    row = np.random.default_rng(1).normal(size=(1, spec.features)).astype(np.float32)
    body = v2_json_body(spec, row)
    scope = scope_for(f"/v2/models/{spec.name}/infer", body)
    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder)
        write_repository(repo)
        ours_config = ServeConfig(poll_seconds=None)
        apps: dict[str, Any] = {"competent": competent_app(repo, "CPUExecutionProvider", 1)}
        planes = []
        for label, config in (
            ("mlp", ours_config),
            ("mlp no batching", ServeConfig(poll_seconds=None, batching={"enabled": False})),
        ):
            plane = DataPlane(repo, config)
            await plane.start()
            planes.append(plane)
            apps[label] = create_app(plane, config)
        # Ours without its own middleware (request ids, body limit): what they cost.
        route = apps["mlp"].fast_route

        async def bare_route(scope: dict, receive: Any, send: Any) -> None:
            scope["path_params"] = route.path_params(scope)
            await route.handle(scope, receive, send)

        apps["mlp without RequestContext, BodyLimit"] = bare_route
        answers = {label: json.loads(await call(app, scope, body)) for label, app in apps.items()}
        data = {label: a["outputs"][0]["data"] for label, a in answers.items()}
        assert all(np.allclose(d, data["competent"], atol=1e-5) for d in data.values()), data
        # Interleaved rounds, so a busy moment of the machine hits every app alike; the best
        # round of each is its cost with the least interference.
        times: dict[str, list[float]] = {label: [] for label in apps}
        for _ in range(args.rounds):
            for label, app in apps.items():
                times[label].append(await per_request(app, scope, body, args.requests))
        best = {label: min(values) for label, values in times.items()}
        for label in apps:
            ratio = best[label] / best["competent"]
            print(
                f"{label:<40} {best[label]:8.1f} us of CPU per request "
                f"({ratio:.2f}x competent; best of {args.rounds} interleaved rounds)"
            )
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await per_request(apps["mlp"], scope, body, args.requests)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
        for plane in planes:
            await plane.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="mlp_small", choices=[s.name for s in MODELS])
    parser.add_argument("--requests", type=int, default=2000, help="per app and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile ours afterwards")
    parser.add_argument("--log-level", default="WARNING", help="INFO: with the access log")
    parser.add_argument("--top", type=int, default=30, help="functions --profile prints")
    args = parser.parse_args()
    configure_logging(args.log_level)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
