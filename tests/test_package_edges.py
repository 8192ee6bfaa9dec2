"""The package edges and declared dependencies are enforced: breaking one on purpose fails."""

import shutil
import subprocess

import pytest

PACKAGES = ["core", "obs", "data", "models", "train", "serve"]


def lint_imports(bin_dir, root, pythonpath):
    return subprocess.run(
        [str(bin_dir / "lint-imports"), "--no-cache", "--config", str(root / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": pythonpath, "PATH": str(bin_dir)},
    )


@pytest.fixture
def src_copy(tmp_path, root):
    """A copy of every package's sources, importable ahead of the installed ones."""
    for name in PACKAGES:
        shutil.copytree(root / "packages" / name / "src", tmp_path / name)
    return tmp_path


def pythonpath(src_copy):
    return ":".join(str(src_copy / name) for name in PACKAGES)


def test_contracts_hold_on_the_tree(bin_dir, root, src_copy):
    proc = lint_imports(bin_dir, root, pythonpath(src_copy))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("package", "violation", "contract"),
    [
        ("core", "import torch", "mlp_core stands alone"),
        ("core", "import mlp_obs", "Packages import only downward"),
        ("data", "import mlp_models", "Packages import only downward"),
        ("serve", "import torch", "mlp_serve serves without torch"),
        ("serve", "from mlp_data import adapters", "mlp_serve serves without torch"),
    ],
)
def test_breaking_a_contract_fails(bin_dir, root, src_copy, package, violation, contract):
    module = src_copy / package / f"mlp_{package}" / "violation.py"
    module.write_text(f"{violation}\n")
    proc = lint_imports(bin_dir, root, pythonpath(src_copy))
    assert proc.returncode == 1, proc.stdout
    assert f"{contract}" in proc.stdout
    assert "BROKEN" in proc.stdout
    assert f"mlp_{package}.violation" in proc.stdout


@pytest.mark.parametrize(
    ("module", "imports", "allowed"),
    [
        # The exporter (mlp_serve.export and below) may import torch and mlp-models ...
        ("export/uses_torch.py", "import torch\nimport mlp_models\n", True),
        ("export/uses_torch.py", "from mlp_models import registry\n", True),
        # ... the same imports anywhere else in mlp_serve break the contract ...
        ("uses_torch.py", "import torch\nimport mlp_models\n", False),
        # ... and the exporter may import nothing else of the forbidden list.
        ("export/uses_torch.py", "import mlp_train\n", False),
    ],
)
def test_only_serve_export_may_import_torch(bin_dir, root, src_copy, module, imports, allowed):
    package = src_copy / "serve" / "mlp_serve"
    assert (package / module).parent.joinpath("__init__.py").is_file()  # a module Python imports
    (package / module).write_text(imports)
    proc = lint_imports(bin_dir, root, pythonpath(src_copy))
    name = "mlp_serve." + module.removesuffix(".py").replace("/", ".")
    if allowed:
        assert proc.returncode == 0, proc.stdout
    else:
        assert proc.returncode == 1, proc.stdout
        assert "mlp_serve serves without torch" in proc.stdout and "BROKEN" in proc.stdout
        assert name in proc.stdout


def deptry(bin_dir, package_dir):
    return subprocess.run(
        [str(bin_dir / "deptry"), "src", "--no-ansi"],
        capture_output=True,
        text=True,
        cwd=package_dir,
    )


def test_every_package_imports_only_what_it_declares(bin_dir, root):
    for name in PACKAGES:
        proc = deptry(bin_dir, root / "packages" / name)
        assert proc.returncode == 0, f"mlp-{name}: {proc.stdout}{proc.stderr}"


def test_an_undeclared_import_fails(bin_dir, root, tmp_path):
    package = tmp_path / "core"
    shutil.copytree(root / "packages" / "core", package, ignore=shutil.ignore_patterns("tests"))
    (package / "src" / "mlp_core" / "violation.py").write_text("import psutil\n")
    proc = deptry(bin_dir, package)
    assert proc.returncode == 1
    report = proc.stdout + proc.stderr
    assert "violation.py" in report and "DEP003" in report and "'psutil'" in report
