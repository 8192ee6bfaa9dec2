# syntax=docker/dockerfile:1
# mlp train on NVIDIA GPUs (CPU without one): mlp-train, the ONNX exporter (mlp-serve[export]) and
# GPU metrics (mlp-obs[gpu]); runs are tracked in MLflow (MLFLOW_TRACKING_URI).
#
#   docker build -f deploy/docker/train.Dockerfile -t mlp-train .
#   docker run --rm --gpus all -v "$PWD/examples:/workspace/examples:ro" -v "$PWD/models:/models" \
#       mlp-train mlp-train-and-export examples/penguins /models penguins
#
# No CUDA base image: torch's Linux wheels from PyPI bring the CUDA runtime, cuDNN and NCCL as
# NVIDIA wheels; the host needs only the driver and the NVIDIA Container Toolkit.
# Multi-node DDP: `torchrun --nnodes N ... -m mlp_core.cli train CONFIG` in this image.
#
# Not installed: the `yolo` extra. It would add ultralytics, which is AGPL-3.0 (an image that
# ships it is a distribution under that licence), and mlp has no YOLO model to train with it yet.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# -- builder: the six mlp wheels from this checkout, and the lock's third-party wheels ----------
FROM ${PYTHON_IMAGE} AS wheelhouse
COPY --from=uv /uv /uvx /usr/local/bin/
ENV UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=cache,target=/root/.cache/pip \
    uv build --all-packages --wheel --out-dir /dist --quiet \
    && deploy/docker/wheelhouse.sh /wheelhouse /dist \
        --package mlp-train --package mlp-serve --package mlp-obs --extra export --extra gpu

# -- the image: a venv installed from the wheelhouse alone, run as a non-root user -------------
FROM ${PYTHON_IMAGE}
# The same user id as the serve images, so that both write and read the model repository volume.
RUN useradd --create-home --no-log-init --uid 10001 --user-group --shell /usr/sbin/nologin mlp \
    && mkdir /models /runs /workspace \
    && chown mlp:mlp /models /runs /workspace
RUN --mount=type=bind,from=uv,source=/uv,target=/usr/local/bin/uv \
    --mount=type=bind,from=wheelhouse,source=/wheelhouse,target=/wheelhouse \
    uv venv --quiet --python /usr/local/bin/python3 /opt/mlp \
    && uv pip install --python /opt/mlp/bin/python --no-index --find-links /wheelhouse --no-cache mlp-train 'mlp-serve[export]' 'mlp-obs[gpu]'
COPY --chmod=755 deploy/docker/train_and_export.sh /usr/local/bin/mlp-train-and-export

ENV PATH=/opt/mlp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /workspace
# training.prometheus.port: the mlp_training_* metrics while a run trains (compose uses 9400).
EXPOSE 9400
# A batch job: its health is its exit status, and Prometheus watches its metrics.
HEALTHCHECK NONE
ENTRYPOINT ["mlp"]
CMD ["train", "--help"]
