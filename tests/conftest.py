import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# The digits run's config: small and CPU-only, so that the session trains it in seconds.
DIGITS_CONFIG = """\
data:
  adapter: image_folder
  path: {data}
  image_size: 32
  color_mode: L
  batch_size: 32
  augment: {{enabled: false}}
model:
  name: mobilenet_v3_small
training:
  epochs: 1
  device: cpu
  progress: none
  tracking: {{backend: local}}
"""


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def bin_dir() -> Path:
    return BIN


@contextlib.contextmanager
def _in_root() -> Iterator[None]:
    # The example's data path is relative to the project root, as in the README.
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="session")
def penguins_run(tmp_path_factory) -> Path:
    """A real run of examples/penguins (3 epochs), tracked in its own local MLflow store."""
    from mlp_train.run import train

    runs = tmp_path_factory.mktemp("penguins-runs")
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        with _in_root():
            result = train(
                ROOT / "examples/penguins",
                ["training.epochs=3", "training.progress=none"],
                runs_root=runs,
            )
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return result.run_dir


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A real one-epoch image run on scikit-learn's digits written as PNGs (every class)."""
    from mlp_data.synthetic import write_digits_folder
    from mlp_train.run import train

    root = tmp_path_factory.mktemp("digits")
    data = write_digits_folder(root / "data", image_size=32, limit=200)
    config = root / "config.yaml"
    config.write_text(DIGITS_CONFIG.format(data=data))
    return train(config, runs_root=root / "runs").run_dir


@pytest.fixture(scope="session")
def in_root():
    """``with in_root(): ...`` runs the block in the project root (relative example paths)."""
    return _in_root
