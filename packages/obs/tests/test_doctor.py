import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from mlp_obs import doctor
from mlp_obs.gpu import GpuUnavailable, read_gpus

MLP = Path(sys.executable).with_name("mlp")


def run_doctor(*args, env=None):
    return subprocess.run([str(MLP), "doctor", *args], capture_output=True, text=True, env=env)


def test_doctor_json_reports_this_environment(tmp_path):
    proc = run_doctor("--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    checks = report["checks"]
    assert report["ok"] is True
    assert checks["python"]["data"]["executable"] == sys.executable
    assert checks["packages"]["data"]["mlp-obs"]
    # What is installed is reported as it is: mlp-obs's own isolated environment holds neither
    # torch nor onnxruntime, the workspace environment holds both.
    for module in ("torch", "onnxruntime"):
        installed = importlib.util.find_spec(module) is not None
        assert checks[module]["data"]["installed"] is installed, checks[module]
    # The GPUs NVML sees, and none (reported, not an error) where it sees none.
    try:
        _, gpus = read_gpus()
    except GpuUnavailable:
        gpus = []
    assert checks["gpu"]["ok"]
    assert len(checks["gpu"]["data"]["gpus"]) == len(gpus)


def test_doctor_shows_the_tracking_uri_in_effect(tmp_path):
    import os

    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"}
    checks = json.loads(run_doctor("--json", env=env).stdout)["checks"]
    assert checks["mlflow"]["data"]["tracking_uri"] == "http://127.0.0.1:5999"
    text = run_doctor(env=env)
    assert "tracking URI http://127.0.0.1:5999" in text.stdout


def test_doctor_exit_code_follows_critical_checks(monkeypatch, capsys):
    import argparse

    monkeypatch.setattr(doctor, "checks", doctor.HealthChecks())
    doctor.checks.register("fine", lambda: True)
    doctor.checks.register("gpu", lambda: (False, "no GPU"), critical=False)
    assert doctor.run(argparse.Namespace(json=False)) == 0
    out = capsys.readouterr().out
    assert "warn  gpu   no GPU" in out
    doctor.checks.register("broken", lambda: (False, "nope"))
    assert doctor.run(argparse.Namespace(json=False)) == 1
    assert "FAIL  broken" in capsys.readouterr().out
