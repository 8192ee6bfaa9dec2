"""A training run from a config: the run folder, data, model, tracking, fit, final evaluation.

The run folder holds (file names from :class:`mlp_core.runs.RunFiles`)::

    config.yaml          the resolved config (what `--resume` and `mlp evaluate` read)
    log.jsonl            structured logs
    dataset.json         what the data told the model (task, classes, inputs, split sizes)
    preprocessing.json   every fitted preprocessing parameter (for export and serving)
    metrics.jsonl/.csv   one row per epoch
    checkpoints/         last (x2) and best checkpoints, with index.json
    model                the final model, one file: weights + config, loadable by name
                         (`mlp_models.load_model(run / "model")`)
    metrics.json         final validation and test metrics
    plots/               training curves, confusion matrix or residuals (PNG)
    tracking.jsonl       the run's tracking record (also in MLflow when installed)
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from mlp_core.config import apply_overrides, load_config, save_config, validate_config
from mlp_core.errors import CheckpointError, ConfigError, MissingDependencyError
from mlp_core.files import atomic_write_text
from mlp_core.runs import RunFiles, new_run_dir
from mlp_core.seeding import seed_everything
from mlp_core.tasks import prediction_task
from mlp_data import DataAdapter, DatasetInfo, create_adapter
from mlp_models import BaseModel, accepted_arguments, create_model, load_model
from mlp_obs.log import bind_context, configure_logging
from mlp_obs.tracking import ExperimentTracker, create_tracker, tracked_run_id
from mlp_train.checkpoint import CheckpointStore, load_checkpoint
from mlp_train.config import TrainConfig, TrainerConfig
from mlp_train.detection import INSTALL as DETECTION_INSTALL
from mlp_train.detection import is_detection
from mlp_train.distributed import DistributedContext
from mlp_train.plots import plot_confusion_matrix, plot_residuals, plot_training_curves
from mlp_train.prometheus import PrometheusExposition
from mlp_train.trainer import Evaluation, Trainer

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    # What a person reads at the end (`mlp train`'s last lines): empty on ranks other than 0.
    epochs: int = 0
    best: BestEpoch | None = None
    plots: list[Path] = field(default_factory=list)
    tracking: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BestEpoch:
    """The epoch whose weights the saved model holds, by the checkpoint's monitored metric."""

    epoch: int
    monitor: str | None
    value: float | None


def train(
    config_path: str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    runs_root: str | Path | None = None,
    resume: str | Path | None = None,
) -> RunResult:
    """Train from a config file or folder, or continue the run in ``resume``."""
    dist = DistributedContext.from_env()
    if resume is not None:
        run_dir = Path(resume)
        config = _resume_config(run_dir, config_path, overrides)
    else:
        if config_path is None:
            raise ConfigError("mlp train needs a config (a YAML file or a folder) or --resume")
        config = load_config(config_path, overrides, schema=TrainConfig)
        _absolute_data_path(config)
        if runs_root is not None:
            config.training.run_dir = Path(runs_root)
        _require_detection_extra(config)
        run_dir = _new_run_dir(config, dist)
    if is_detection(config):
        # ultralytics' own engine trains detectors (its DDP included): mlp_train.detection.
        from mlp_train.detection.run import train_detection

        _require_detection_extra(config)
        return train_detection(
            config, run_dir, resume=resume is not None, source=str(config_path or run_dir)
        )
    training = config.training
    files = RunFiles(run_dir)
    if dist.is_main:
        save_config(config, files.config)
    configure_logging(json_file=files.log if dist.is_main else None)
    seed_everything(training.seed, deterministic=training.deterministic)

    adapter = create_adapter(config.data.model_dump(), source=str(config_path or run_dir))
    adapter.prepare()
    info = adapter.info()
    model = build_model(config, info)
    loaders = adapter.loaders(distributed=dist.enabled, rank=dist.rank, world_size=dist.world_size)
    tracker = None
    if dist.is_main:
        _write_json(files.dataset, info.as_dict())
        _write_json(files.preprocessing, adapter.preprocessing())
        tracker = create_tracker(
            run_dir, runs_root=training.run_dir, backend=training.tracking.backend
        )
        previous = tracked_run_id(run_dir) if resume is not None else None
        tracker.start_run(run_dir.name, experiment=training.experiment, run_id=previous)
        if previous is None:  # a resumed run keeps its params (MLflow refuses changed values)
            tracker.log_params(config.model_dump(mode="json"))
    # Every rank exposes its own series, labelled rank, on port + LOCAL_RANK (mlp_train.prometheus).
    exposition = PrometheusExposition(training.prometheus, dist) if training.prometheus else None
    trainer = Trainer(
        training,
        run_dir=run_dir,
        callbacks=[exposition] if exposition else [],
        tracker=tracker,
        prometheus=exposition.metrics if exposition else None,
        class_names=info.class_names,
        distributed=dist,
    )
    try:
        with bind_context(run_id=tracker.run_id if tracker else run_dir.name):
            trainer.fit(model, loaders["train"], loaders.get("val"), resume=resume is not None)
            result = _finish(trainer, model, adapter, run_dir, tracker, config)
    except BaseException as error:
        if tracker is not None:
            tracker.__exit__(type(error), error, None)
        # No shutdown here: the other ranks may still be inside a collective, and tearing the
        # group down under them can hang; the launcher ends them when this process fails.
        raise
    if tracker is not None:
        result.tracking = tracking_summary(tracker)
        tracker.end_run()
    dist.shutdown()
    return result


def evaluate(run_dir: str | Path, split: str = "test") -> dict[str, float]:
    """Recompute a finished run's metrics and plots on ``split`` from its saved model."""
    run_dir = Path(run_dir)
    files = RunFiles(run_dir)
    config = read_run_config(run_dir)
    if is_detection(config):
        from mlp_train.detection.run import evaluate_detection

        _require_detection_extra(config)
        return evaluate_detection(run_dir, split)
    seed_everything(config.training.seed)
    adapter = create_adapter(config.data.model_dump(), source=str(files.config))
    adapter.prepare()
    _check_same_preprocessing(run_dir, adapter)
    model = load_model(files.model)
    trainer = Trainer(_quiet(config.training), class_names=adapter.info().class_names)
    loader = adapter.loaders((split,))[split]
    result = trainer.evaluate(model, loader, split, sync=False)
    _write_plots(run_dir, _read_history(run_dir), model, result, split)
    values = result.metrics
    path = files.metrics
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing.update(values)
    _write_json(path, existing)
    return values


def _require_detection_extra(config: TrainConfig) -> None:
    """Detection needs ultralytics (the ``yolo`` extra): say so before a run folder exists."""
    if is_detection(config) and importlib.util.find_spec("ultralytics") is None:
        raise MissingDependencyError(
            f"training {config.model.name!r} on {config.data.adapter!r} data (object detection)",
            DETECTION_INSTALL,
        )


def build_model(config: TrainConfig, info: DatasetInfo) -> BaseModel:
    """The configured model, given what the data decides (inputs, classes, task)."""
    user = dict(config.model.model_extra or {})
    accepted = accepted_arguments(config.model.name)
    from_data = {k: v for k, v in _data_kwargs(info).items() if k in accepted and k not in user}
    return create_model(config.model.name, **from_data, **user)


def _data_kwargs(info: DatasetInfo) -> dict[str, Any]:
    kwargs = dict(info.model_kwargs())
    size = kwargs.get("image_size")
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConfigError(f"data: the vision models take square images, got {list(size)}")
        kwargs["image_size"] = int(size[0])
    kwargs["task"] = prediction_task(info.task)
    return kwargs


def _finish(
    trainer: Trainer,
    model: BaseModel,
    adapter: DataAdapter,
    run_dir: Path,
    tracker: ExperimentTracker | None,
    config: TrainConfig,
) -> RunResult:
    """Keep the best weights, save the model, evaluate on val and test, plot, track.

    Rank 0 alone does this, on the whole val and test sets; the other ranks are done.
    """
    if not trainer.is_main:
        return RunResult(run_dir, {})
    files = RunFiles(run_dir)
    store = CheckpointStore(files.checkpoints)
    best = store.best(config.training.checkpoint.mode)
    if best is not None:
        state = load_checkpoint(store.folder / best.file, trainer.device, sha256=best.sha256)
        model.load_state_dict(state["model"])
    loaders = adapter.loaders(("val", "test"))
    metrics: dict[str, float] = {}
    last = None
    for split in ("val", "test"):
        dataset = loaders[split].dataset
        if isinstance(dataset, Sized) and len(dataset) == 0:
            continue
        last = trainer.evaluate(model, loaders[split], split, sync=False)
        metrics.update(last.metrics)
    model.save(files.model)
    _write_json(files.metrics, metrics)
    plots = _write_plots(run_dir, trainer.history, model, last, last.split if last else "test")
    if tracker is not None:
        tracker.log_metrics({f"final.{k}": v for k, v in metrics.items()})
        for path in [files.config, files.metrics, *plots]:
            tracker.log_artifact(path, artifact_path="plots" if path.suffix == ".png" else None)
        tracker.log_artifact(files.model, artifact_path=RunFiles.MODEL)
        if best is not None:
            tracker.log_artifact(store.folder / best.file, artifact_path=RunFiles.CHECKPOINTS)
        name = config.training.tracking.register_model
        if name:
            tracker.register_model(name, RunFiles.MODEL)
    epochs = len(trainer.history)
    best_epoch = BestEpoch(best.epoch, best.monitor, best.value) if best is not None else None
    # The full metrics are in metrics.json; the log line carries the ones a person watches.
    log.info(
        "run finished",
        extra={
            "epochs": epochs,
            "best_epoch": best_epoch.epoch if best_epoch else None,
            **{k: round(v, 4) for k, v in metrics.items() if _headline(k)},
        },
    )
    return RunResult(run_dir, metrics, epochs, best_epoch, plots)


# The few metrics a person reads in the summary; all of them are in metrics.json.
HEADLINE = ("accuracy", "f1_macro", "roc_auc", "rmse", "mae", "r2", "loss", "mAP50", "mAP50-95")


def _headline(key: str) -> bool:
    return key.rpartition(".")[2] in HEADLINE


def tracking_summary(tracker: ExperimentTracker) -> dict[str, str]:
    """What a run reports of its tracking: the MLflow run id and store, when MLflow tracked it."""
    # The MLflow side of the composite tracker (None when MLflow is not installed).
    remote = getattr(tracker, "remote", None)
    run_id, uri = getattr(remote, "run_id", None), getattr(remote, "tracking_uri", None)
    if not run_id or not uri:
        return {}
    return {"run_id": str(run_id), "tracking_uri": str(uri)}


def _write_plots(
    run_dir: Path,
    history: list[dict[str, Any]],
    model: BaseModel,
    result: Evaluation | None,
    split: str,
) -> list[Path]:
    plots = RunFiles(run_dir).plots
    written = []
    if history:
        written.append(plot_training_curves(history, plots / "training_curves.png"))
    if result is None:
        return written
    if model.task == "regression":
        path = plots / f"residuals_{split}.png"
        written.append(plot_residuals(result.predictions.numpy(), result.targets.numpy(), path))
    else:
        scores = result.scores
        names = scores.class_names or [str(i) for i in range(scores.num_classes)]
        path = plots / f"confusion_matrix_{split}.png"
        written.append(plot_confusion_matrix(scores.confusion_matrix(), names, path))
    return written


def _read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = RunFiles(run_dir).epoch_metrics
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _new_run_dir(config: TrainConfig, dist: DistributedContext) -> Path:
    # Every rank must agree on the folder: rank 0 creates it and tells the others.
    name = config.training.run_name or Path(str(config.data.path or "run")).stem
    if not dist.enabled:
        return new_run_dir(config.training.run_dir, name)
    import torch.distributed as torch_dist

    holder = [str(new_run_dir(config.training.run_dir, name)) if dist.is_main else ""]
    dist.init(torch.device("cpu") if config.training.device == "cpu" else _device_of(config, dist))
    torch_dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def _device_of(config: TrainConfig, dist: DistributedContext) -> torch.device:
    from mlp_train.devices import select_device

    return dist.device(select_device(config.training.device))


def _resume_config(
    run_dir: Path, config_path: str | Path | None, overrides: list[str] | tuple[str, ...]
) -> TrainConfig:
    if not RunFiles(run_dir).config.exists():
        raise CheckpointError(
            f"{run_dir} is not a run folder (no {RunFiles.CONFIG})",
            hint="Pass the folder `mlp train` printed as its last line.",
        )
    saved = read_run_config(run_dir, overrides)
    if config_path is not None:
        asked = load_config(config_path, overrides, schema=TrainConfig)
        if asked.model.model_dump() != saved.model.model_dump():
            raise CheckpointError(
                f"{run_dir} trained model {saved.model.name!r} with other settings than "
                f"{config_path} asks for ({asked.model.name!r})",
                hint="Resume with the run's own config (omit the config path), or start a new run.",
            )
    return saved


def read_run_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The config a run folder saved, with ``overrides`` (``key=value``) applied."""
    path = RunFiles(run_dir).config
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from None
    sources = dict.fromkeys(raw, str(path))
    apply_overrides(raw, overrides, sources)
    return validate_config(raw, schema=TrainConfig, sources=sources)


def _absolute_data_path(config: TrainConfig) -> None:
    # The saved config must work from any directory: `mlp evaluate`, `--resume` and `mlp export`
    # read it later, from wherever they are run.
    path = config.data.path
    if path is not None and not Path(path).is_absolute():
        config.data.path = Path(path).resolve()


def _check_same_preprocessing(run_dir: Path, adapter: DataAdapter) -> None:
    saved_path = RunFiles(run_dir).preprocessing
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    now = json.loads(json.dumps(adapter.preprocessing()))
    if saved != now:
        raise ConfigError(
            f"the data of {run_dir} has changed since training: the preprocessing fitted now "
            f"differs from {saved_path}",
            hint="Evaluate on the data the run was trained on.",
        )


def _quiet(training: TrainerConfig) -> TrainerConfig:
    return training.model_copy(update={"progress": "none"})


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


__all__ = ["RunResult", "build_model", "evaluate", "train"]
