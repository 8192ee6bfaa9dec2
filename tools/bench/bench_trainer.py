"""Per-epoch time of mlp's Trainer against a plain PyTorch loop and PyTorch Lightning's Trainer.

Not a test: it prints numbers measured side by side in one run.

    .venvs/train/bin/python tools/bench/bench_trainer.py [--rows 16384] [--batch-size 256]
        [--epochs 6] [--warmup 2] [--threads 1] [--profile]

All variants train the same model (mlp_models' ``tabular_mlp``, about 1M parameters), on the same
tensors through the same DataLoader (``TabularDataset`` + ``EpochSampler``), with the same batch
size, seed, optimizer (AdamW, lr 1e-3) and ``torch.set_num_threads``, on the CPU:

- ``plain``: the loop a person writes: set_epoch, forward, backward, step, ``loss.item()``.
- ``ours``: ``Trainer`` with ``progress: none`` and no run folder (no checkpoints, no metric files).
- ``lightning``: ``lightning.Trainer`` with logger, checkpointing, progress bar and model summary off.
- ``ours+extras``: ``Trainer`` with plain progress lines (to a null stream), metrics.jsonl/.csv and
  a best and a last checkpoint written each epoch into a temporary run folder.

Each variant runs in its own process (so that its peak RSS is its own) and stops at the start of
every epoch until the parent says go: epochs run one at a time, the variants interleaved in a
rotating order, never two at once. An epoch's time (wall, and the process's CPU time) runs from
the epoch-start hook to the epoch-end hook (the plain loop: from set_epoch to the last step).
The table gives the median of the epochs after the warm-up.

Lightning lives in its own environment so that mlp's never holds it. The script creates it when it
is missing (the same as running, from the repository root)::

    uv venv .venvs/bench-lightning --python 3.11
    uv pip install --python .venvs/bench-lightning/bin/python lightning torch==<torch of .venvs/train> \\
        -e packages/core -e packages/data -e packages/models -e packages/obs -e packages/train

``--profile`` instead runs ``ours`` alone under cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LIGHTNING_VENV = REPO_ROOT / ".venvs" / "bench-lightning"
VARIANTS = ("plain", "ours", "lightning", "ours+extras")
WORKSPACE_PACKAGES = ("core", "data", "models", "obs", "train")
LR = 1e-3
SEED = 0


# -- the shared workload ---------------------------------------------------------------------


def build(rows: int, batch_size: int):
    """The model, its DataLoader and the loader's sampler, identical in every variant."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from mlp_core import batch as keys
    from mlp_data.sampler import EpochSampler
    from mlp_data.tabular.dataset import TabularDataset, collate
    from mlp_models import create_model

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    features, classes = 64, 10
    data = TabularDataset(
        {
            keys.NUMERIC: rng.normal(size=(rows, features)).astype(np.float32),
            keys.TARGET: rng.integers(0, classes, size=rows).astype(np.int64),
        }
    )
    model = create_model(
        "tabular_mlp",
        num_numeric=features,
        num_classes=classes,
        hidden_sizes=[1024, 768, 256],
    )
    sampler = EpochSampler(rows, shuffle=True, seed=SEED)
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, collate_fn=collate)
    return model, loader, sampler


class Gate:
    """Waits for the parent's go at each epoch start; reports the epoch's time at its end."""

    def __init__(self) -> None:
        self.started = self.cpu_started = 0.0

    def start(self) -> None:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit(0)
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()

    def end(self) -> None:
        cpu = time.process_time() - self.cpu_started
        print(json.dumps({"epoch_s": time.perf_counter() - self.started, "cpu_s": cpu}), flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- the variants (each runs in its own process) ---------------------------------------------


def run_plain(args: argparse.Namespace, gate: Gate) -> None:
    import torch

    model, loader, sampler = build(args.rows, args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    for epoch in range(args.warmup + args.epochs):
        gate.start()
        sampler.set_epoch(epoch)
        model.train()
        total, count = 0.0, 0
        for batch in loader:
            result = model.training_step(batch)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            optimizer.step()
            total += result.loss.item() * len(result.targets)
            count += len(result.targets)
        gate.end()


def run_ours(args: argparse.Namespace, gate: Gate, *, extras: bool) -> None:
    from mlp_train.callbacks import Callback, ProgressPrinter
    from mlp_train.config import CheckpointConfig, OptimizerConfig, TrainerConfig
    from mlp_train.trainer import Trainer

    class Timing(Callback):
        def on_train_epoch_start(self, trainer, epoch: int) -> None:
            gate.start()

        def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
            gate.end()

    model, loader, _ = build(args.rows, args.batch_size)
    config = TrainerConfig(
        epochs=args.warmup + args.epochs,
        seed=SEED,
        device="cpu",
        progress="none",
        optimizer=OptimizerConfig(name="adamw", lr=LR, weight_decay=0.0),
        # The default monitor is val.loss; this loop has no validation set.
        checkpoint=CheckpointConfig(monitor="train.loss"),
    )
    callbacks: list = []
    with contextlib.ExitStack() as stack:
        run_dir = None
        if extras:
            run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ours-"))
            null = stack.enter_context(open(os.devnull, "w"))
            callbacks.append(ProgressPrinter("plain", stream=null, every_n_steps=10))
        callbacks.append(Timing())  # after the others: the epoch ends once they are done
        trainer = Trainer(config, run_dir=run_dir, callbacks=callbacks)
        trainer.fit(model, loader)


def run_lightning(args: argparse.Namespace, gate: Gate) -> None:
    import warnings

    import lightning as L
    import torch

    warnings.filterwarnings("ignore")  # "the dataloader does not have many workers", etc.
    model, loader, _ = build(args.rows, args.batch_size)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            result = self.model.training_step(batch)
            self.log("train.loss", result.loss, on_epoch=True, batch_size=len(result.targets))
            return result.loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.0)

    class Timing(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            gate.start()

        def on_train_epoch_end(self, trainer, module) -> None:
            gate.end()

    trainer = L.Trainer(
        max_epochs=args.warmup + args.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[Timing()],
    )
    trainer.fit(Module(), loader)


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    gate = Gate()
    if args.worker == "plain":
        run_plain(args, gate)
    elif args.worker == "lightning":
        run_lightning(args, gate)
    else:
        run_ours(args, gate, extras=args.worker == "ours+extras")
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}), flush=True)


# -- the parent ------------------------------------------------------------------------------


def lightning_python() -> Path:
    """The bench-lightning environment's python, created on first use."""
    python = LIGHTNING_VENV / "bin" / "python"
    if python.exists():
        return python
    import torch

    version = torch.__version__.split("+")[0]
    print(f"creating {LIGHTNING_VENV} (lightning, torch=={version}) ...", file=sys.stderr)
    subprocess.run(["uv", "venv", str(LIGHTNING_VENV), "--python", "3.11"], check=True)
    editable = [arg for name in WORKSPACE_PACKAGES for arg in ("-e", f"packages/{name}")]
    install = ["uv", "pip", "install", "--python", str(python), "lightning", f"torch=={version}"]
    subprocess.run(
        [*install, *editable],
        check=True,
        cwd=REPO_ROOT,
    )
    return python


class Worker:
    def __init__(self, variant: str, python: Path, args: argparse.Namespace) -> None:
        self.variant = variant
        command = [str(python), __file__, "--worker", variant]
        command += ["--rows", str(args.rows), "--batch-size", str(args.batch_size)]
        command += ["--epochs", str(args.epochs), "--warmup", str(args.warmup)]
        command += ["--threads", str(args.threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.epochs: list[float] = []
        self.cpu: list[float] = []
        self.peak_rss_mib = float("nan")

    def _line(self) -> str:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"{self.variant} worker ended early (exit {self.process.wait()})")
        return line.strip()

    def wait_ready(self) -> None:
        while (line := self._line()) != "ready":
            print(f"[{self.variant}] {line}", file=sys.stderr)

    def run_epoch(self) -> float:
        self.process.stdin.write("go\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        while not (line := self._line()).startswith("{"):
            print(f"[{self.variant}] {line}", file=sys.stderr)
        times = json.loads(line)
        self.epochs.append(times["epoch_s"])
        self.cpu.append(times["cpu_s"])
        return times["epoch_s"]

    def finish(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        for line in self.process.stdout:  # type: ignore[union-attr]
            if line.startswith('{"peak_rss_mib"'):
                self.peak_rss_mib = json.loads(line)["peak_rss_mib"]
        self.process.wait()


def bench(args: argparse.Namespace) -> None:
    pythons = {v: Path(sys.executable) for v in VARIANTS}
    pythons["lightning"] = lightning_python()
    started = time.perf_counter()
    workers = [Worker(variant, pythons[variant], args) for variant in VARIANTS]
    try:
        for worker_ in workers:
            worker_.wait_ready()
        total = args.warmup + args.epochs
        for epoch in range(total):
            shift = epoch % len(workers)
            for worker_ in workers[shift:] + workers[:shift]:
                worker_.run_epoch()
                if epoch + 1 < total:
                    worker_.wait_ready()
    finally:
        for worker_ in workers:
            worker_.finish()
    report(workers, args, time.perf_counter() - started)


def report(workers: list[Worker], args: argparse.Namespace, seconds: float) -> None:
    import torch

    medians = {w.variant: statistics.median(w.epochs[args.warmup :]) for w in workers}
    cpu = {w.variant: statistics.median(w.cpu[args.warmup :]) for w in workers}
    plain, plain_cpu = medians["plain"], cpu["plain"]
    steps = -(-args.rows // args.batch_size)
    print(
        f"\n{args.rows} rows, batch {args.batch_size} ({steps} steps/epoch), tabular_mlp ~1M "
        f"params, torch {torch.__version__}, {args.threads} thread(s), CPU; median of "
        f"{args.epochs} epochs after {args.warmup} warm-up, interleaved ({seconds:.0f}s in all)\n"
    )
    print(
        f"{'variant':<13} {'wall s':>7} {'vs plain':>9} {'CPU s':>7} {'vs plain':>9} "
        f"{'CPU ms/step':>12} {'peak RSS MiB':>13}"
    )
    for worker_ in workers:
        wall, used = medians[worker_.variant], cpu[worker_.variant]
        print(
            f"{worker_.variant:<13} {wall:>7.3f} {wall / plain:>9.3f} {used:>7.3f} "
            f"{used / plain_cpu:>9.3f} {1000 * used / steps:>12.2f} {worker_.peak_rss_mib:>13.0f}"
        )
    print(
        "\nwall: epoch wall time; CPU: the process's CPU time in the epoch (steadier on a shared "
        "machine: other processes do not add to it)"
    )
    for name, values in (("wall", "epochs"), ("CPU", "cpu")):
        spread = {
            w.variant: [round(s, 3) for s in getattr(w, values)[args.warmup :]] for w in workers
        }
        print(f"all measured epochs, {name} s: {json.dumps(spread)}")


def profile(args: argparse.Namespace) -> None:
    """``ours`` alone under cProfile, with the gate opened by a feeder thread."""
    import threading

    read, write = os.pipe()
    sys.stdin = os.fdopen(read)
    feeder = os.fdopen(write, "w")

    def feed() -> None:
        for _ in range(args.warmup + args.epochs):
            feeder.write("go\n")
            feeder.flush()

    threading.Thread(target=feed, daemon=True).start()
    import torch

    # Imported first, so that the profile shows the loop rather than the imports.
    import mlp_data.tabular.dataset  # noqa: F401
    import mlp_models  # noqa: F401
    import mlp_train.trainer  # noqa: F401

    torch.set_num_threads(args.threads)
    profiler = cProfile.Profile()
    with contextlib.redirect_stdout(io.StringIO()):
        profiler.runcall(run_ours, args, Gate(), extras=False)
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=6, help="measured epochs per variant")
    parser.add_argument("--warmup", type=int, default=2, help="epochs run first and not counted")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads everywhere")
    parser.add_argument("--profile", action="store_true", help="cProfile ours instead")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    elif args.profile:
        profile(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
