"""Run folders: one folder per run, named so that a listing sorts by start time."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_name(name: str | None = None, *, now: datetime | None = None) -> str:
    """``20261126-051608-penguins-3f9a``: UTC start time, a readable name, a random suffix."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    parts = [stamp]
    if name:
        safe = _UNSAFE.sub("-", name).strip("-.")
        if safe:
            parts.append(safe[:48])
    parts.append(secrets.token_hex(2))
    return "-".join(parts)


def new_run_dir(root: str | Path, name: str | None = None) -> Path:
    """Create and return a fresh run folder under ``root``; never reuses an existing one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        candidate = root / run_name(name)
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a new run folder under {root}")
