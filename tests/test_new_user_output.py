"""What a new user sees: `mlp train`, `mlp export`, `mlp serve` and `mlp doctor` as processes,
their output captured as a terminal would show it.

- No line from another library at INFO: a console line's logger (the ``[name]`` structlog prints)
  is mlp's own, or the line is a warning or worse; the run folder's log.jsonl says the same with
  its ``logger`` key. Raw stderr is also scanned for what libraries print past the logging
  module (MLflow's own log format, its progress bar, onnxruntime's native log).
- No CUDA warning from `mlp serve`, and one line per model naming its provider and, when that
  is not CUDA, why. Whether this machine has a GPU is asked of NVML here, independently of
  mlp: without one the line must blame the missing GPU; with one, CUDA is chosen when its
  libraries load.
- `mlp train` ends with a summary a person can act on, and the run folder as its last line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import cuda_libraries_load, nvml_sees_a_gpu

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OWN = re.compile(r"^(mlp|mlp_\w+)(\.|$)")
CONSOLE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[(?P<level>\w+)\s*\] (?P<rest>.*)$")
# The logger name structlog prints after the event, before the key=value pairs.
LOGGER = re.compile(r" \[(?P<name>[A-Za-z_][\w.]*)\](?= \w[\w.]*=| *$)")
# What libraries write to stderr without going through logging, as seen before this was fixed.
RAW_NOISE = [
    re.compile(pattern)
    for pattern in (
        r"setup plugin alembic",
        r"Detected uv project",
        r"Downloading artifacts",
        r"Failed to resolve installed pip",
        r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ",  # MLflow's own log format
        r"\[[WE]:onnxruntime",
        r"Failed to create CUDAExecutionProvider",
        r"Failed to load lib",
        r"onnxruntime\.ai/docs/install",
        r"\x1b\[",  # colour: stderr is not a terminal here
    )
]
READY = re.compile(r"^mlp serve: REST on (http://\S+), gRPC on (\S+)$", re.MULTILINE)


GPU = nvml_sees_a_gpu()


def user_env() -> dict[str, str]:
    # A new user's shell: no tracking server, no log level, no debug.
    hidden = ("MLFLOW_TRACKING_URI", "MLP_LOG_LEVEL", "MLP_DEBUG")
    return {k: v for k, v in os.environ.items() if k not in hidden}


def mlp(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "mlp"), *args],
        cwd=cwd,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mlp {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def log_lines(text: str) -> list[tuple[str, str, str]]:
    """(level, logger, line) of every structlog console line in ``text``."""
    found = []
    for line in text.splitlines():
        match = CONSOLE.match(line)
        if match:
            names = LOGGER.findall(match["rest"])
            assert names, f"no logger name in: {line}"
            found.append((match["level"], names[-1], line))
    return found


def assert_quiet(text: str, command: str) -> list[tuple[str, str, str]]:
    """No other library at INFO or below, and none of the raw noise; returns the log lines."""
    lines = log_lines(text)
    foreign = [line for level, name, line in lines if not OWN.match(name) and level in _CHATTY]
    assert foreign == [], f"`mlp {command}` shows other libraries' lines:\n" + "\n".join(foreign)
    for line in text.splitlines():
        noisy = [p.pattern for p in RAW_NOISE if p.search(line)]
        assert not noisy, f"`mlp {command}` printed {noisy}: {line}"
    return lines


_CHATTY = ("debug", "info")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("new-user")


@pytest.fixture(scope="module")
def trained(workdir: Path) -> subprocess.CompletedProcess[str]:
    runs = workdir / "runs"
    return mlp(
        *("train", "examples/penguins", "--run-dir", str(runs)),
        *("--set", "training.epochs=2", "--set", "training.progress=none"),
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def run_dir(trained: subprocess.CompletedProcess[str]) -> Path:
    return Path(trained.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(workdir: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    repo = workdir / "repo"
    return mlp("export", str(run_dir), "--repo", str(repo), "--name", "penguins", cwd=ROOT)


@pytest.fixture(scope="module")
def served(workdir: Path, exported) -> str:
    """The whole output of `mlp serve` that answered one request and was stopped."""
    log = workdir / "serve.log"
    command = [str(BIN / "mlp"), "serve", str(workdir / "repo"), "--http-port", "0"]
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [*command, "--grpc-port", "0"],
            cwd=workdir,
            env=user_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while not READY.search(log.read_text()):
            assert server.poll() is None, f"mlp serve exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"mlp serve never got ready:\n{log.read_text()}"
            time.sleep(0.2)
        http = READY.search(log.read_text())[1]  # type: ignore[index]
        rows = json.loads((ROOT / "examples/penguins/requests.json").read_text())
        answer = httpx.post(f"{http}/v1/models/penguins/predict", json={"rows": rows}, timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            status = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()  # never leave a server behind; the assertion below fails
            status = server.wait()
    assert status == 0, log.read_text()
    return log.read_text()


def test_train_shows_no_other_library_at_info(trained, run_dir: Path) -> None:
    lines = assert_quiet(trained.stderr, "train")
    assert any(name == "mlp_train.run" for _, name, _ in lines), trained.stderr
    # The run's log file: the same records, with the logger as a key.
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    foreign = [r for r in rows if not OWN.match(r["logger"]) and r["level"] in _CHATTY]
    assert foreign == []
    assert any(r["event"] == "run finished" for r in rows)


def test_train_ends_with_a_summary_then_the_run_folder(trained, run_dir: Path) -> None:
    *summary, last = trained.stdout.strip().splitlines()
    assert Path(last) == run_dir and (run_dir / "model").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    by_start = {line.split(":")[0]: line for line in summary}
    assert re.fullmatch(r"best epoch: [12] of 2 by val\.\w+ [\d.]+ \(.*\)", by_start["best epoch"])
    assert f"accuracy {metrics['test.accuracy']:.4f}" in by_start["test"]
    assert f"f1_macro {metrics['test.f1_macro']:.4f}" in by_start["test"]
    plots = by_start["plots"]
    assert plots.startswith(f"plots: {run_dir / 'plots'}/ (")
    for name in re.findall(r"[\w]+\.png", plots):
        assert (run_dir / "plots" / name).is_file()
    store = f"sqlite:///{run_dir.parent / 'mlflow.db'}"
    assert by_start["MLflow run " + _tracked_run_id(run_dir)].endswith(
        f"mlflow ui --backend-store-uri {store}"
    )


def _tracked_run_id(run_dir: Path) -> str:
    for line in (run_dir / "tracking.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("event") == "start_run":
            return row["run_id"]
    raise AssertionError("no start_run in tracking.jsonl")


def test_export_shows_no_other_library_and_logs_a_stated_environment(
    exported, run_dir: Path
) -> None:
    assert_quiet(exported.stderr, "export")
    summary = json.loads(exported.stdout.strip().splitlines()[-2])
    assert summary["parity"]["passed"] and summary["mlflow"]["logged"] is True
    # MLflow was told the environment: the versions the bundle's manifest recorded.
    bundle = Path(exported.stdout.strip().splitlines()[-1])
    packages = json.loads((bundle / "manifest.json").read_text())["packages"]
    model_id = summary["mlflow"]["model_uri"].rsplit("/", 1)[-1]  # models:/m-<id>
    artifacts = run_dir.parent / "mlartifacts"
    (requirements,) = artifacts.glob(f"*/models/{model_id}/artifacts/requirements.txt")
    wanted = [
        f"{name}=={packages[name]}" for name in ("onnx", "onnxruntime-gpu") if name in packages
    ]
    assert wanted and set(wanted) <= set(requirements.read_text().split())


def test_serve_on_this_machine_names_its_provider_without_a_cuda_warning(served: str) -> None:
    assert_quiet(served, "serve")
    (line,) = [line for _, _, line in log_lines(served) if "penguins/1: runs on" in line]
    if not GPU:
        assert (
            "penguins/1: runs on CPUExecutionProvider, not CUDAExecutionProvider: no NVIDIA GPU found"
            in line
        )
        assert "[info" in line  # the default config: a fact, not a warning
    elif cuda_libraries_load():
        assert "penguins/1: runs on CUDAExecutionProvider " in line
    else:
        assert "not CUDAExecutionProvider: its libraries do not load" in line


def test_doctor_says_what_serving_will_use() -> None:
    proc = mlp("doctor", cwd=ROOT)
    (line,) = [line for line in proc.stdout.splitlines() if line.split()[1:2] == ["onnxruntime"]]
    if not GPU:
        assert "CUDA" in line and "installed; no GPU: serving will use CPU" in line
    elif cuda_libraries_load():
        assert "CUDA usable" in line and line.endswith("serving will use the GPU (CUDA)")
    else:
        assert "CUDA installed, not usable: its libraries do not load" in line
        assert line.endswith("serving will use CPU")
