"""The prediction-task vocabulary and the one translation from a data target's kind."""

from __future__ import annotations

import pytest

from mlp_core.errors import ConfigError
from mlp_core.tasks import TASKS, prediction_task


def test_every_target_kind_the_trainer_handles_becomes_a_task():
    assert TASKS == ("binary", "multiclass", "regression")
    # Classes always get a softmax head, also two of them: that is what `mlp train` trains.
    assert prediction_task("classification") == "multiclass"
    assert prediction_task("regression") == "regression"


def test_a_target_without_a_head_is_a_config_error():
    with pytest.raises(ConfigError, match="no prediction task for 'detection' data"):
        prediction_task("detection")
