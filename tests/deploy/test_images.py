"""The container images (deploy/docker/), checked without a Docker engine.

hadolint lints each Dockerfile; the parsed Dockerfiles must run a numeric non-root user, exec-form
entrypoints, a health check that really answers, and install only from the wheelhouse their
builder stage makes (``--no-index``). What each image installs is read from uv.lock through the
same selection the builder passes to deploy/docker/wheelhouse.sh: no torch in the serve images.
tools/ci/wheel_check.sh then installs the serve image's wheelhouse with the Dockerfile's own
install line in a fresh venv and serves from it; the last tests here hold the two in step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import image_helpers as ih
import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = ih.ROOT
BIN = Path(sys.executable).parent
NAMES = list(ih.IMAGES)
TORCH = {"torch", "torchvision", "mlp-models", "mlp-data", "mlp-train", "ultralytics"}


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} is not installed: `uv sync --all-packages` installs the dev tools"
    return found


def final_install(name: str) -> tuple[ih.Instruction, list[str]]:
    installs = ih.install_commands(ih.image(name).final)
    assert len(installs) == 1, f"{name}: expected one install in the final stage: {installs}"
    return installs[0]


# -- hadolint -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_hadolint_finds_nothing(name: str):
    dockerfile = ih.DOCKER / ih.IMAGES[name][0]
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--format", "json", str(dockerfile)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


# -- how each image runs ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_final_stage_runs_as_a_numeric_non_root_user(name: str):
    final = ih.image(name).final
    user = final.last("USER")
    assert user is not None, f"{name} runs as root"
    uid, _, gid = user.rest.strip().partition(":")
    assert uid.isdigit() and int(uid) != 0, user.rest
    assert gid.isdigit() and int(gid) != 0, user.rest
    # The user is made in this stage with that id, and nothing runs as root after USER.
    made = [c for run in final.all("RUN") for c in run.commands() if c[0] == "useradd"]
    assert made and ih.option_values(made[0], "--uid") == [uid], made
    assert all(i.line < user.line for i in final.instructions if i.keyword in {"RUN", "COPY"})


@pytest.mark.parametrize("name", NAMES)
def test_entrypoint_and_cmd_are_exec_form(name: str):
    final = ih.image(name).final
    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entrypoint is not None and cmd is not None
    assert entrypoint.exec_form() is not None, entrypoint.rest
    assert cmd.exec_form() is not None, cmd.rest


@pytest.mark.parametrize("name", ih.SERVE_IMAGES)
def test_serve_images_serve_on_every_address_and_drain_on_sigterm(name: str):
    final = ih.image(name).final
    assert final.last("ENTRYPOINT").exec_form() == ["mlp", "serve"]
    cmd = final.last("CMD").exec_form()
    assert cmd[0] == "/models", cmd
    assert ih.option_values(cmd, "--host") == ["0.0.0.0"], cmd
    assert ih.option_values(cmd, "--http-port") == ["8000"], cmd
    assert ih.option_values(cmd, "--grpc-port") == ["8001"], cmd
    assert final.last("EXPOSE").rest.split() == ["8000", "8001"]
    # mlp serve drains on SIGTERM; the stop grace (longer than the drain) is the runner's.
    assert final.last("STOPSIGNAL").rest.strip() == "SIGTERM"
    settings = ih.env(final)
    assert settings["ORT_DISABLE_TELEMETRY"] == "1"
    assert settings["PATH"].startswith("/opt/mlp/bin:")
    assert settings["MLP_HEALTH_URL"] == "http://127.0.0.1:8000/v2/health/ready"


def test_the_train_image_is_a_job_without_a_healthcheck():
    final = ih.image("train").final
    assert final.last("HEALTHCHECK").rest.strip() == "NONE"
    assert final.last("ENTRYPOINT").exec_form() == ["mlp"]
    copied = [c.rest.split() for c in final.all("COPY")]
    assert ["deploy/docker/train_and_export.sh", "/usr/local/bin/mlp-train-and-export"] in copied


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(repository: Path, log: Path) -> Iterator[str]:
    """`mlp serve` from this environment on loopback; yields its REST address."""
    http = free_port()
    with log.open("w") as out:
        server = subprocess.Popen(
            [tool("mlp"), "serve", str(repository), "--http-port", str(http), "--grpc-port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        address = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{address}/v2/health/live", timeout=2).close()
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"mlp serve never answered:\n{log.read_text()}")
        yield address
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.parametrize("name", ih.SERVE_IMAGES)
def test_the_healthcheck_passes_on_200_and_fails_otherwise(name: str, tmp_path: Path):
    check = ih.image(name).final.last("HEALTHCHECK")
    assert {f.split("=")[0] for f in check.flags} >= {"--interval", "--timeout", "--start-period"}
    assert check.rest.startswith("CMD ")
    command = json.loads(check.rest[len("CMD ") :])
    assert command[0] == "python", command  # a slim image has no curl
    command[0] = sys.executable
    # An empty repository: the server is live but not ready (no model), so ready answers 503.
    (tmp_path / "repo").mkdir()
    with serving(tmp_path / "repo", tmp_path / "serve.log") as address:
        for path, expected in (("/v2/health/ready", 1), ("/v2/health/live", 0)):
            environment = {**os.environ, "MLP_HEALTH_URL": f"{address}{path}"}
            done = subprocess.run(command, env=environment, capture_output=True, check=False)
            assert done.returncode == expected, (path, done.stderr)


# -- what each image installs -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_final_stage_installs_only_from_the_builders_wheelhouse(name: str):
    dockerfile = ih.image(name)
    run, command = final_install(name)
    assert command[:3] == ["uv", "pip", "install"], command
    assert "--no-index" in command, command
    assert ih.option_values(command, "--find-links") == ["/wheelhouse"], command
    assert ih.option_values(command, "--python") == ["/opt/mlp/bin/python"], command
    requirements = ih.positional(command[3:], {"--python", "--find-links"})
    assert requirements == ih.IMAGES[name][1], requirements
    # The wheelhouse is bind-mounted from the builder stage (no layer keeps it), and that stage
    # builds the six wheels from this checkout and runs the wheelhouse script.
    mounted = ih.mount(run, "/wheelhouse")
    assert mounted is not None and mounted["type"] == "bind", run.flags
    builder = dockerfile.stage(mounted["from"])
    builder_commands = [c for r in builder.all("RUN") for c in r.commands()]
    assert ["uv", "build", "--all-packages", "--wheel", "--out-dir", "/dist", "--quiet"] in (
        builder_commands
    )
    assert any(
        c[:3] == ["deploy/docker/wheelhouse.sh", "/wheelhouse", "/dist"] for c in (builder_commands)
    ), builder_commands
    # The builder and the image run the same Python, which is the one the wheelhouse is for.
    base = next(a.rest for a in dockerfile.preamble if a.rest.startswith("PYTHON_IMAGE="))
    assert builder.base == dockerfile.final.base == "${PYTHON_IMAGE}"
    image_python = re.fullmatch(r"PYTHON_IMAGE=python:(\d+\.\d+)-slim-\w+", base).group(1)
    script = (ih.DOCKER / "wheelhouse.sh").read_text()
    assert f"python=${{WHEELHOUSE_PYTHON:-{image_python}}}" in script


def wheelhouse_selection(name: str) -> list[str]:
    """What the builder stage passes to wheelhouse.sh after OUT and DIST: uv export's selection."""
    builder = ih.image(name).stage("wheelhouse")
    for command in (c for r in builder.all("RUN") for c in r.commands()):
        if command[0] == "deploy/docker/wheelhouse.sh":
            return command[3:]
    raise AssertionError(f"{name}: the builder never runs wheelhouse.sh")


def image_closure(name: str) -> set[str]:
    """The third-party distributions uv.lock pins for the image's selection, on the image's
    platform (Linux x86_64, its Python): what wheelhouse.sh downloads."""
    exported = subprocess.run(
        [
            *(tool("uv"), "export", "--frozen", "--no-dev", "--no-emit-workspace", "--no-hashes"),
            *("--no-header", "--no-annotate", "--quiet", *wheelhouse_selection(name)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    platform = {
        "python_full_version": "3.11.9",
        "python_version": "3.11",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    names = set()
    for line in exported.splitlines():
        requirement, _, marker = line.partition(" ; ")
        if marker and not Marker(marker).evaluate(platform):
            continue
        names.add(canonicalize_name(requirement.split("==")[0]))
    assert len(names) > 10, exported
    return names


@pytest.mark.parametrize("name", ih.SERVE_IMAGES)
def test_serve_images_hold_no_torch(name: str):
    _, command = final_install(name)
    assert not any(canonicalize_name(w.split("[")[0]) in TORCH for w in command), command
    closure = image_closure(name)
    assert not closure & TORCH, sorted(closure & TORCH)
    assert {"onnxruntime-gpu", "fastapi", "grpcio"} <= closure, sorted(closure)
    assert "onnxruntime" not in closure  # one import name: never both
    cuda = {n for n in closure if n.startswith("nvidia-")}
    if name == "serve-cuda":  # the CUDA libraries, as wheels: no CUDA base image
        assert any(n.startswith("nvidia-cudnn") for n in cuda), sorted(cuda)
        assert any(n.startswith("nvidia-cublas") for n in cuda), sorted(cuda)
    else:
        assert not cuda, sorted(cuda)


def test_the_train_image_holds_torch_mlflow_and_the_exporter_but_not_ultralytics():
    closure = image_closure("train")
    assert {"torch", "torchvision", "mlflow-skinny", "onnx", "nvidia-ml-py"} <= closure
    assert any(n.startswith("nvidia-cudnn") for n in closure), sorted(closure)
    assert "ultralytics" not in closure  # AGPL-3.0: the yolo extra is left out


# -- CI installs what the image installs ----------------------------------------------------------


def wheel_check_lines() -> list[str]:
    text = (ROOT / "tools" / "ci" / "wheel_check.sh").read_text()
    return [line for _, line in ih.logical_lines(text)]


def test_the_wheel_check_installs_mlp_serve_with_the_serve_images_install_line():
    _, image_command = final_install("serve")
    lines = [
        shlex.split(line)
        for line in wheel_check_lines()
        if line.startswith("uv pip install") and "--no-index" in line
    ]
    assert len(lines) == 1, lines
    check_command = lines[0]

    def paths_out(command: list[str]) -> list[str]:
        return [
            "PATH" if i and command[i - 1] in {"--python", "--find-links"} else word
            for i, word in enumerate(command)
        ]

    assert paths_out(check_command) == paths_out(image_command)
    # From a wheelhouse made by the same script, with the same selection.
    made = [
        shlex.split(line)
        for line in wheel_check_lines()
        if line.startswith('"$ROOT/deploy/docker/wheelhouse.sh"')
    ]
    assert len(made) == 1, made
    assert made[0][3:] == wheelhouse_selection("serve"), made
    assert ih.option_values(check_command, "--find-links") == [made[0][1]]


def test_dockerignore_keeps_local_and_secret_files_out_but_not_the_build_inputs():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for kept_out in (".git", ".venv", ".venvs", "runs", "dist", ".ruff_cache", ".pytest_cache"):
        assert kept_out in patterns, kept_out
    assert "deploy/compose/secrets" in patterns

    def ignored(path: str) -> bool:
        return any(fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)

    needed = ["pyproject.toml", "uv.lock", "deploy/docker/wheelhouse.sh"]
    needed += ["deploy/docker/train_and_export.sh"]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "packages").glob("*/pyproject.toml")]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "packages").glob("*/README.md")]
    assert len(needed) >= 16, needed
    assert [p for p in needed if ignored(p)] == []


# -- the train image's job script --------------------------------------------------------------


@pytest.mark.slow
def test_train_and_export_trains_then_exports_into_the_repository(tmp_path: Path):
    """compose's train job, outside a container, with compose's `mlp train` settings but port 0.
    Tracking stays local here: MLflow over HTTP is the local stack's test (tests/deploy/)."""
    done = subprocess.run(
        [
            *(str(ih.DOCKER / "train_and_export.sh"), "examples/penguins"),
            *(str(tmp_path / "models"), "penguins", "--run-dir", str(tmp_path / "runs")),
            *("--set", "training.epochs=1", "--set", "training.progress=none"),
            *("--set", "training.tracking.backend=local"),
            *("--set", "training.prometheus.port=0"),
            *("--set", "training.prometheus.address=0.0.0.0"),
        ],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    bundle = tmp_path / "models" / "penguins" / "1"
    assert (bundle / "model.onnx").is_file() and (bundle / "manifest.json").is_file()
    # mlp export prints its summary as one JSON line, then the bundle's folder.
    *_, summary, folder = done.stdout.strip().splitlines()
    assert Path(folder) == bundle, done.stdout
    exported = json.loads(summary)
    assert exported["parity"]["passed"] is True, exported
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((bundle / "manifest.json").read_text())["training"]["run_dir"] == str(run)

    bad = subprocess.run(
        [str(ih.DOCKER / "train_and_export.sh"), "examples/penguins"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "usage: mlp-train-and-export" in bad.stderr
