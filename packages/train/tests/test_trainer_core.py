"""The Trainer on real penguins loaders from mlp-data and real mlp-models models: optimizers,
schedulers, precision, accumulation, clipping, gradient checkpointing, devices, determinism."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset
from train_helpers import EXAMPLE, PENGUINS_CSV, QUIET, assert_identical, model_tensors, read_rows

from mlp_core.config import load_config
from mlp_core.errors import ConfigError
from mlp_data import UnifiedLoader, create_adapter
from mlp_data.synthetic import write_digits_folder
from mlp_models import create_model
from mlp_train.config import TrainConfig, TrainerConfig
from mlp_train.run import train
from mlp_train.trainer import Trainer


@pytest.fixture(scope="module")
def penguins():
    adapter = create_adapter(
        {
            "adapter": "csv",
            "path": str(PENGUINS_CSV),
            "target": "species",
            "task": "classification",
            "batch_size": 32,
            "split": {"val": 0.15, "test": 0.2, "seed": 42},
        }
    )
    return adapter.prepare()


def tabular(adapter, seed: int = 0, **options):
    torch.manual_seed(seed)
    return create_model("tabular_mlp", **adapter.info().model_kwargs(), **options)


def trainer_config(**options) -> TrainerConfig:
    return TrainerConfig(**{"device": "cpu", "progress": "none", **options})


def params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("name", "lr", "kind"),
    [
        ("sgd", 0.05, torch.optim.SGD),
        ("adam", 0.01, torch.optim.Adam),
        ("adamw", 0.01, torch.optim.AdamW),
    ],
)
def test_fit_validate_test_with_each_optimizer(penguins, name, lr, kind):
    loaders = penguins.loaders()
    model = tabular(penguins)
    trainer = Trainer(trainer_config(epochs=3, optimizer={"name": name, "lr": lr}))
    last = trainer.fit(model, loaders["train"], loaders["val"])

    assert type(trainer.optimizer) is kind
    assert [row["epoch"] for row in trainer.history] == [0, 1, 2]
    assert trainer.history[-1]["train.loss"] < trainer.history[0]["train.loss"]
    assert {"train.loss", "val.loss", "val.accuracy", "lr"} <= last.keys()
    val = trainer.validate(model, loaders["val"])
    test = trainer.test(model, loaders["test"])
    assert val["val.loss"] == pytest.approx(last["val.loss"])
    assert set(test) == {k.replace("val.", "test.") for k in val}
    assert test["test.accuracy"] >= 0.8, test


def _lrs(recorder: Path, hook: str) -> list[float]:
    return [row["lr"] for row in read_rows(recorder) if row["hook"] == hook]


@pytest.mark.parametrize("name", ["step", "cosine"])
def test_epoch_schedulers_follow_their_formula(penguins, tmp_path, name):
    loaders = penguins.loaders()
    lr, epochs = 0.02, 5
    scheduler = {"name": name, "step_size": 2, "gamma": 0.5, "min_lr": 0.001}
    trainer = Trainer(
        trainer_config(epochs=epochs, optimizer={"name": "sgd", "lr": lr}, scheduler=scheduler)
    )
    trainer.fit(tabular(penguins), loaders["train"], loaders["val"])
    used = [row["lr"] for row in trainer.history]  # the lr each epoch trained with
    if name == "step":
        expected = [lr * 0.5 ** (e // 2) for e in range(epochs)]
    else:
        expected = [
            0.001 + (lr - 0.001) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)
        ]
    assert used == pytest.approx(expected, rel=1e-9)


def test_onecycle_steps_every_optimizer_step(penguins, tmp_path):
    loaders = penguins.loaders()
    recorder = tmp_path / "hooks.jsonl"
    config = trainer_config(
        epochs=3,
        optimizer={"name": "adamw", "lr": 0.001},
        scheduler={"name": "onecycle", "max_lr": 0.01, "pct_start": 0.3},
        callbacks=[{"class": "train_helpers.Recorder", "args": {"path": str(recorder)}}],
    )
    trainer = Trainer(config)
    trainer.fit(tabular(penguins), loaders["train"], loaders["val"])
    total = trainer.progress.steps_per_epoch * 3
    initial, final = 0.01 / 25, 0.01 / 25 / 1e4
    warm_end = 0.3 * total - 1

    def anneal(start: float, end: float, fraction: float) -> float:
        return end + (start - end) / 2 * (1 + math.cos(math.pi * fraction))

    def expected(k: int) -> float:  # the lr after k scheduler steps
        if k <= warm_end:
            return anneal(initial, 0.01, k / warm_end)
        return anneal(0.01, final, (k - warm_end) / (total - 1 - warm_end))

    # The recorder runs after the scheduler callback: it sees the lr of the next step.
    after = _lrs(recorder, "on_train_step_end")
    assert len(after) == total == trainer.progress.step
    assert after == pytest.approx([expected(k) for k in range(1, total + 1)], rel=1e-9)
    assert _lrs(recorder, "on_train_epoch_start")[0] == pytest.approx(initial, rel=1e-9)
    assert max(after) > 0.9 * 0.01 and after[-1] < 0.01 / 25


def test_plateau_halves_the_lr_when_the_monitor_stops_improving(penguins):
    loaders = penguins.loaders()
    # mode max on a loss that falls every epoch: no epoch after the first "improves".
    scheduler = {
        "name": "plateau",
        "monitor": "val.loss",
        "mode": "max",
        "patience": 0,
        "factor": 0.5,
    }
    trainer = Trainer(
        trainer_config(epochs=4, optimizer={"name": "sgd", "lr": 0.02}, scheduler=scheduler)
    )
    trainer.fit(tabular(penguins), loaders["train"], loaders["val"])
    losses = [row["val.loss"] for row in trainer.history]
    assert all(a > b for a, b in itertools.pairwise(losses)), losses
    assert [row["lr"] for row in trainer.history] == pytest.approx([0.02, 0.02, 0.01, 0.005])


def test_bf16_autocast_on_cpu_trains_with_finite_loss(penguins):
    loaders = penguins.loaders()
    trainer = Trainer(trainer_config(epochs=2, precision="bf16", optimizer={"lr": 0.01}))
    assert trainer.precision.dtype is torch.bfloat16
    with trainer.precision.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16
    trainer.fit(tabular(penguins), loaders["train"], loaders["val"])
    for row in trainer.history:
        assert math.isfinite(row["train.loss"]) and math.isfinite(row["val.loss"])
    assert trainer.history[-1]["train.loss"] < trainer.history[0]["train.loss"]


def test_fp16_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="fp16") as caught:
        load_config(EXAMPLE, ["training.precision=fp16", "training.device=cpu"], schema=TrainConfig)
    assert "training.precision" in caught.value.message or "training" in caught.value.message
    # device auto resolves to the CPU here: the trainer refuses it too.
    with pytest.raises(ConfigError, match="training.precision: fp16"):
        Trainer(TrainerConfig(precision="fp16", device="auto"))


def test_gradient_accumulation_matches_a_bigger_batch(penguins):
    # 200 rows: 6 full groups of 2 x 16 (= batches of 32), then one batch of 8 alone, which
    # must count as a whole step (as the last batch of 8 does with batch 32).
    rows = Subset(penguins.dataset("train"), range(200))
    collate = type(penguins).collate_fn

    def run(batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
        loader = UnifiedLoader(batch_size=batch_size, seed=7, collate_fn=collate).loader(
            rows, "train"
        )
        model = tabular(penguins, seed=1, norm="none", dropout=0.0)
        config = trainer_config(
            epochs=2,
            accumulate_grad_batches=accumulate,
            optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0},
        )
        trainer = Trainer(config)
        trainer.fit(model, loader)
        assert trainer.progress.step == 2 * 7
        return params(model)

    accumulated, big = run(16, 2), run(32, 1)
    untouched = params(tabular(penguins, seed=1, norm="none", dropout=0.0))
    for name in big:
        assert not torch.equal(big[name], untouched[name])
        # Only the order of float additions differs between the two.
        torch.testing.assert_close(accumulated[name], big[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_bounds_the_update(penguins, algorithm):
    loaders = penguins.loaders()
    clip, lr = 1e-4, 1.0
    model = tabular(penguins, norm="none", dropout=0.0)
    before = params(model)
    config = trainer_config(
        epochs=1,
        max_steps=1,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
        optimizer={"name": "sgd", "lr": lr, "momentum": 0.0},
    )
    Trainer(config).fit(model, loaders["train"])
    deltas = [p.detach() - before[name] for name, p in model.named_parameters()]
    assert any(d.abs().max() > 0 for d in deltas)  # it did step
    if algorithm == "norm":
        total = torch.linalg.vector_norm(torch.cat([d.flatten() for d in deltas]))
        assert total <= lr * clip * (1 + 1e-4)
        assert total >= lr * clip * 0.99  # the gradient was far bigger: clipped to the bound
    else:
        # Float rounding of (p - lr * g) - p is about 1e-8 for weights near 0.1.
        largest = max(float(d.abs().max()) for d in deltas)
        assert lr * clip - 1e-7 <= largest <= lr * clip + 1e-7


def test_gradient_checkpointing_on_a_vision_model_and_a_config_error_on_tabular(penguins, tmp_path):
    root = write_digits_folder(tmp_path / "digits", image_size=32, limit=24)
    adapter = create_adapter(
        {
            "adapter": "image_folder",
            "path": str(root),
            "image_size": 32,
            "color_mode": "L",
            "batch_size": 8,
            "split": {"val": 0.25, "test": 0.0, "seed": 0, "stratify": False},
        }
    ).prepare()
    loaders = adapter.loaders(("train", "val"))
    info = adapter.info()

    def run(checkpointing: bool):
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=info.num_classes, in_channels=1, image_size=32)
        config = trainer_config(
            epochs=1,
            max_steps=1,
            gradient_checkpointing=checkpointing,
            optimizer={"name": "sgd", "lr": 0.1},
        )
        trainer = Trainer(config)
        trainer.fit(model, loaders["train"], loaders["val"])
        assert model.gradient_checkpointing is checkpointing
        assert math.isfinite(trainer.history[0]["val.loss"])
        return params(model)

    plain, checkpointed = run(False), run(True)
    for name in plain:  # recomputing activations changes nothing in the step
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=1e-6)

    trainer = Trainer(trainer_config(gradient_checkpointing=True))
    with pytest.raises(ConfigError, match="training.gradient_checkpointing.*tabular_mlp"):
        trainer.fit(tabular(penguins), penguins.loaders()["train"])


def test_device_selection():
    assert Trainer(trainer_config(device="cpu")).device == torch.device("cpu")
    assert not torch.cuda.is_available()  # this suite runs on a CPU machine
    assert Trainer(trainer_config(device="auto")).device == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="training.device.*no CUDA"):
            Trainer(trainer_config(device=name))
    with pytest.raises(ConfigError, match="training.device: expected auto, cpu, cuda"):
        Trainer(trainer_config(device="tpu"))


def test_deterministic_runs_give_bit_identical_weights(tmp_path):
    overrides = [
        *QUIET,
        "training.epochs=2",
        "training.deterministic=true",
        "model.dropout=0.3",
        "training.scheduler.name=onecycle",
    ]
    first = train(EXAMPLE, overrides, runs_root=tmp_path)
    second = train(EXAMPLE, overrides, runs_root=tmp_path)
    assert first.run_dir != second.run_dir
    assert_identical(
        model_tensors(first.run_dir / "model"), model_tensors(second.run_dir / "model")
    )
    assert first.metrics == second.metrics


def test_precision_given_as_a_number_on_the_command_line():
    from mlp_train.config import TrainerConfig

    # `--set training.precision=32` is parsed as YAML: the integer 32.
    assert TrainerConfig.model_validate({"precision": 32}).precision == "32"
    with pytest.raises(ValueError, match="precision"):
        TrainerConfig.model_validate({"precision": 8})
