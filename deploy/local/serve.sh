#!/usr/bin/env bash
# The api process of the local stack (deploy/local/Procfile; run by honcho from the repository
# root): mlp serve on MLP_STACK_MODELS. When that repository holds no model yet, it first trains a
# tiny penguins run tracked in the stack's own MLflow and exports it there (bootstrap.py), so that
# a fresh stack has a model to serve, a run to look at and metrics to scrape.
set -euo pipefail

repo=$MLP_STACK_MODELS
if ! compgen -G "$repo/*/*/model.onnx" >/dev/null; then
    echo "serve.sh: $repo holds no model: training and exporting a tiny penguins model first"
    export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLP_STACK_MLFLOW_PORT"
    python deploy/local/bootstrap.py "$MLFLOW_TRACKING_URI" "$MLP_STACK_DIR/runs" "$repo"
fi

# --drain-seconds 3: honcho sends SIGKILL 5 s after its SIGTERM.
exec mlp serve "$repo" --host 127.0.0.1 --http-port "$MLP_STACK_HTTP_PORT" \
    --grpc-port "$MLP_STACK_GRPC_PORT" --drain-seconds 3
