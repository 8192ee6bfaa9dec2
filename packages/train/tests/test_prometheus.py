"""`mlp train` with ``training.prometheus`` exposes the mlp_training_* metrics: scraped over
HTTP while it trains, and written to a text file that outlives the run."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from train_helpers import EXAMPLE, QUIET, last_line, read_rows

from mlp_core.cli import main
from mlp_core.errors import ConfigError
from mlp_train.run import train

EPOCHS = 3
STEPS_PER_EPOCH = 7  # the penguins example's training split at batch size 32


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def samples(
    text: str, run: str, rank: str = "0"
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, labels other than run and rank) -> value, for the samples of ``run`` and ``rank``
    (every sample of a training exposition carries its rank)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert "rank" in labels, sample
            if labels.pop("run", None) == run and labels.pop("rank") == rank:
                found[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return found


def test_mlp_train_serves_and_writes_the_training_metrics(tmp_path, capsys):
    port, textfile, scrapes = free_port(), tmp_path / "training.prom", tmp_path / "scrapes.jsonl"
    callback = {
        "class": "train_helpers.Scraper",
        "args": {"url": f"http://127.0.0.1:{port}/metrics", "path": str(scrapes)},
    }
    code = main(
        [
            "train",
            str(EXAMPLE),
            "--run-dir",
            str(tmp_path / "runs"),
            *[arg for item in QUIET for arg in ("--set", item)],
            "--set",
            f"training.epochs={EPOCHS}",
            "--set",
            "training.early_stopping=null",
            "--set",
            f"training.prometheus={{port: {port}, textfile: {textfile}}}",
            "--set",
            f"training.callbacks=[{json.dumps(callback)}]",
        ]
    )
    assert code == 0
    run = Path(last_line(capsys.readouterr().out)).name

    # Scraped over HTTP after each epoch: the counters grow epoch by epoch.
    bodies = [json.loads(line) for line in scrapes.read_text().splitlines()]
    assert len(bodies) == EPOCHS
    for epoch, body in enumerate(bodies, start=1):
        seen = samples(body, run)
        assert seen[("mlp_training_epochs_total", ())] == epoch
        assert seen[("mlp_training_steps_total", ())] == epoch * STEPS_PER_EPOCH
        assert seen[("mlp_training_epoch_duration_seconds_count", ())] == epoch
        assert seen[("mlp_training_samples_per_second", ())] > 0

    # The text file holds the final values, and the epoch's losses and metrics match the run's
    # own metrics.jsonl.
    final = samples(textfile.read_text(), run)
    last = read_rows(tmp_path / "runs" / run / "metrics.jsonl")[-1]
    assert final[("mlp_training_epochs_total", ())] == EPOCHS
    assert final[("mlp_training_loss", (("split", "train"),))] == pytest.approx(last["train.loss"])
    assert final[("mlp_training_loss", (("split", "val"),))] == pytest.approx(last["val.loss"])
    accuracy = ("mlp_training_metric", (("metric", "accuracy"), ("split", "val")))
    assert final[accuracy] == pytest.approx(last["val.accuracy"])

    # The server is gone once the run has finished.
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_a_prometheus_section_needs_a_port_or_a_textfile(tmp_path):
    with pytest.raises(ConfigError, match="set port .* textfile"):
        train(EXAMPLE, [*QUIET, "training.prometheus={address: 0.0.0.0}"], runs_root=tmp_path)
