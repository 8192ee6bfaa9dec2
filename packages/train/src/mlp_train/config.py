"""The configuration mlp-train reads: the core sections, with ``training`` grown to all the
trainer's options. ``data`` and ``model`` keep their owners' keys: the adapter and the model
check those against their own typed options when they are built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from mlp_core.config import DataSection, MlpConfig, TrainingSection


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimizerConfig(_Options):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, description="sgd only")
    nesterov: bool = Field(default=False, description="sgd only")
    betas: tuple[float, float] = Field(default=(0.9, 0.999), description="adam and adamw")


class SchedulerConfig(_Options):
    name: Literal["step", "cosine", "onecycle", "plateau"]
    step_size: int = Field(default=10, gt=0, description="step: epochs between decays")
    gamma: float = Field(default=0.1, gt=0, description="step: decay factor")
    min_lr: float = Field(default=0.0, ge=0, description="cosine and plateau: lower bound")
    max_lr: float | None = Field(
        default=None, gt=0, description="onecycle: peak lr (default: 10x lr)"
    )
    pct_start: float = Field(default=0.3, gt=0, lt=1, description="onecycle: share of warm-up")
    factor: float = Field(default=0.1, gt=0, lt=1, description="plateau: decay factor")
    patience: int = Field(default=5, ge=0, description="plateau: epochs without improvement")
    monitor: str = Field(default="val.loss", description="plateau: the metric it watches")
    mode: Literal["min", "max"] = "min"


class EarlyStoppingConfig(_Options):
    monitor: str = "val.loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(default=5, ge=0)
    min_delta: float = Field(default=0.0, ge=0)


class CheckpointConfig(_Options):
    monitor: str = "val.loss"
    mode: Literal["min", "max"] = "min"
    save_top_k: int = Field(default=1, ge=0, description="best checkpoints kept (0: none)")
    save_last: bool = True
    every_n_steps: int | None = Field(
        default=None, gt=0, description="also write the last checkpoint every N optimizer steps"
    )


class CallbackSpec(_Options):
    """A user callback: ``class`` is an import path, ``args`` its keyword arguments."""

    class_path: str = Field(alias="class")
    args: dict[str, Any] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _by_alias(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The resolved config.yaml must load again: write the key users write, `class`.
        data = handler(self)
        return {"class": data.pop("class_path", None) or data.pop("class"), **data}


class TrackingConfig(_Options):
    backend: Literal["auto", "mlflow", "local"] = "auto"
    register_model: str | None = Field(
        default=None, description="register the model under this name"
    )
    system_metrics: bool = Field(
        default=False,
        description="track CPU, memory and GPU use with each epoch (system/... metrics)",
    )


class PrometheusConfig(_Options):
    """Expose the ``mlp_training_*`` metrics (:mod:`mlp_train.prometheus`)."""

    port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve /metrics on this port while training (0: any)",
    )
    address: str = Field(default="127.0.0.1", description="the address the /metrics server binds")
    textfile: Path | None = Field(
        default=None, description="rewrite this file in the text format after every epoch"
    )

    @model_validator(mode="after")
    def _somewhere(self) -> PrometheusConfig:
        if self.port is None and self.textfile is None:
            raise ValueError("set port (a /metrics server), textfile (a file), or both")
        return self


class TrainerConfig(TrainingSection):
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig | None = None
    precision: Literal["32", "bf16", "fp16"] = Field(
        default="32",
        description="bf16: autocast (CPU or CUDA); fp16: autocast + grad scaler (CUDA)",
    )
    accumulate_grad_batches: int = Field(default=1, gt=0)
    gradient_clip_val: float | None = Field(default=None, gt=0)
    gradient_clip_algorithm: Literal["norm", "value"] = "norm"
    gradient_checkpointing: bool = False
    deterministic: bool = False
    max_steps: int | None = Field(
        default=None, gt=0, description="stop after this many optimizer steps"
    )
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint: CheckpointConfig = CheckpointConfig()
    progress: Literal["auto", "bar", "plain", "none"] = "auto"
    log_every_n_steps: int = Field(default=50, gt=0)
    callbacks: list[CallbackSpec] = Field(default_factory=list)
    tracking: TrackingConfig = TrackingConfig()
    prometheus: PrometheusConfig | None = None
    run_name: str | None = None
    yolo: dict[str, Any] = Field(
        default_factory=dict,
        description="detection: ultralytics training arguments passed through (warmup_epochs, "
        "mosaic, device: [0, 1], ...); see mlp_train.detection.arguments",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        # `--set training.precision=32` arrives as the YAML integer 32.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _precision_fits_device(self) -> TrainerConfig:
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("fp16 mixed precision needs CUDA; use precision bf16 on the CPU")
        return self


class OpenDataSection(DataSection):
    # The adapter validates its own keys (unknown ones included) when it is created.
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class TrainConfig(MlpConfig):
    # A section's owner narrows its type (DESIGN.md): pydantic validates the subclass; pyright
    # sees a mutable attribute's type change.
    data: OpenDataSection = OpenDataSection()  # pyright: ignore[reportIncompatibleVariableOverride]
    training: TrainerConfig = TrainerConfig()  # pyright: ignore[reportIncompatibleVariableOverride]
