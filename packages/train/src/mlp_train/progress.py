"""Where a training loop is: the counters the trainer advances and callbacks read.

One object (Lightning keeps its loop counters the same way, in ``loops/progress.py``) so that a
checkpoint saves them together and a resume restores them together; callbacks read them as
``trainer.progress.step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class Progress:
    epoch: int = 0  # the epoch running now, from 0
    start_epoch: int = 0  # the first epoch of this fit (later than 0 after a resume)
    step: int = 0  # optimizer steps taken, over all epochs
    batch_in_epoch: int = 0  # batches of this epoch that reached an optimizer step
    steps_per_epoch: int = 0  # optimizer steps in a whole epoch
    # Steps of this epoch done before a resume (a progress bar starts there).
    resumed_steps_in_epoch: int = 0
    last_step_samples: int = 0  # samples that went into the latest optimizer step
    # Training and validation of the epoch are done: a checkpoint now resumes at the next one.
    at_epoch_end: bool = False

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.at_epoch_end = False

    def end_epoch(self) -> None:
        self.at_epoch_end = True
        self.batch_in_epoch = 0
        self.resumed_steps_in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        """Where a resume starts: the next epoch after an epoch end, else mid-epoch."""
        if self.at_epoch_end:
            return {"epoch": self.epoch + 1, "step": self.step, "batch_in_epoch": 0}
        return {"epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, Any], *, accumulate_grad_batches: int) -> None:
        self.start_epoch = self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.resumed_steps_in_epoch = math.ceil(self.batch_in_epoch / accumulate_grad_batches)
        self.at_epoch_end = False
