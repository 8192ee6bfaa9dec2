"""The `mlp` command in the full workspace, where torch, pandas and MLflow are all installed."""

import json
import subprocess
import sys

HEAVY = ("torch", "torchvision", "pandas", "onnxruntime", "mlflow", "sklearn")


def imported_after(argv):
    code = (
        "import sys, contextlib, io\n"
        "from mlp_core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    try: main({argv!r})\n"
        "    except SystemExit: pass\n"
        "print('\\n'.join(sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_torch_is_installed_here():
    # Otherwise the next test would prove nothing.
    import importlib.util

    assert all(importlib.util.find_spec(name) for name in ("torch", "pandas", "mlflow"))


def test_help_and_version_import_nothing_heavy():
    for argv in (["--help"], ["--version"], ["doctor", "--help"]):
        heavy = imported_after(argv) & set(HEAVY)
        assert not heavy, f"mlp {' '.join(argv)} imported {sorted(heavy)}"


def test_doctor_reports_torch(bin_dir):
    proc = subprocess.run(
        [str(bin_dir / "mlp"), "doctor", "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    torch = json.loads(proc.stdout)["checks"]["torch"]["data"]
    import torch as real_torch

    assert torch["installed"] and torch["version"] == real_torch.__version__
    assert torch["cuda_available"] == real_torch.cuda.is_available()


def test_version_lists_all_six_packages(bin_dir):
    proc = subprocess.run([str(bin_dir / "mlp"), "--version"], capture_output=True, text=True)
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == sorted(
        ["mlp-core", "mlp-data", "mlp-models", "mlp-obs", "mlp-serve", "mlp-train"]
    )
