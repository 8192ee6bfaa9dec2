"""The Trainer: fit, validate and test any mlp-models model on loaders from mlp-data.

It owns the loop, the optimizer, the scheduler, mixed precision, gradient accumulation and
clipping, checkpoints and resume; the model owns how a batch becomes a loss
(``training_step``); callbacks observe (:mod:`mlp_train.callbacks.base`).

Where the loop is (epoch, step, position inside the epoch) is one :class:`~mlp_train.progress.
Progress` object, ``trainer.progress``; hooks are dispatched by one function,
:func:`~mlp_train.callbacks.base.call_hooks`.

Resume is exact: a checkpoint holds the model, optimizer, scheduler and grad-scaler states, the
progress, every RNG state and the callbacks' states,
and the training loader's order is a function of (seed, epoch) (:class:`mlp_data.sampler.
EpochSampler`), so a run killed mid-epoch and resumed ends with the weights the run would have
had without the kill (on the CPU in deterministic mode, with ``num_workers=0``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from mlp_core.errors import CheckpointError, ConfigError, MlpError, TrainingError
from mlp_core.runs import RunFiles
from mlp_models import BaseModel
from mlp_models.tasks import task_predictions
from mlp_train.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateScheduler,
    MetricsLogger,
    ModelCheckpoint,
    ProgressPrinter,
)
from mlp_train.callbacks.base import Hook, call_hooks
from mlp_train.checkpoint import CheckpointStore, Kind, capture_rng, restore_rng
from mlp_train.config import CallbackSpec, TrainerConfig
from mlp_train.devices import Precision, select_device
from mlp_train.distributed import DistributedContext
from mlp_train.metrics import AverageMeter, check_monitor, metrics_for
from mlp_train.optim import Scheduler, build_optimizer, build_scheduler
from mlp_train.progress import Progress

if TYPE_CHECKING:
    from mlp_obs.metrics import TrainingMetrics
    from mlp_obs.tracking import ExperimentTracker

log = logging.getLogger(__name__)


class TrainingInterrupted(MlpError):
    """Ctrl-C or SIGTERM: the current step finished and a checkpoint was written."""

    default_hint = "Resume with `mlp train --resume RUN_FOLDER`."


@dataclass
class Evaluation:
    split: str
    metrics: dict[str, float]
    scores: Any  # ClassificationMetrics or RegressionMetrics
    predictions: torch.Tensor  # probabilities [N, C] or values
    targets: torch.Tensor


class _StepModule(nn.Module):
    """Runs ``training_step`` inside ``forward`` so DistributedDataParallel sees the call and
    synchronises gradients (calling the model's own method would bypass DDP's hooks)."""

    def __init__(self, model: BaseModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        result = self.model.training_step(batch)
        return result.loss, result.outputs, result.targets


class Trainer:
    def __init__(
        self,
        config: TrainerConfig | None = None,
        *,
        run_dir: str | Path | None = None,
        callbacks: Iterable[Callback] = (),
        tracker: ExperimentTracker | None = None,
        prometheus: TrainingMetrics | None = None,
        class_names: list[str] | None = None,
        distributed: DistributedContext | None = None,
    ) -> None:
        self.config = config or TrainerConfig()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.dist = distributed or DistributedContext.from_env()
        self.device = self.dist.device(select_device(self.config.device))
        self.precision = Precision(self.config.precision, self.device)
        self.class_names = class_names
        self.tracker = tracker
        self.store = CheckpointStore(RunFiles(self.run_dir).checkpoints) if self.run_dir else None
        self.callbacks = self._default_callbacks(tracker, prometheus) + list(callbacks)
        self.callbacks += [_load_user_callback(spec) for spec in self.config.callbacks]
        self.run_name = self.config.run_name or (self.run_dir.name if self.run_dir else "run")

        self.progress = Progress()
        self.history: list[dict[str, float]] = []
        self.model: BaseModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Scheduler | None = None
        self.scheduler_interval = "epoch"
        self._stop_reason: str | None = None
        self._interrupted = False
        self._train_meter = AverageMeter("train.loss")

    # -- public API ------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def fit(
        self,
        model: BaseModel,
        train_loader: DataLoader,
        val_loader: DataLoader | None = None,
        *,
        resume: bool = False,
    ) -> dict[str, float]:
        """Train for ``epochs`` (or until a callback stops it); returns the last epoch's
        metrics. ``resume`` continues from the newest good checkpoint in the run folder."""
        self._setup(model, train_loader)
        if resume:
            self._resume()
        self._call("on_fit_start")
        metrics: dict[str, float] = {}
        try:
            with self._interrupt_handler():
                for epoch in range(self.progress.start_epoch, self.config.epochs):
                    metrics = self._run_epoch(epoch, train_loader, val_loader)
                    if self._should_stop():
                        break
        except BaseException as error:
            self._call("on_exception", error)
            raise
        self._call("on_fit_end")
        if self._stop_reason and self.is_main:
            log.info(self._stop_reason)
        return metrics

    def validate(
        self, model: BaseModel, loader: DataLoader, split: str = "val"
    ) -> dict[str, float]:
        return self.evaluate(model, loader, split).metrics

    def test(self, model: BaseModel, loader: DataLoader) -> dict[str, float]:
        return self.evaluate(model, loader, "test").metrics

    def evaluate(
        self, model: BaseModel, loader: DataLoader, split: str, *, sync: bool = True
    ) -> Evaluation:
        """Loss and task metrics of ``split``, with the predictions (for plots).

        ``sync`` sums the metrics over the ranks of a distributed run (each rank evaluated its
        shard); a single process evaluating a whole split passes False.
        """
        model.to(self.device)
        was_training = model.training
        model.eval()
        meter = AverageMeter(f"{split}.loss")
        scores = metrics_for(model.task, _num_classes(model), self.class_names)
        predictions, targets = [], []
        with torch.no_grad():
            for batch in loader:
                batch = self._to_device(batch)
                with self.precision.autocast():
                    result = model.validation_step(batch)
                probabilities = task_predictions(model.task, result.outputs.float())
                meter.update(float(result.loss), n=len(result.targets))
                scores.update(probabilities, result.targets)
                predictions.append(probabilities.cpu())
                targets.append(result.targets.cpu())
        model.train(was_training)
        if sync:
            meter.sync()
            scores.sync()
        values = {f"{split}.loss": meter.avg}
        values.update({f"{split}.{k}": float(v) for k, v in scores.compute().items()})
        return Evaluation(
            split,
            values,
            scores,
            torch.cat(predictions) if predictions else torch.empty(0),
            torch.cat(targets) if targets else torch.empty(0),
        )

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason

    def check_monitor(self, monitor: str, option: str) -> None:
        try:
            check_monitor(monitor, self._model().task)
        except ConfigError as exc:
            raise ConfigError(f"training.{option}: {exc.message}", hint=exc.hint) from None

    def save_checkpoint(
        self, kind: Kind, *, monitor: str | None = None, value: float | None = None
    ) -> Path | None:
        """Write a checkpoint of the current state (rank 0; every rank waits at a barrier);
        its path on rank 0, None elsewhere or without a run folder."""
        if self.store is None:
            return None
        self.dist.barrier()
        path = None
        if self.is_main:
            path = self.store.write(
                self.checkpoint_state(), kind=kind, monitor=monitor, value=value
            )
        self.dist.barrier()
        return path

    def checkpoint_state(self) -> dict[str, Any]:
        model = self._model()
        progress = self.progress.state_dict()
        mid_epoch = progress["batch_in_epoch"] > 0
        meter = self._train_meter
        return {
            "model_name": model.model_name,
            "model_config": model.get_config(),
            "model": model.state_dict(),
            "optimizer": self._optimizer().state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.precision.scaler.state_dict(),
            "progress": progress,
            # A mid-epoch resume continues the epoch's running training loss.
            "train_meter": [meter.sum, meter.count] if mid_epoch else [0.0, 0],
            "rng": capture_rng(),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            "history": self.history,
            "world_size": self.dist.world_size,
        }

    # -- the loop --------------------------------------------------------------------------

    def _model(self) -> BaseModel:
        if self.model is None:
            raise TrainingError("the trainer has no model yet: call fit() first")
        return self.model

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise TrainingError("the trainer has no optimizer yet: call fit() first")
        return self.optimizer

    def _call(self, hook: Hook, *args: Any) -> None:
        call_hooks(self.callbacks, hook, self, *args)

    def _setup(self, model: BaseModel, train_loader: DataLoader) -> None:
        self.dist.init(self.device)
        if self.config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.config.gradient_checkpointing:
            if not model.supports_gradient_checkpointing:
                raise ConfigError(
                    f"training.gradient_checkpointing: model {model.model_name!r} does not "
                    "support it"
                )
            model.set_gradient_checkpointing(True)
        self.model = model.to(self.device)
        self.net: nn.Module = _StepModule(model)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.net, device_ids=ids)
        self.optimizer = build_optimizer(self.config.optimizer, model)
        batches = len(train_loader)
        steps_per_epoch = math.ceil(batches / self.config.accumulate_grad_batches)
        self.progress.steps_per_epoch = steps_per_epoch
        self.scheduler, self.scheduler_interval = build_scheduler(
            self.config.scheduler,
            self.optimizer,
            epochs=self.config.epochs,
            steps_per_epoch=steps_per_epoch,
        )

    def _run_epoch(
        self, epoch: int, train_loader: DataLoader, val_loader: DataLoader | None
    ) -> dict[str, float]:
        progress = self.progress
        progress.begin_epoch(epoch)
        skip = progress.batch_in_epoch
        if not skip:
            self._train_meter.reset()
        _start_epoch(train_loader, epoch, skip_batches=skip, seed=self.config.seed)
        self._call("on_train_epoch_start", epoch)
        self.net.train()
        stopped = self._train_batches(train_loader, skip)
        self._train_meter.sync()
        metrics = {"train.loss": self._train_meter.avg}
        if val_loader is not None:
            metrics.update(self.validate(self._model(), val_loader))
        metrics["lr"] = float(self._optimizer().param_groups[0]["lr"])
        self.history.append({"epoch": epoch, **metrics})
        progress.end_epoch()
        self._call("on_epoch_end", epoch, metrics)
        if stopped:
            self.request_stop(f"max_steps reached ({self.config.max_steps})")
        return metrics

    def _train_batches(self, loader: DataLoader, skip: int) -> bool:
        """One epoch of optimizer steps; True when ``max_steps`` was reached."""
        accumulate = self.config.accumulate_grad_batches
        total = len(loader) + skip
        optimizer = self._optimizer()
        scaler = self.precision.scaler
        progress = self.progress
        samples = 0
        for index, batch in enumerate(loader, start=skip):
            batch = self._to_device(batch)
            boundary = (index + 1) % accumulate == 0 or index + 1 == total
            # The epoch's last group may hold fewer batches: average over those it holds, so
            # that its step is as big as the others (as one batch of their size would be).
            group = min(accumulate, total - index + index % accumulate)
            sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if isinstance(self.net, DistributedDataParallel) and not boundary:
                sync = self.net.no_sync()
            with sync:
                with self.precision.autocast():
                    loss, _, targets = self.net(batch)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise self._non_finite(value)
                scaler.scale(loss / group).backward()
            self._train_meter.update(value, n=len(targets))
            samples += len(targets)
            if not boundary:
                continue
            self._optimizer_step(optimizer, scaler)
            progress.step += 1
            progress.batch_in_epoch = index + 1
            progress.last_step_samples, samples = samples, 0
            self._call("on_train_step_end", progress.step, value)
            if self.dist.broadcast_flag(self._interrupted, self.device):
                self.save_checkpoint("last")
                raise TrainingInterrupted(
                    f"training interrupted at epoch {progress.epoch + 1}, step {progress.step}; "
                    f"a checkpoint was written to {self.store.folder if self.store else '-'}"
                )
            if self.config.max_steps and progress.step >= self.config.max_steps:
                return True
        return False

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, scaler: Any) -> None:
        if self.config.gradient_clip_val is not None:
            scaler.unscale_(optimizer)
            params = self._model().parameters()
            if self.config.gradient_clip_algorithm == "norm":
                torch.nn.utils.clip_grad_norm_(params, self.config.gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(params, self.config.gradient_clip_val)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def _non_finite(self, value: float) -> TrainingError:
        kept = "no checkpoint was written yet"
        if self.store is not None and self.store.entries():
            kept = f"the last good checkpoint is kept in {self.store.folder}"
        return TrainingError(
            f"the training loss became {value} at epoch {self.progress.epoch + 1}, "
            f"step {self.progress.step + 1}; "
            f"training stopped and {kept}",
            hint="Lower the learning rate, clip gradients (training.gradient_clip_val) or check "
            "the data for NaN/inf values; then resume or start again.",
        )

    def _should_stop(self) -> bool:
        return self.dist.broadcast_flag(self._stop_reason is not None, self.device)

    # -- resume ----------------------------------------------------------------------------

    def _resume(self) -> None:
        if self.store is None:
            raise CheckpointError("resume needs a run folder")
        state, path = self.store.load_latest(self.device)
        model = self._model()
        if state["model_name"] != model.model_name or state["model_config"] != model.get_config():
            raise CheckpointError(
                f"{path} was written by model {state['model_name']!r} "
                f"({state['model_config']}), not by {model.model_name!r} ({model.get_config()})",
                hint="Resume a run folder of the same model, or start a new run.",
            )
        if state["world_size"] != self.dist.world_size:
            raise CheckpointError(
                f"{path} was written by {state['world_size']} process(es); this run has "
                f"{self.dist.world_size}: the data order would differ"
            )
        model.load_state_dict(state["model"])
        self._optimizer().load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])
        progress = self.progress
        progress.load_state_dict(
            state["progress"], accumulate_grad_batches=self.config.accumulate_grad_batches
        )
        self._train_meter.sum, self._train_meter.count = state["train_meter"]
        self.history = list(state["history"])
        for callback in self.callbacks:
            if callback.state_key in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][callback.state_key])
        restore_rng(state["rng"])
        if self.is_main:
            log.info(
                "resumed from %s: epoch %d, step %d, batch %d of the epoch",
                path,
                progress.epoch + 1,
                progress.step,
                progress.batch_in_epoch,
            )

    # -- plumbing --------------------------------------------------------------------------

    def _default_callbacks(
        self, tracker: ExperimentTracker | None, prometheus: TrainingMetrics | None
    ) -> list[Callback]:
        config = self.config
        callbacks: list[Callback] = []
        if config.scheduler is not None:
            callbacks.append(LearningRateScheduler(config.scheduler.monitor))
        if config.early_stopping is not None:
            callbacks.append(EarlyStopping(**config.early_stopping.model_dump()))
        if self.run_dir is not None:
            callbacks.append(
                MetricsLogger(
                    self.run_dir,
                    tracker,
                    prometheus,
                    system_metrics=config.tracking.system_metrics,
                )
            )
            callbacks.append(ModelCheckpoint(**config.checkpoint.model_dump()))
        if config.progress != "none":
            callbacks.append(
                ProgressPrinter(config.progress, every_n_steps=config.log_every_n_steps)
            )
        return callbacks

    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        non_blocking = self.device.type == "cuda"
        return {
            key: value.to(self.device, non_blocking=non_blocking)
            if isinstance(value, torch.Tensor)
            else value
            for key, value in batch.items()
        }

    @contextlib.contextmanager
    def _interrupt_handler(self) -> Iterator[None]:
        """The first Ctrl-C / SIGTERM finishes the step and checkpoints; a second one kills."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handle(signum: int, frame: Any) -> None:
            if self._interrupted:
                signal.signal(signum, previous[signal.Signals(signum)])
                raise KeyboardInterrupt
            self._interrupted = True
            if self.is_main:
                log.warning("interrupt received: finishing the step, then writing a checkpoint")

        for sig in previous:
            signal.signal(sig, handle)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _start_epoch(loader: DataLoader, epoch: int, *, skip_batches: int, seed: int) -> None:
    """Put the loader's order at ``epoch`` and skip what a resumed run has already seen."""
    # Samplers are duck-typed: EpochSampler's set_epoch(epoch, skip=...), DistributedSampler's
    # set_epoch(epoch), or none at all.
    sampler: object = getattr(loader.batch_sampler, "sampler", None)
    if sampler is None:
        sampler = loader.sampler
    skip = skip_batches * (loader.batch_size or 1)
    set_epoch = getattr(sampler, "set_epoch", None)
    if set_epoch is not None:
        try:
            set_epoch(epoch, skip=skip)
        except TypeError:  # a sampler without resume support, e.g. DistributedSampler
            if skip:
                raise CheckpointError(
                    f"the training loader's sampler ({type(sampler).__name__}) cannot resume "
                    "mid-epoch; use mlp_data's loaders (EpochSampler)"
                ) from None
            set_epoch(epoch)
    elif skip:
        raise CheckpointError(
            f"the training loader's sampler ({type(sampler).__name__}) cannot resume mid-epoch"
        )
    if loader.generator is not None:
        # Worker seeds are drawn from this generator when the epoch's iterator starts.
        loader.generator.manual_seed(seed + epoch)


def _num_classes(model: BaseModel) -> int | None:
    if model.task == "regression":
        return None
    if model.task == "binary":
        return 2
    return int(model.signature().outputs[0].shape[1])


def _load_user_callback(spec: CallbackSpec) -> Callback:
    module_name, _, attribute = spec.class_path.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"training.callbacks: cannot import {spec.class_path!r}: {exc}",
            hint="Give the import path of a Callback class, e.g. mypkg.callbacks.MyCallback.",
        ) from None
    callback = factory(**spec.args)
    if not isinstance(callback, Callback):
        raise ConfigError(
            f"training.callbacks: {spec.class_path!r} is not a mlp_train Callback subclass"
        )
    return callback
