"""A training callback of the live dashboard test, loaded by `mlp train` from its config
(``training.callbacks: [{class: obs_callbacks.AwaitScrape, args: {...}}]``; the test puts this
folder on the subprocess's PYTHONPATH)."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from typing import Any

from mlp_train.callbacks import Callback


class AwaitScrape(Callback):
    """Holds each epoch's end until Prometheus has scraped that epoch's count: Prometheus then
    holds every epoch of the run however fast or slow the machine trains (the metrics logger,
    a default callback, has already recorded the epoch when this runs)."""

    def __init__(self, prometheus: str, timeout_s: float = 60.0) -> None:
        self.prometheus = prometheus.rstrip("/")
        self.timeout_s = timeout_s

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        query = f'mlp_training_epochs_total{{run="{trainer.run_name}"}} >= {epoch + 1}'
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url, timeout=10) as response:
                if json.load(response)["data"]["result"]:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"Prometheus did not scrape epoch {epoch + 1} in {self.timeout_s}s")
