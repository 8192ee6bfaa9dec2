"""Experiment tracking: every run recorded in its folder, and in MLflow when installed.

tracker = create_tracker(run_dir)
tracker.start_run("penguins", experiment="tabular")
with tracker:
    tracker.log_params(config)
    tracker.log_metrics({"val.loss": 0.31}, step=1)
"""

from mlp_obs.tracking.base import END_STATUSES, FAILED, FINISHED, KILLED, ExperimentTracker
from mlp_obs.tracking.composite import CompositeTracker
from mlp_obs.tracking.defaults import default_tags, tracking_uri
from mlp_obs.tracking.factory import BACKENDS, create_tracker
from mlp_obs.tracking.jsonl_tracker import JsonlTracker, read_events, tracked_run_id
from mlp_obs.tracking.mlflow_tracker import MlflowTracker

__all__ = [
    "BACKENDS",
    "END_STATUSES",
    "FAILED",
    "FINISHED",
    "KILLED",
    "CompositeTracker",
    "ExperimentTracker",
    "JsonlTracker",
    "MlflowTracker",
    "create_tracker",
    "default_tags",
    "read_events",
    "tracked_run_id",
    "tracking_uri",
]
