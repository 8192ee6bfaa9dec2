"""Object detection training: ultralytics' engine inside mlp's run folder conventions.

``mlp train`` hands a config whose data adapter is ``yolo`` (or whose model is ``yolo``) to
:func:`mlp_train.detection.run.train_detection`; ``mlp evaluate`` to
:func:`~mlp_train.detection.run.evaluate_detection`. This module stays light: ultralytics (the
``yolo`` extra, AGPL-3.0) is imported only when a detection run starts, through
:func:`mlp_models.ultralytics_env.import_ultralytics`.
"""

from __future__ import annotations

from typing import Any

DETECTION_ADAPTERS = ("yolo",)
DETECTION_MODELS = ("yolo",)
INSTALL = "mlp-train[yolo]"


def is_detection(config: Any) -> bool:
    """Whether a config (a TrainConfig or its plain dict) trains an object detector."""
    if isinstance(config, dict):
        adapter = (config.get("data") or {}).get("adapter")
        model = (config.get("model") or {}).get("name")
    else:
        adapter, model = config.data.adapter, config.model.name
    return adapter in DETECTION_ADAPTERS or model in DETECTION_MODELS


__all__ = ["INSTALL", "is_detection"]
