#!/usr/bin/env bash
# Train a config, then export the run into a model repository that `mlp serve` watches: the
# train image's `mlp-train-and-export` command and compose's `train` job.
#
# usage: mlp-train-and-export CONFIG REPO NAME [mlp train options...]
#   e.g. mlp-train-and-export /workspace/examples/penguins /models penguins --set training.epochs=20
#
# The run is tracked wherever MLFLOW_TRACKING_URI points, and the export logs the ONNX model to
# the same run. The server picks the new version up on its next poll (serve.poll_seconds).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: mlp-train-and-export CONFIG REPO NAME [mlp train options...]" >&2
    exit 2
fi
config=$1 repo=$2 name=$3
shift 3

# `mlp train` prints the run folder last; its output still reaches the log through stderr.
run=$(mlp train "$config" "$@" | tee /dev/stderr | tail -n 1)
if [ ! -f "$run/config.yaml" ]; then
    echo "mlp train did not end with a run folder (got: '$run')" >&2
    exit 1
fi
exec mlp export "$run" --repo "$repo" --name "$name"
