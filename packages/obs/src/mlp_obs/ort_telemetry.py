"""onnxruntime without its telemetry, unless the user turns it on.

onnxruntime 1.31+ on Linux writes ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` (a device
id and an events database) and may look up ``mobile.events.data.microsoft.com``, unless
``ORT_DISABLE_TELEMETRY=1`` is in the environment when onnxruntime is *imported*: calling
``disable_telemetry_events()`` afterwards still writes the files. An air-gapped or privacy-bound
deployment must never try, so every mlp module that imports onnxruntime imports this module
first; importing it sets the variable. ``setdefault`` leaves a user's own value alone, so
``ORT_DISABLE_TELEMETRY=0`` still opts in.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def disable_telemetry() -> None:
    """Turn onnxruntime's telemetry off for this process unless the environment says otherwise."""
    os.environ.setdefault(TELEMETRY_ENV, "1")


def import_onnxruntime() -> ModuleType:
    """``import onnxruntime``, with telemetry off by default (for lazy, untyped imports)."""
    disable_telemetry()
    return importlib.import_module("onnxruntime")


# At import, so that `import mlp_obs.ort_telemetry` placed before `import onnxruntime` suffices.
disable_telemetry()
