"""Optimizers and learning-rate schedulers from their config."""

from __future__ import annotations

from torch import nn, optim
from torch.optim import lr_scheduler

from mlp_train.config import OptimizerConfig, SchedulerConfig


def build_optimizer(config: OptimizerConfig, model: nn.Module) -> optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.name == "sgd":
        return optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    kind = optim.Adam if config.name == "adam" else optim.AdamW
    return kind(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


Scheduler = lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau


def build_scheduler(
    config: SchedulerConfig | None,
    optimizer: optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
) -> tuple[Scheduler | None, str]:
    """The scheduler and when it steps: ``"epoch"``, ``"step"`` or ``"plateau"``."""
    if config is None:
        return None, "epoch"
    if config.name == "step":
        return lr_scheduler.StepLR(optimizer, config.step_size, config.gamma), "epoch"
    if config.name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=config.min_lr), "epoch"
    if config.name == "onecycle":
        max_lr = config.max_lr or 10 * optimizer.param_groups[0]["lr"]
        scheduler = lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lr,
            epochs=epochs,
            steps_per_epoch=max(steps_per_epoch, 1),
            pct_start=config.pct_start,
        )
        return scheduler, "step"
    plateau = lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=config.mode,
        factor=config.factor,
        patience=config.patience,
        min_lr=config.min_lr,
    )
    return plateau, "plateau"
