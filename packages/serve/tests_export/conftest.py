"""Fixtures of the export tests; the run folders they write are in export_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_helpers import write_tabular_run


@pytest.fixture
def tabular_run(tmp_path: Path) -> Path:
    return write_tabular_run(tmp_path / "run")
