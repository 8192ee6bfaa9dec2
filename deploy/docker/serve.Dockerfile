# syntax=docker/dockerfile:1
# mlp serve on the CPU: REST 8000 and gRPC 8001 (Open Inference Protocol), no torch.
#
#   docker build -f deploy/docker/serve.Dockerfile -t mlp-serve .
#   docker run --rm --stop-timeout 40 -p 8000:8000 -p 8001:8001 -v "$PWD/models:/models:ro" mlp-serve
#
# On SIGTERM the server stops taking requests and drains those in flight for up to
# --drain-seconds (30 by default) before it exits: give the container a stop grace longer than
# that (`docker run --stop-timeout 40`, compose `stop_grace_period: 40s`, Kubernetes
# terminationGracePeriodSeconds), or Docker's default 10 s kills requests mid-flight.
#
# The install stage is what tools/ci/wheel_check.sh runs outside Docker: the same wheelhouse
# script and the same `uv pip install --no-index` line (tests/deploy/test_images.py keeps the two
# in step).

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
    && deploy/docker/wheelhouse.sh /wheelhouse /dist --package mlp-serve

# -- the image: a venv installed from the wheelhouse alone, run as a non-root user -------------
FROM ${PYTHON_IMAGE}
RUN useradd --create-home --no-log-init --uid 10001 --user-group --shell /usr/sbin/nologin mlp \
    && mkdir /models \
    && chown mlp:mlp /models
RUN --mount=type=bind,from=uv,source=/uv,target=/usr/local/bin/uv \
    --mount=type=bind,from=wheelhouse,source=/wheelhouse,target=/wheelhouse \
    uv venv --quiet --python /usr/local/bin/python3 /opt/mlp \
    && uv pip install --python /opt/mlp/bin/python --no-index --find-links /wheelhouse --no-cache mlp-serve

# ORT_DISABLE_TELEMETRY: onnxruntime sends nothing anywhere. MLP_HEALTH_URL is what the
# HEALTHCHECK asks; change it with the port.
ENV PATH=/opt/mlp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    MLP_HEALTH_URL=http://127.0.0.1:8000/v2/health/ready

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/mlp
EXPOSE 8000 8001
STOPSIGNAL SIGTERM
# Ready means the server runs and holds at least one loaded model (every --model named). There is
# no curl in a slim image: Python's urllib does it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['MLP_HEALTH_URL'], timeout=2).status == 200 else 1)"]
ENTRYPOINT ["mlp", "serve"]
CMD ["/models", "--host", "0.0.0.0", "--http-port", "8000", "--grpc-port", "8001"]
