"""The GPU machine's checks: every test here is marked ``cuda`` and skipped without an NVIDIA GPU.

A GPU machine runs ``pytest -m cuda tests/cuda -s`` (tools/gpu/README.md says how to install the
wheels there); ``-s`` shows the figures each test prints. Nothing here asserts a time.
"""

from __future__ import annotations

import pytest
from cuda_helpers import PENGUINS, no_gpu_reason, penguins_overrides


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = no_gpu_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def cpu_penguins_accuracy(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The example's test accuracy trained on the CPU: what the GPU runs are compared with."""
    from mlp_train.run import train

    runs = tmp_path_factory.mktemp("cpu-runs")
    result = train(PENGUINS, penguins_overrides("training.device=cpu"), runs_root=runs)
    accuracy = result.metrics["test.accuracy"]
    print(f"\npenguins on the CPU (fp32): test accuracy {accuracy:.4f}")
    return accuracy
