"""onnxruntime's telemetry stays off in mlp-serve and mlp doctor unless the user turns it on.

onnxruntime 1.31+ on Linux writes ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` (a device
id and an events database) unless ``ORT_DISABLE_TELEMETRY=1`` is set when it is imported. Each
check runs in a fresh process with HOME in a temporary folder and the variable unset, then
looks for those files. A watcher on ``sys.meta_path`` records the variable at the moment
onnxruntime's module starts to execute, so a check also fails if it was set only afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
from serve_helpers import linear_model, start_server_process, write_bundle

MLP = Path(sys.executable).parent / "mlp"
VARIABLE = "ORT_DISABLE_TELEMETRY"
STARTUP = re.compile(r"mlp serve: REST on (http://\S+), gRPC on (\S+)")

# Records ORT_DISABLE_TELEMETRY when onnxruntime's __init__ starts to run (not when something
# only looks for it: torch._dynamo calls find_spec("onnxruntime")), runs WORK, prints the record.
WATCHED = """
import json, os, sys

seen = {{}}


class Watch:
    def find_spec(self, name, path=None, target=None):
        if name != "onnxruntime":
            return None
        others = [f for f in sys.meta_path if f is not self and hasattr(f, "find_spec")]
        spec = next(filter(None, (f.find_spec(name, path, target) for f in others)), None)
        if spec is None:
            return None
        real = spec.loader

        class Loader:
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                seen.setdefault("at_import", os.environ.get({variable!r}))
                real.exec_module(module)

        spec.loader = Loader()
        return spec


sys.meta_path.insert(0, Watch())
{work}
seen["imported"] = "onnxruntime" in sys.modules
print("WATCHED " + json.dumps(seen))
"""

RUNTIME = """
from mlp_serve.config import ServeConfig
from mlp_serve.runtime import load_runtime

load_runtime(sys.argv[1], ServeConfig(providers=["CPUExecutionProvider"], poll_seconds=None))
"""

EXPORT_INT8 = """
import onnx
from mlp_serve.export.network import to_int8

to_int8(onnx.load(sys.argv[1]))
"""

DOCTOR = """
import contextlib, io
from mlp_core.cli import main

with contextlib.redirect_stdout(io.StringIO()):
    assert main(["doctor", "--json"]) == 0
"""


# onnxruntime stays silent by itself where one of these says it runs in CI or its own tests,
# which would make every check below pass vacuously on a CI runner (CI=true there).
CI_EVIDENCE = (
    "CI",
    "TF_BUILD",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "TRAVIS",
    "JENKINS_URL",
    "CODEBUILD_BUILD_ID",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "APPVEYOR",
    "BITBUCKET_BUILD_NUMBER",
    "ORT_RUNNING_UNIT_TESTS",
)


def environment(home: Path, **extra: str) -> dict[str, str]:
    """A user's machine: HOME in HOME, no telemetry setting of its own, no sign of CI."""
    dropped = {VARIABLE, "XDG_CACHE_HOME", *CI_EVIDENCE}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**env, "HOME": str(home), **extra}


def telemetry_files(home: Path) -> list[str]:
    return sorted(
        str(path.relative_to(home))
        for path in home.rglob("*")
        if "Microsoft" in path.parts or "onnxruntime" in path.name.lower()
    )


def watched(work: str, home: Path, *args: str, **env: str) -> dict:
    code = WATCHED.format(variable=VARIABLE, work=work)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=environment(home, **env),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("WATCHED "))
    return json.loads(line.removeprefix("WATCHED "))


def model_file(tmp_path: Path) -> str:
    path = tmp_path / "linear.onnx"
    onnx.save(linear_model(), path)
    return str(path)


def test_onnxruntime_writes_its_files_without_the_variable(tmp_path):
    # The control: on this platform the other checks can fail.
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run([sys.executable, "-c", "import onnxruntime"], env=environment(home), check=True)
    assert any(name.startswith(".cache/Microsoft/") for name in telemetry_files(home))


def test_the_runtime_sets_the_variable_before_onnxruntime_is_imported(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    seen = watched(RUNTIME, home, model_file(tmp_path))
    assert seen == {"at_import": "1", "imported": True}
    assert telemetry_files(home) == []


def test_a_user_can_still_opt_in(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    seen = watched(RUNTIME, home, model_file(tmp_path), **{VARIABLE: "0"})
    assert seen == {"at_import": "0", "imported": True}
    assert telemetry_files(home), "with ORT_DISABLE_TELEMETRY=0 onnxruntime writes its files"


def test_export_and_doctor_set_it_too(tmp_path):
    for name, work, args in (
        ("export", EXPORT_INT8, (model_file(tmp_path),)),
        ("doctor", DOCTOR, ()),
    ):
        home = tmp_path / name
        home.mkdir()
        seen = watched(work, home, *args)
        assert seen == {"at_import": "1", "imported": True}, name
        assert telemetry_files(home) == [], name


def test_mlp_doctor_writes_no_telemetry(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.run(
        [str(MLP), "doctor", "--json"],
        capture_output=True,
        text=True,
        env=environment(home),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["checks"]["onnxruntime"]["data"]["installed"] is not False
    assert telemetry_files(home) == []


def test_mlp_serve_writes_no_telemetry(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    repo = tmp_path / "repo"
    write_bundle(repo, "linear", 1, linear_model(), manifest=False)
    process, url, _ = start_server_process(repo, entry=(str(MLP), "serve"), env=environment(home))
    try:
        x = np.arange(4, dtype=np.float32)
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x.tolist()}]}
        response = httpx.post(f"{url}/v2/models/linear/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert telemetry_files(home) == []
