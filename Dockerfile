# syntax=docker/dockerfile:1
#
# aecluster: one image for the service (the default, `python -m service`) and for training
# (`python -m training ...` given as the command). CPU or GPU is chosen by build argument:
#
#   docker build --build-arg VARIANT=cpu -t registry.example.com/aecluster:0.1.0-cpu .
#   docker build --build-arg VARIANT=gpu -t registry.example.com/aecluster:0.1.0-gpu .
#
# GPU: the `gpu` extra of pyproject.toml (`tensorflow[and-cuda]`, same TensorFlow version)
# installs CUDA and cuDNN as pip wheels, so both variants share one base image, one Python
# 3.11 and one dependency list; the node only provides the NVIDIA driver, which the NVIDIA
# container toolkit mounts into the container. TensorFlow's own tensorflow/tensorflow:2.21.0-gpu
# is not the base because it runs the distribution's python3 with TensorFlow in the system
# site-packages rather than the Python 3.11 that pyproject.toml requires.
#
# Stages: `python` (shared base) -> `build` (venv: dependencies, then the code) ->
# `runtime-cpu` | `runtime-gpu` -> `runtime` (the venv only, non-root).

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# One base for build and runtime: the venv's interpreter links point into it.
FROM ${PYTHON_IMAGE} AS python
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1


FROM python AS build
ARG VARIANT
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependency layer: only pyproject.toml goes in, so code changes reuse this (large) layer.
# The requirement list is read from pyproject.toml itself ([project] dependencies plus the
# `gpu` extra for VARIANT=gpu); an unknown VARIANT fails the build here with a KeyError.
COPY pyproject.toml ./
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extra = {'cpu': [], 'gpu': p['optional-dependencies']['gpu']}[sys.argv[1]]; print('\n'.join(p['dependencies'] + extra))" "${VARIANT}" > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
# Code layer: the two packages (README.md is the distribution's readme). --no-deps: every
# dependency is already in the layer above, so nothing is resolved or downloaded again.
COPY README.md ./
COPY service ./service
COPY training ./training
RUN pip install --no-cache-dir --no-deps .


FROM python AS runtime-cpu

FROM python AS runtime-gpu
# What nvidia/cuda images declare: the driver libraries the NVIDIA container toolkit mounts.
# Which GPUs are visible is left to `docker run --gpus` or the Kubernetes device plugin.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility


# DL3006 ("tag the version of an image") is a false positive here: runtime-${VARIANT} names
# one of the two stages above, not an image from a registry; hadolint does not expand ARGs.
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="aecluster" \
      org.opencontainers.image.description="Group images without labels: autoencoder + k-means, served over HTTP and gRPC" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0-${VARIANT}"
# A fixed numeric UID/GID so Kubernetes' runAsNonRoot can verify it and fsGroup matches it.
RUN groupadd --system --gid 10001 aecluster \
    && useradd --system --no-log-init --uid 10001 --gid aecluster \
        --home-dir /home/aecluster --create-home --shell /usr/sbin/nologin aecluster \
    && mkdir /models
COPY --from=build /opt/venv /opt/venv
# The root filesystem may be read-only (Kubernetes): byte code is compiled at install time,
# and the caches Keras and matplotlib would put in $HOME go to /tmp (an emptyDir there).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    AEC_MODEL_REPO=/models
WORKDIR /home/aecluster
USER 10001:10001
# HTTP (REST, /metrics, /healthz, /readyz) and gRPC: TensorFlow Serving's ports.
EXPOSE 8501 8500
# Liveness for Docker and Compose (Kubernetes uses the probes of k8s/base instead). The slim
# base has no curl; urlopen raises on anything but 2xx, which makes the exit status 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('AEC_HTTP_PORT', '8501') + '/healthz', timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
