"""One config file drives training, export and serving.

The file holds every section, ``serve:`` included, with a batching setting that is not the
default. ``mlp train`` must accept it (it reads ``serve`` with mlp-core's section, which keeps
mlp-serve's keys), ``mlp export`` turns the run into a bundle, and ``mlp serve --config`` must
serve it with that setting: the model config says ``max_batch_size: 8`` and a request of 9 rows
is refused while one of 8 is answered.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

MAX_BATCH = 8  # the default is 64
CONFIG = f"""\
data:
  adapter: csv
  path: examples/data/penguins.csv
  target: species
  task: classification
  batch_size: 32
model:
  name: tabular_mlp
  hidden_sizes: [16]
training:
  epochs: 2
  device: cpu
  progress: none
  tracking: {{backend: local}}
serve:
  host: 127.0.0.1
  http_port: 0
  grpc_port: 0
  poll_seconds: null
  providers: [CPUExecutionProvider]
  batching: {{max_batch_size: {MAX_BATCH}, max_queue_delay_ms: 0.5}}
"""
STARTUP = re.compile(r"mlp serve: REST on (http://\S+), gRPC on (\S+)")
ROW = {
    "island": "Biscoe",
    "bill_length_mm": 45.2,
    "bill_depth_mm": 15.0,
    "flipper_length_mm": 217,
    "body_mass_g": 5000,
    "sex": "female",
    "year": 2008,
}


def mlp(bin_dir: Path, root: Path, *args: str) -> str:
    """Run ``mlp ARGS`` in the project root (the example's data path is relative to it)."""
    # The run tracks locally, beside its run folder, whatever MLflow store the caller uses.
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [str(bin_dir / "mlp"), *args], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"mlp {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_one_file_trains_exports_and_serves_with_its_batching(tmp_path, root, bin_dir):
    config = tmp_path / "penguins.yaml"
    config.write_text(CONFIG)
    repo = tmp_path / "repo"

    trained = mlp(bin_dir, root, "train", str(config), "--run-dir", str(tmp_path / "runs"))
    run_dir = Path(trained.strip().splitlines()[-1])
    assert (run_dir / "model").exists()
    mlp(
        bin_dir,
        root,
        "export",
        str(run_dir),
        "--repo",
        str(repo),
        "--name",
        "penguins",
        "--no-mlflow",
    )

    server = subprocess.Popen(
        [str(bin_dir / "mlp"), "serve", str(repo), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline() if server.stdout else ""
            match = STARTUP.search(line)
            if match:
                url = match.group(1)
            elif not line and server.poll() is not None:
                break
        assert url is not None, "the server printed no startup line"

        model_config = httpx.get(f"{url}/v2/models/penguins/config").json()
        assert model_config["max_batch_size"] == MAX_BATCH
        assert model_config["dynamic_batching"]["max_queue_delay_microseconds"] == 500

        predict = f"{url}/v1/models/penguins/predict"
        within = httpx.post(predict, json={"rows": [ROW] * MAX_BATCH}, timeout=30)
        assert within.status_code == 200, within.text
        assert len(within.json()["predictions"]) == MAX_BATCH
        beyond = httpx.post(predict, json={"rows": [ROW] * (MAX_BATCH + 1)}, timeout=30)
        assert beyond.status_code == 400
        assert str(MAX_BATCH) in beyond.json()["error"]
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
