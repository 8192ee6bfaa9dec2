"""Which mlp packages are installed, and their versions (from package metadata, never imports)."""

from __future__ import annotations

from importlib.metadata import distributions

PREFIX = "mlp-"


def mlp_packages() -> dict[str, str]:
    """``{"mlp-core": "0.1.0", ...}`` for every installed distribution named ``mlp-*``."""
    found: dict[str, str] = {}
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith(PREFIX):
            found[name] = dist.version
    return dict(sorted(found.items()))
