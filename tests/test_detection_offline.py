"""Detection never reaches the network and leaves the process as it found it.

In a fresh process (HOME and the working directory empty temporary folders) whose sockets
refuse and record every outbound connection and name lookup, a real detection run is trained
(`mlp_train.run.train`), evaluated (`mlp evaluate`'s function, ultralytics' validator) and used
by ultralytics' predict, and exported (`mlp export --format torchscript`, whose parity gate runs
ultralytics' predict again). Then:

- nothing tried to connect or resolve a name (ultralytics' online check, version check,
  analytics, font download, integrations: each has its own switch in mlp_models.ultralytics_env);
- ultralytics' settings.json exists only in mlp's folder (~/.cache/mlp/ultralytics), not in
  ~/.config/Ultralytics or the working directory;
- OMP_NUM_THREADS and torch's thread count are what they were before (ultralytics sets both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# detection_helpers builds on the train suite's helpers: both folders on the subprocess's path.
HELPERS = os.pathsep.join(str(p) for p in (TESTS, TESTS.parent / "packages" / "train" / "tests"))
# A thread count ultralytics never picks (it uses 1..8), so any change it makes shows.
THREADS = 9

SCRIPT = """
import json, socket, sys
from pathlib import Path

attempts = []

def refusing(name, original):
    def refuse(*args, **kwargs):
        target = args[1:] if name.startswith("socket.") else args
        own = args[0] if name.startswith("socket.") else None
        if own is not None and own.family == socket.AF_UNIX:
            return original(*args, **kwargs)  # local IPC is not the network
        attempts.append(f"{name}{target!r}")
        raise OSError(f"network blocked by the offline test: {name}")
    return refuse

socket.socket.connect = refusing("socket.connect", socket.socket.connect)
socket.socket.connect_ex = refusing("socket.connect_ex", socket.socket.connect_ex)
socket.getaddrinfo = refusing("getaddrinfo", socket.getaddrinfo)
socket.gethostbyname = refusing("gethostbyname", socket.gethostbyname)
socket.create_connection = refusing("create_connection", socket.create_connection)

import torch

torch.set_num_threads(THREADS)
from detection_helpers import train_shapes_run

root = Path(sys.argv[1])
run = train_shapes_run(root, n_train=8, n_val=2, n_test=2)

from mlp_train.run import evaluate

test_metrics = evaluate(run, "test")

from mlp_models.ultralytics_env import import_ultralytics, preserved_threads

ultralytics = import_ultralytics()
image = sorted((root / "shapes" / "images" / "test").glob("*.png"))[0]
with preserved_threads():
    predicted = ultralytics.YOLO(str(run / "weights" / "best.pt")).predict(
        str(image), imgsz=64, device="cpu", verbose=False
    )

# mlp export: the raw-head ONNX and TorchScript, and its parity gate (ultralytics' predict).
from mlp_core.cli import main as mlp

exported = mlp(["export", str(run), "--repo", str(root / "repo"), "--format", "torchscript"])
bundle = root / "repo" / "shapes" / "1"

import os

# The control: the blocking catches a lookup (so an empty list above means something).
seen = list(attempts)
try:
    socket.getaddrinfo("ultralytics.com", 443)
except OSError:
    pass

print(json.dumps({
    "attempts": seen,
    "control": attempts[len(seen):],
    "omp": os.environ.get("OMP_NUM_THREADS"),
    "threads": torch.get_num_threads(),
    "run": str(run),
    "test_keys": sorted(test_metrics),
    "predictions": len(predicted),
    "export": exported,
    "bundle": sorted(p.name for p in bundle.iterdir()),
    "parity": json.loads((bundle / "manifest.json").read_text())["parity"]["passed"],
}))
""".replace("THREADS", str(THREADS))


def test_train_evaluate_and_predict_offline_without_leaks(tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("YOLO_", "XDG_", "MLFLOW_", "OMP_", "MLP_"))
    }
    env |= {"HOME": str(home), "PYTHONPATH": HELPERS}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(work)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["attempts"] == []
    assert report["control"] == ["getaddrinfo('ultralytics.com', 443)"]
    assert report["omp"] is None
    assert report["threads"] == THREADS
    assert report["test_keys"] == ["test.mAP50", "test.mAP50-95", "test.precision", "test.recall"]
    assert report["predictions"] == 1
    assert report["export"] == 0 and report["parity"] is True
    assert report["bundle"] == ["manifest.json", "model.onnx", "model.torchscript"]
    ours = home / ".cache" / "mlp" / "ultralytics"
    settings = sorted({*home.rglob("settings.json"), *work.rglob("settings.json")})
    assert settings == [ours / "Ultralytics" / "settings.json"]
    document = json.loads(settings[0].read_text())
    assert document["sync"] is False and document["mlflow"] is False
    assert str(work) not in document["datasets_dir"]  # no working directory frozen into it
    assert (ours / "Ultralytics" / "Arial.ttf").is_file()
