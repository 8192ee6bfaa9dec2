"""A fresh local stack's first model: train a tiny penguins run tracked in the stack's MLflow,
then export it into the model repository mlp serve is about to serve.

    python deploy/local/bootstrap.py MLFLOW_URL RUNS_FOLDER MODEL_REPOSITORY

deploy/local/serve.sh runs it when the repository is empty. It is what
`mlp train examples/penguins --set training.epochs=2` followed by `mlp export RUN --repo REPO
--name penguins` do, in one process: torch, the trainer and the exporter are imported once, and
while MLflow server is still creating its tables, which takes tens of seconds on a laptop.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlp_obs.log import configure_logging
from mlp_serve.export import export_run
from mlp_train.run import train

ROOT = Path(__file__).resolve().parents[2]


def wait_for_mlflow(url: str) -> None:
    # The stack's own start timeout: the first start of mlflow server creates its tables.
    deadline = time.monotonic() + float(os.environ.get("MLP_STACK_TIMEOUT", "300"))
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise SystemExit(f"bootstrap: MLflow never answered at {url}") from None
            time.sleep(0.5)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    mlflow_url, runs, repo = argv
    configure_logging()
    wait_for_mlflow(mlflow_url)
    # The tracker reads MLFLOW_TRACKING_URI: serve.sh exports it as mlflow_url.
    run = train(
        ROOT / "examples/penguins",
        [
            f"data.path={ROOT / 'examples/data/penguins.csv'}",
            "training.epochs=2",
            "training.progress=none",
        ],
        runs_root=runs,
    )
    # Also logs the ONNX model to the run in MLflow, through the server's artifact proxy.
    bundle = export_run(run.run_dir, repo, name="penguins")
    print(f"bootstrap: trained {run.run_dir}, exported {bundle.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
