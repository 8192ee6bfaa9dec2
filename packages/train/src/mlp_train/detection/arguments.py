"""mlp's config -> ultralytics' training arguments.

What mlp's sections already say is translated (and may not be repeated in ``training.yolo``):

=========================  ==========================================================
mlp                        ultralytics
=========================  ==========================================================
data.imgsz                 imgsz
data.batch_size            batch
data.num_workers           workers
training.epochs            epochs
training.seed              seed
training.deterministic     deterministic
training.device            device (auto: ultralytics' choice; cuda:N: N; cpu: cpu)
training.precision         amp (32: off; bf16/fp16: on)
training.optimizer         optimizer (SGD/Adam/AdamW), lr0, weight_decay, momentum
training.early_stopping    patience (else: never stop early)
=========================  ==========================================================

Every other ultralytics argument goes in ``training.yolo`` as is: ``warmup_epochs``,
``mosaic``, ``close_mosaic``, ``lrf``, ``cos_lr``, the ``hsv_*``/``fliplr``/... augmentations,
and ``device: [0, 1]`` for multi-GPU training with ultralytics' own DDP (it launches one
process per GPU itself; do not wrap it in torchrun).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlp_core.errors import ConfigError

# ultralytics keys mlp sets from its own sections (key -> the mlp key that sets it).
OWNED = {
    "data": "data.path",
    "model": "model.arch / model.weights",
    "imgsz": "data.imgsz",
    "batch": "data.batch_size",
    "workers": "data.num_workers",
    "epochs": "training.epochs",
    "seed": "training.seed",
    "deterministic": "training.deterministic",
    "optimizer": "training.optimizer.name",
    "lr0": "training.optimizer.lr",
    "weight_decay": "training.optimizer.weight_decay",
    "amp": "training.precision",
    "patience": "training.early_stopping.patience",
    "project": "training.run_dir",
    "name": "training.run_name",
    "save_dir": "training.run_dir",
    "resume": "mlp train --resume",
    "exist_ok": "(the run folder)",
}
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
# Never stop early unless asked (ultralytics' default patience is 100 epochs).
NO_EARLY_STOP = 1_000_000


def ultralytics_arguments(
    config: Any, *, model: str, data_yaml: Path, save_dir: Path
) -> dict[str, Any]:
    """The ``overrides`` of ultralytics' ``DetectionTrainer`` for a TrainConfig."""
    data, training = config.data, config.training
    optimizer = training.optimizer
    extra = dict(training.yolo)
    clash = sorted(key for key in extra if key in OWNED)
    if clash:
        raise ConfigError(
            "training.yolo: "
            + "; ".join(f"{key} is set by {OWNED[key]}" for key in clash)
            + "; set it there instead"
        )
    unknown = sorted(key for key in extra if key not in _ultralytics_keys())
    if unknown:
        raise ConfigError(
            f"training.yolo: {', '.join(unknown)}: not an ultralytics training argument",
            hint="See ultralytics' cfg/default.yaml for the arguments it takes.",
        )
    arguments: dict[str, Any] = {
        "model": model,
        "data": str(data_yaml),
        "imgsz": int(getattr(data, "imgsz", 640)),
        "batch": int(data.batch_size),
        "workers": int(data.num_workers),
        "epochs": int(training.epochs),
        "seed": int(training.seed),
        "deterministic": bool(training.deterministic),
        "optimizer": OPTIMIZERS[optimizer.name],
        "lr0": float(optimizer.lr),
        "weight_decay": float(optimizer.weight_decay),
        "momentum": float(optimizer.momentum if optimizer.name == "sgd" else optimizer.betas[0]),
        "amp": training.precision != "32",
        "patience": training.early_stopping.patience if training.early_stopping else NO_EARLY_STOP,
        "save_dir": str(save_dir),
        "exist_ok": True,
        "plots": True,
        "verbose": False,
        "device": _device(training.device),
    }
    arguments.update(extra)
    return arguments


def _device(device: str) -> str | None:
    if device == "auto":
        return None  # ultralytics: the first GPU if there is one, else the CPU
    if device.startswith("cuda"):
        return device.partition(":")[2] or "0"
    return device


def _ultralytics_keys() -> set[str]:
    from ultralytics.utils import DEFAULT_CFG_DICT

    return set(DEFAULT_CFG_DICT)


__all__ = ["OWNED", "ultralytics_arguments"]
