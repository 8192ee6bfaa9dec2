"""Detection training through the real `mlp train`: ultralytics' engine in mlp's run folder.

One run serves every test here, and it is a hard one: `mlp train` is killed (SIGKILL) once its
first epoch's checkpoint is on disk, then `mlp train --resume RUN` finishes it. The finished
folder must look like any run (plus ultralytics' checkpoints), its model file must hold
best.pt's weights, and `mlp evaluate` must give ultralytics' own `val` mAP.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import train_helpers
import yaml
from train_helpers import REPO_ROOT, SHAPES_IMGSZ, last_line, mlp, subprocess_env

from mlp_core.errors import ConfigError
from mlp_models import YOLOModel, load_model
from mlp_models.ultralytics_env import import_ultralytics, preserved_threads
from mlp_train.config import TrainConfig
from mlp_train.detection.arguments import ultralytics_arguments
from mlp_train.run import evaluate

IMGSZ = SHAPES_IMGSZ
EPOCHS = 2
PER_EPOCH = ("train.box_loss", "train.cls_loss", "train.dfl_loss", "val.box_loss")
PER_EPOCH += ("val.precision", "val.recall", "val.mAP50", "val.mAP50-95", "epoch_seconds")
FINAL = [f"{s}.{m}" for s in ("val", "test") for m in ("precision", "recall", "mAP50", "mAP50-95")]


def shapes_config(root: Path, *, epochs: int = EPOCHS, n_train: int = 16) -> Path:
    return train_helpers.shapes_config(root, epochs=epochs, n_train=n_train)


def train_until(
    command: list[str], runs: Path, pattern: str, what: str, stdout: int
) -> subprocess.Popen[str]:
    """``mlp train`` started in the background, returned once a file matching ``pattern`` is
    under ``runs`` (``what`` names it); the test fails if it exits first or takes over 300 s."""
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(runs.glob(pattern)):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no {what} after 300 s"
        time.sleep(0.02)
    return process


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    """``python -c script`` in a subprocess with the tests' environment, output captured."""
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
        check=False,
    )


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the run folder, the resumed command's stdout)."""
    root = tmp_path_factory.mktemp("detection")
    runs = root / "runs"
    command = [str(Path(sys.executable).with_name("mlp")), "train", str(shapes_config(root))]
    command += ["--run-dir", str(runs)]
    process = train_until(command, runs, "*/weights/last.pt", "a checkpoint", subprocess.DEVNULL)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir() and (p / "weights").is_dir()]
    assert not (run_dir / "model").exists(), "the run finished before it was killed"
    assert 1 <= len(rows(run_dir)) < EPOCHS

    done = mlp("train", "--resume", str(run_dir), timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert last_line(done.stdout) == str(run_dir)
    return run_dir, done.stdout


def test_resumed_run_folder_holds_every_epoch_once_and_the_final_files(
    resumed: tuple[Path, str],
) -> None:
    run_dir, stdout = resumed
    epochs = rows(run_dir)
    assert [row["epoch"] for row in epochs] == list(range(EPOCHS))
    for row in epochs:
        assert set(PER_EPOCH) <= set(row)
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert set(PER_EPOCH) <= set(header)
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == EPOCHS + 1

    for name in ("config.yaml", "log.jsonl", "dataset.json", "preprocessing.json", "model"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "weights" / "best.pt").is_file()
    assert (run_dir / "weights" / "last.pt").is_file()
    assert not list((run_dir / "weights").glob("*.part"))
    dataset = json.loads((run_dir / "dataset.json").read_text())
    assert dataset["task"] == "detection"
    assert dataset["class_names"] == ["rectangle", "circle", "triangle"]
    assert dataset["sizes"] == {"train": 16, "val": 4, "test": 4}
    spec = json.loads((run_dir / "preprocessing.json").read_text())
    assert (spec["resize_mode"], spec["crop_size"], spec["pad_value"]) == (
        "letterbox",
        [64, 64],
        114,
    )

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sorted(metrics) == sorted(FINAL)
    assert all(0.0 <= metrics[key] <= 1.0 for key in FINAL)
    plots = {p.name for p in (run_dir / "plots").iterdir()}
    for split in ("val", "test"):
        expected = {f"pr_curve_{split}.png", f"confusion_matrix_{split}.png"}
        assert expected | {f"predictions_{split}.jpg"} <= plots
    assert "training_curves.png" in plots
    # What a person reads: the test metrics, then the run folder last.
    assert f"test: mAP50 {metrics['test.mAP50']:.4f}" in stdout
    tracking = [json.loads(line) for line in (run_dir / "tracking.jsonl").read_text().splitlines()]
    logged = {key for event in tracking for key in event.get("metrics", {})}
    assert {"val.mAP50", "train.box_loss", "final.test.mAP50"} <= logged


def test_model_file_holds_the_weights_of_best_pt(resumed: tuple[Path, str]) -> None:
    run_dir, _ = resumed
    model = load_model(run_dir / "model")
    assert isinstance(model, YOLOModel)
    assert model.class_names == ["rectangle", "circle", "triangle"]
    ultralytics = import_ultralytics()
    with preserved_threads():
        reference = ultralytics.YOLO(str(run_dir / "weights" / "best.pt")).model
    reference = reference.float().eval()
    image = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference(image)[0], rtol=0, atol=1e-5)


def test_evaluate_gives_the_map_of_ultralytics_val_on_the_same_weights(
    resumed: tuple[Path, str],
) -> None:
    run_dir, _ = resumed
    ours = evaluate(run_dir, "test")
    ultralytics = import_ultralytics()
    with preserved_threads():
        theirs = ultralytics.YOLO(str(run_dir / "weights" / "best.pt")).val(
            data=str(run_dir / "ultralytics" / "data.yaml"),
            split="test",
            imgsz=IMGSZ,
            batch=8,
            device="cpu",
            plots=False,
            verbose=False,
            project=str(run_dir.parent / "their_val"),
        )
    assert ours["test.mAP50"] == pytest.approx(float(theirs.box.map50), abs=1e-9)
    assert ours["test.mAP50-95"] == pytest.approx(float(theirs.box.map), abs=1e-9)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test.mAP50"] == pytest.approx(ours["test.mAP50"], abs=1e-9)


def test_resuming_a_finished_run_is_refused_and_changes_nothing(
    resumed: tuple[Path, str], tmp_path: Path
) -> None:
    run_dir, _ = resumed
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    # mlp's folder for ultralytics' settings, and no YOLO_CONFIG_DIR inherited from this process
    # (an earlier test's import_ultralytics sets it here).
    ours = tmp_path / "ultralytics"
    env = {k: v for k, v in subprocess_env().items() if k != "YOLO_CONFIG_DIR"}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("mlp")), "train", "--resume", str(run_dir)],
        cwd=REPO_ROOT,
        env={**env, "MLP_ULTRALYTICS_DIR": str(ours)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode != 0
    assert "nothing to resume" in done.stderr and "training.epochs" in done.stderr, done.stderr
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # not a file written, touched or removed
    # Reading the checkpoint imported ultralytics under mlp's offline switches: its settings
    # went to mlp's folder (without them, to the user's own config folder).
    assert (ours / "Ultralytics" / "settings.json").is_file()


def test_ctrl_c_in_the_first_epoch_leaves_a_checkpoint(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    command = [str(Path(sys.executable).with_name("mlp")), "train"]
    command += [str(shapes_config(tmp_path, n_train=64)), "--run-dir", str(runs)]
    # ultralytics draws the first training batches while the first epoch runs.
    batch = "*/ultralytics/train_batch0.jpg"
    process = train_until(command, runs, batch, "a training batch", subprocess.PIPE)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    (last,) = runs.glob("*/weights/last.pt")
    assert f"interrupted; the checkpoint {last} is kept" in stdout
    assert not (last.parents[1] / "metrics.jsonl").exists()  # it stopped inside epoch 1
    ultralytics = import_ultralytics()
    with preserved_threads():
        assert ultralytics.YOLO(str(last)).model.nc == 3  # a checkpoint ultralytics loads


def test_without_ultralytics_mlp_train_exits_2_with_the_install_line(tmp_path: Path) -> None:
    config = shapes_config(tmp_path, epochs=1)
    blocked = (
        "import sys; sys.modules['ultralytics'] = None\n"  # as if the extra were not installed
        "from mlp_core.cli import main\n"
        f"sys.exit(main(['train', {str(config)!r}, '--run-dir', {str(tmp_path / 'runs')!r}]))\n"
    )
    done = run_python(blocked)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pip install 'mlp-train[yolo]'" in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_bad_labels_fail_with_file_and_line_before_ultralytics_is_imported(tmp_path: Path) -> None:
    config = shapes_config(tmp_path, epochs=1)
    label = next(
        f
        for f in sorted((tmp_path / "shapes" / "labels" / "train").glob("*.txt"))
        if f.read_text().strip()
    )
    label.write_text(label.read_text() + "5 0.5 0.5 0.2 0.2\n")
    bad_line = len(label.read_text().splitlines())
    script = (
        "import sys\n"
        "from mlp_core.cli import main\n"
        f"code = main(['train', {str(config)!r}, '--run-dir', {str(tmp_path / 'runs')!r}])\n"
        "print('ultralytics imported:', 'ultralytics' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    done = run_python(script)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{label}:{bad_line}: class id 5 out of range" in done.stderr
    assert "ultralytics imported: False" in done.stdout


def test_ultralytics_arguments_come_from_mlp_keys_and_the_yolo_passthrough(tmp_path: Path) -> None:
    raw = yaml.safe_load(shapes_config(tmp_path).read_text())
    raw["training"]["device"] = "cuda:1"
    raw["training"]["yolo"] = {"device": [0, 1], "close_mosaic": 0}
    config = TrainConfig.model_validate(raw)
    arguments = ultralytics_arguments(
        config, model="yolov8n.yaml", data_yaml=tmp_path / "d.yaml", save_dir=tmp_path / "u"
    )
    assert arguments["optimizer"] == "AdamW" and arguments["lr0"] == 0.003
    assert (arguments["imgsz"], arguments["batch"], arguments["epochs"]) == (64, 8, EPOCHS)
    assert arguments["device"] == [0, 1]  # training.yolo wins: ultralytics' multi-GPU DDP
    assert arguments["amp"] is False and arguments["close_mosaic"] == 0
    raw["training"]["yolo"] = {"lr0": 0.1}
    with pytest.raises(ConfigError, match=r"lr0 is set by training\.optimizer\.lr"):
        ultralytics_arguments(
            TrainConfig.model_validate(raw), model="m", data_yaml=tmp_path, save_dir=tmp_path
        )
    raw["training"]["yolo"] = {"warmup_epoch": 0}
    with pytest.raises(ConfigError, match="warmup_epoch: not an ultralytics training argument"):
        ultralytics_arguments(
            TrainConfig.model_validate(raw), model="m", data_yaml=tmp_path, save_dir=tmp_path
        )


def test_the_best_epoch_is_the_one_ultralytics_kept_as_best_pt():
    # ultralytics writes best.pt whenever an epoch's fitness (val mAP50-95) equals the best so
    # far: a tie goes to the later epoch; an epoch without validation is never the best.
    from mlp_train.detection.run import _best_epoch

    rows = [{"val.mAP50-95": 0.0}, {"val.mAP50-95": 0.2}, {}, {"val.mAP50-95": 0.2}]
    assert _best_epoch(rows) == 3
    assert _best_epoch([{"val.mAP50-95": 0.3}, {"val.mAP50-95": 0.1}]) == 0
    assert _best_epoch([{}, {}]) is None


def test_ultralytics_finds_the_images_of_a_run_under_a_relative_folder(tmp_path, monkeypatch):
    # mlp train writes under a relative runs/ by default; ultralytics resolves a relative path
    # of data.yaml against its `path`, which doubled the run folder and found no images.
    from mlp_data import create_adapter
    from mlp_train.detection.run import write_ultralytics_data

    data = train_helpers.write_shapes_dataset(
        tmp_path / "shapes", n_train=4, n_val=2, n_test=2, image_size=SHAPES_IMGSZ, seed=0
    )
    adapter = create_adapter({"adapter": "yolo", "path": str(data), "imgsz": SHAPES_IMGSZ})
    adapter.prepare()
    monkeypatch.chdir(tmp_path)
    data_yaml = write_ultralytics_data(adapter, Path("runs") / "r1" / "ultralytics")
    import_ultralytics()  # offline switches first
    from ultralytics.data.utils import check_det_dataset

    with preserved_threads():
        found = check_det_dataset(str(data_yaml))
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        listed = Path(found[split]).read_text().split()
        assert len(listed) == count and all(Path(p).is_file() for p in listed), (split, found)
