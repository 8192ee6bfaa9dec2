"""A detection run: mlp's run folder around ultralytics' trainer and validator.

The run folder holds what every run holds (:class:`mlp_core.runs.RunFiles`) plus ultralytics'
own files::

    config.yaml, log.jsonl, dataset.json, tracking.jsonl
    preprocessing.json   the letterbox ImageEvalSpec (what export and serving apply)
    metrics.jsonl/.csv   one row per epoch: train.{box,cls,dfl}_loss, val.{box,cls,dfl}_loss,
                         val.precision, val.recall, val.mAP50, val.mAP50-95, lr.pg0.., seconds
    weights/last.pt      ultralytics' checkpoints (``YOLO(path)`` loads them; --resume uses
    weights/best.pt      last.pt); best.pt is the model's weights
    model                the same weights as an mlp model file (load_model -> YOLOModel)
    metrics.json         val.* and test.* precision, recall, mAP50, mAP50-95 of best.pt, from
                         ultralytics' own validator
    plots/               training_curves.png, pr_curve_<split>.png, confusion_matrix_<split>.png,
                         predictions_<split>.jpg (a grid of predicted boxes)
    ultralytics/         data.yaml + image lists (the images our adapter checked), args.yaml,
                         results.csv and every plot ultralytics draws

Data goes through :class:`mlp_data.detection.YOLOAdapter` first: bad labels fail with
``file:line`` (or are skipped, ``data.on_corrupt: skip``) before ultralytics sees anything,
and ultralytics reads only the images the adapter kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import yaml

from mlp_core.config import save_config
from mlp_core.errors import CheckpointError, ConfigError, MissingDependencyError, TrainingError
from mlp_core.files import atomic_write_text
from mlp_core.runs import RunFiles
from mlp_data import create_adapter
from mlp_data.detection.adapter import YOLOAdapter
from mlp_obs.log import bind_context, configure_logging
from mlp_obs.tracking import ExperimentTracker, create_tracker, tracked_run_id
from mlp_train.detection import INSTALL
from mlp_train.detection.rows import drop_rows_from, read_rows

log = logging.getLogger(__name__)

WEIGHTS = "weights"  # RUN/weights/{last,best}.pt: ultralytics' own checkpoints
ULTRALYTICS = "ultralytics"  # RUN/ultralytics/: what else ultralytics writes
SPLIT_METRICS = ("precision", "recall", "mAP50", "mAP50-95")
# What the ultralytics validator draws -> our plots/ names ({split} filled in).
PLOT_COPIES = {
    "BoxPR_curve.png": "pr_curve_{split}.png",
    "confusion_matrix.png": "confusion_matrix_{split}.png",
    "val_batch0_pred.jpg": "predictions_{split}.jpg",
}


def weights_of(run_dir: str | Path, which: str = "best") -> Path:
    """``RUN/weights/best.pt`` (or ``last``): ultralytics' checkpoint of a detection run."""
    return Path(run_dir) / WEIGHTS / f"{which}.pt"


def require_ultralytics() -> None:
    """A ``MissingDependencyError`` naming the extra when ultralytics is not installed."""
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:
        raise MissingDependencyError("training and evaluating detection models", INSTALL)


def train_detection(
    config: Any, run_dir: Path, *, resume: bool = False, source: str | None = None
) -> Any:
    """Train a detection config into ``run_dir`` (a new folder, or a run to resume)."""
    from mlp_train.run import BestEpoch, RunResult, tracking_summary

    require_ultralytics()
    from mlp_models.ultralytics_env import import_ultralytics, preserved_threads

    if resume:
        # Reading the checkpoint unpickles ultralytics' classes: its offline switches first.
        import_ultralytics()
        _refuse_finished(config, run_dir)
    files = RunFiles(run_dir)
    save_config(config, files.config)
    configure_logging(json_file=files.log)
    # Our adapter checks every image and label line first: bad labels fail with file:line
    # before ultralytics is even imported.
    adapter = _adapter(config, source or str(run_dir))
    import_ultralytics()
    # After ultralytics' import: its logger installs its own handler, which this routes to ours.
    configure_logging(json_file=files.log)
    info = adapter.info()
    _write_json(files.dataset, info.as_dict())
    _write_json(files.preprocessing, adapter.preprocessing())
    data_yaml = write_ultralytics_data(adapter, run_dir / ULTRALYTICS)

    training = config.training
    tracker = create_tracker(run_dir, runs_root=training.run_dir, backend=training.tracking.backend)
    previous = tracked_run_id(run_dir) if resume else None
    tracker.start_run(run_dir.name, experiment=training.experiment, run_id=previous)
    if previous is None:
        tracker.log_params(config.model_dump(mode="json"))
    try:
        with bind_context(run_id=tracker.run_id or run_dir.name), preserved_threads():
            trainer = _trainer(config, run_dir, data_yaml, resume=resume)
            trainer.tracker = tracker
            trainer.progress = "none" if training.progress == "none" else "plain"
            try:
                trainer.train()
            except KeyboardInterrupt:
                from mlp_train.trainer import TrainingInterrupted

                last = weights_of(run_dir, "last")
                kept = f"the checkpoint {last} is kept" if last.exists() else "no checkpoint yet"
                raise TrainingInterrupted(f"interrupted; {kept}") from None
            result = _finish(config, adapter, run_dir, data_yaml, tracker)
    except BaseException as error:
        tracker.__exit__(type(error), error, None)
        raise
    rows = read_rows(run_dir)
    best = _best_epoch(rows)
    run = RunResult(
        run_dir,
        result["metrics"],
        epochs=len(rows),
        best=BestEpoch(best + 1, "val.mAP50-95", rows[best]["val.mAP50-95"])
        if best is not None
        else None,
        plots=result["plots"],
    )
    run.tracking = tracking_summary(tracker)
    tracker.end_run()
    return run


def evaluate_detection(run_dir: str | Path, split: str = "test") -> dict[str, float]:
    """Recompute a detection run's metrics on ``split`` with ultralytics' validator on
    ``weights/best.pt`` (the mAP ultralytics' own ``val`` gives), and its plots."""
    from mlp_train.run import read_run_config

    require_ultralytics()
    from mlp_models.ultralytics_env import import_ultralytics, preserved_threads

    import_ultralytics()
    run_dir = Path(run_dir)
    files = RunFiles(run_dir)
    config = read_run_config(run_dir)
    adapter = _adapter(config, str(files.config))
    _check_same_preprocessing(run_dir, adapter)
    if split != "train" and not adapter.split_images(split):
        raise ConfigError(
            f"{files.config}: the data has no {split} split", hint="Pass --split val."
        )
    data_yaml = write_ultralytics_data(adapter, run_dir / ULTRALYTICS)
    with preserved_threads():
        values, plots = validate_split(config, run_dir, data_yaml, split)
    existing = json.loads(files.metrics.read_text()) if files.metrics.exists() else {}
    existing.update(values)
    _write_json(files.metrics, existing)
    del plots
    return values


def validate_split(
    config: Any, run_dir: Path, data_yaml: Path, split: str
) -> tuple[dict[str, float], list[Path]]:
    """ultralytics' ``val`` of ``weights/best.pt`` on one split: metrics and the plots copied
    into ``plots/``."""
    from ultralytics import YOLO

    weights = weights_of(run_dir)
    if not weights.exists():
        raise CheckpointError(
            f"{weights} does not exist: the run did not finish an epoch",
            hint="Resume it with mlp train --resume RUN_FOLDER.",
        )
    save_dir = run_dir / ULTRALYTICS / f"val_{split}"
    shutil.rmtree(save_dir, ignore_errors=True)
    validator_metrics = YOLO(str(weights), task="detect").val(
        data=str(data_yaml),
        split=split,
        imgsz=int(config.data.imgsz),
        batch=int(config.data.batch_size),
        device=_device(config.training.device),
        workers=0,
        plots=True,
        save_dir=str(save_dir),
        verbose=False,
    )
    box = validator_metrics.box
    values = {
        f"{split}.precision": float(box.mp),
        f"{split}.recall": float(box.mr),
        f"{split}.mAP50": float(box.map50),
        f"{split}.mAP50-95": float(box.map),
    }
    plots = RunFiles(run_dir).plots
    plots.mkdir(parents=True, exist_ok=True)
    copied = []
    for name, target in PLOT_COPIES.items():
        drawn = save_dir / name
        if drawn.exists():
            copied.append(Path(shutil.copyfile(drawn, plots / target.format(split=split))))
    return values, copied


def write_ultralytics_data(adapter: YOLOAdapter, folder: Path) -> Path:
    """``folder/data.yaml`` naming, per split, a list of the images the adapter checked. Every
    path in it is absolute: ultralytics resolves a relative one against the yaml's ``path``,
    which doubled a relative run folder (``mlp train`` writes under ``runs/`` by default)."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {"path": str(folder)}
    for split in ("train", "val", "test"):
        images = adapter.split_images(split)
        if not images:
            continue
        listing = folder / f"{split}.txt"
        atomic_write_text(listing, "".join(f"{Path(p).resolve()}\n" for p in images))
        document[split] = str(listing)
    document["names"] = dict(enumerate(adapter.class_names))
    data_yaml = folder / "data.yaml"
    atomic_write_text(data_yaml, yaml.safe_dump(document, sort_keys=False))
    return data_yaml


def _adapter(config: Any, source: str) -> YOLOAdapter:
    adapter = create_adapter(config.data.model_dump(), source=source)
    if not isinstance(adapter, YOLOAdapter):
        raise ConfigError(
            f"{source}: model 'yolo' trains on detection data: data.adapter must be 'yolo', "
            f"got {config.data.adapter!r}"
        )
    adapter.prepare()
    return adapter


def _trainer(config: Any, run_dir: Path, data_yaml: Path, *, resume: bool) -> Any:
    from mlp_train.detection.arguments import ultralytics_arguments
    from mlp_train.detection.engine import RunFolderTrainer

    last = weights_of(run_dir, "last")
    if resume and last.exists():
        return RunFolderTrainer(overrides={"resume": str(last), "data": str(data_yaml)})
    if resume:
        # Killed before its first epoch ended: nothing to continue, start again in place.
        drop_rows_from(run_dir, 0)
    arguments = ultralytics_arguments(
        config, model=_model_source(config), data_yaml=data_yaml, save_dir=run_dir / ULTRALYTICS
    )
    return RunFolderTrainer(overrides=arguments)


def _refuse_finished(config: Any, run_dir: Path) -> None:
    """A ``CheckpointError`` if ``run_dir`` has finished its epochs: nothing to resume. Checked
    before anything is written, so the refused run folder is left exactly as it was."""
    last = weights_of(run_dir, "last")
    if not last.exists():
        return
    # ultralytics strips a finished run's last.pt (its epoch becomes -1): the model file and
    # metrics.json say the run is done.
    files = RunFiles(run_dir)
    finished = files.model.exists() and files.metrics.exists()
    if finished or _finished_epochs(last) >= config.training.epochs:
        raise CheckpointError(
            f"{run_dir} has finished its {config.training.epochs} epochs: nothing to resume",
            hint="Start a new run, e.g. with --set training.epochs=N for more epochs.",
        )


def _finished_epochs(checkpoint: Path) -> int:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return int(state.get("epoch", -1)) + 1


def _model_source(config: Any) -> str:
    """What ultralytics builds the network from: a local checkpoint or an architecture yaml."""
    from mlp_models.yolo import DEFAULT_ARCH, _local_file

    extra = dict(config.model.model_extra or {})
    if config.model.name != "yolo":
        raise ConfigError(
            f"data.adapter 'yolo' is detection data: model.name must be 'yolo', got "
            f"{config.model.name!r}"
        )
    unknown = sorted(set(extra) - {"arch", "weights"})
    if unknown:
        raise ConfigError(
            f"model 'yolo' does not accept {', '.join(map(repr, unknown))} in a training "
            "config; accepted: arch, weights (the classes and image size come from the data)"
        )
    if extra.get("weights"):
        return str(_local_file(extra["weights"], "weights").resolve())
    arch = str(extra.get("arch") or DEFAULT_ARCH)
    if arch.endswith(".pt"):
        raise ConfigError(
            f"model 'yolo': arch: expected an architecture .yaml; given {arch!r}",
            hint="A checkpoint goes to model.weights (a local file).",
        )
    local = Path(arch).expanduser()
    return str(local.resolve()) if local.is_file() else arch


def _finish(
    config: Any, adapter: YOLOAdapter, run_dir: Path, data_yaml: Path, tracker: ExperimentTracker
) -> dict[str, Any]:
    """The model file from best.pt, metrics.json (val and test), plots, tracked artifacts."""
    from mlp_models import create_model
    from mlp_train.plots import plot_training_curves

    files = RunFiles(run_dir)
    best = weights_of(run_dir)
    if not best.exists():
        raise TrainingError(f"ultralytics finished without writing {best}")
    info = adapter.info()
    model = create_model(
        "yolo",
        num_classes=info.num_classes,
        class_names=info.class_names,
        weights=str(best),
        image_size=int(config.data.imgsz),
    )
    model.save(files.model)
    metrics: dict[str, float] = {}
    plots: list[Path] = []
    rows = read_rows(run_dir)
    if rows:
        history = [{k: v for k, v in row.items() if not k.startswith("lr.")} for row in rows]
        plots.append(plot_training_curves(history, files.plots / "training_curves.png"))
    for split in ("val", "test"):
        if not adapter.split_images(split):
            continue
        values, drawn = validate_split(config, run_dir, data_yaml, split)
        metrics.update(values)
        plots += drawn
    _write_json(files.metrics, metrics)
    tracker.log_metrics({f"final.{k}": v for k, v in metrics.items()})
    for path in [files.config, files.metrics, *plots]:
        tracker.log_artifact(path, artifact_path="plots" if path.parent == files.plots else None)
    tracker.log_artifact(files.model, artifact_path=RunFiles.MODEL)
    tracker.log_artifact(best, artifact_path=WEIGHTS)
    name = config.training.tracking.register_model
    if name:
        tracker.register_model(name, RunFiles.MODEL)
    log.info(
        "run finished",
        extra={"epochs": len(rows), **{k: round(v, 4) for k, v in metrics.items()}},
    )
    return {"metrics": metrics, "plots": plots}


def _best_epoch(rows: list[dict[str, Any]]) -> int | None:
    """The epoch ultralytics kept as best.pt, by its rule: fitness is val mAP50-95, and it writes
    best.pt whenever an epoch's fitness equals the best so far, so a tie goes to the later
    epoch."""
    best, index = None, None
    for position, row in enumerate(rows):
        fitness = row.get("val.mAP50-95")
        if fitness is not None and (best is None or fitness >= best):
            best, index = fitness, position
    return index


def _check_same_preprocessing(run_dir: Path, adapter: YOLOAdapter) -> None:
    saved_path = RunFiles(run_dir).preprocessing
    if saved_path.exists() and json.loads(saved_path.read_text()) != json.loads(
        json.dumps(adapter.preprocessing())
    ):
        raise ConfigError(
            f"the data of {run_dir} has changed since training: its preprocessing differs from "
            f"{saved_path}",
            hint="Evaluate on the data the run was trained on.",
        )


def _device(device: str) -> str | None:
    from mlp_train.detection.arguments import _device as ultralytics_device

    return ultralytics_device(device)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


__all__ = ["evaluate_detection", "train_detection", "validate_split", "weights_of"]
