"""Fixtures of the serve tests; the models and bundles they use are in serve_helpers.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlp_obs.log import configure_logging


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


@pytest.fixture
def log_rows(tmp_path: Path) -> Iterator[Path]:
    """The JSON log file of this test (``serve.jsonl``, INFO and up, no console), read with
    serve_helpers.logged_rows; the handlers it added are gone afterwards."""
    path = tmp_path / "serve.jsonl"
    root = logging.getLogger()
    before = list(root.handlers)
    configure_logging("INFO", json_file=path, console=False)
    yield path
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
            handler.close()
