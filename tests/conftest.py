import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def bin_dir() -> Path:
    return BIN
