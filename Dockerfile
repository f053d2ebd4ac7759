# syntax=docker/dockerfile:1
#
# aecluster: two images from one Dockerfile, each CPU or GPU by build argument.
#
# The service (the default target, what the Deployment runs: `python -m service`). It holds
# the service's dependencies and the `service` package only, no training code:
#
#   docker build --build-arg VARIANT=cpu -t registry.example.com/aecluster:0.1.0-cpu .
#   docker build --build-arg VARIANT=gpu -t registry.example.com/aecluster:0.1.0-gpu .
#
# Training (the `train` target, what k8s/training-job.yaml runs: `python -m training ...`).
# The service's install plus the `train` extra and the `training` package:
#
#   docker build --build-arg VARIANT=gpu --target train -t registry.example.com/aecluster-train:0.1.0-gpu .
#   docker build --build-arg VARIANT=cpu --target train -t registry.example.com/aecluster-train:0.1.0-cpu .
#
# Nothing is resolved at build time: each image installs a committed lock of requirements/
# (`make lock`; every package at an exact version and sha256, installed with --require-hashes
# --no-deps), serve-${VARIANT}.txt and, for training, train-${VARIANT}.txt on top of it (a
# superset at the same versions, so only the difference is installed). The locks carry
# setuptools, which builds the project without build isolation (nothing downloaded).
#
# GPU: the `gpu` extra of pyproject.toml (`tensorflow[and-cuda]`, same TensorFlow version)
# installs CUDA and cuDNN as pip wheels, so both variants share one base image and one Python
# 3.11; the node only provides the NVIDIA driver, which the NVIDIA container toolkit mounts
# into the container. TensorFlow's own tensorflow/tensorflow:2.21.0-gpu is not the base
# because it runs the distribution's python3 with TensorFlow in the system site-packages
# rather than the Python 3.11 that pyproject.toml requires.
#
# Stages: `python` (shared base) -> `serve-deps` (venv: the serve lock) -> `serve-build`
# (+ the service package) | `train-build` (+ the train lock, both packages);
# `runtime-cpu` | `runtime-gpu` -> `runtime` (user, labels, environment) -> `train` (the
# train venv) | `serve` (the serve venv; last, so the default target).

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# One base for build and runtime: the venv's interpreter links point into it.
FROM ${PYTHON_IMAGE} AS python
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1


# Dependency layer: only the lock goes in, so code changes reuse this (large) layer. An
# unknown VARIANT has no lock file, and the COPY fails the build.
FROM python AS serve-deps
ARG VARIANT
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/serve-${VARIANT}.txt requirements/
RUN pip install --no-cache-dir --require-hashes --no-deps -r "requirements/serve-${VARIANT}.txt"


# The service's code: the `service` package only (setuptools' find finds no `training` here).
# README.md is the distribution's readme. --no-deps: every dependency is in the layer above;
# --no-build-isolation: the lock's setuptools builds it, nothing is downloaded.
FROM serve-deps AS serve-build
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-cache-dir --no-deps --no-build-isolation .


# Training: the train lock on top of the serve lock's venv (the same versions: pip keeps what
# is installed and adds the `train` extra's packages), then both packages.
FROM serve-deps AS train-build
ARG VARIANT
COPY requirements/train-${VARIANT}.txt requirements/
RUN pip install --no-cache-dir --require-hashes --no-deps -r "requirements/train-${VARIANT}.txt"
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN pip install --no-cache-dir --no-deps --no-build-isolation .


FROM python AS runtime-cpu

FROM python AS runtime-gpu
# What nvidia/cuda images declare: the driver libraries the NVIDIA container toolkit mounts.
# Which GPUs are visible is left to `docker run --gpus` or the Kubernetes device plugin.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility


# What both images share: the user, the labels, the environment (the venv comes after).
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


# The training Job's image (`--target train`): the full install. Arguments are the training
# CLI's, e.g. `train --dataset digits --out /models/digits/1`.
FROM runtime AS train
LABEL org.opencontainers.image.title="aecluster-train" \
      org.opencontainers.image.description="Group images without labels: trains the autoencoder + k-means bundles aecluster serves"
COPY --from=train-build /opt/venv /opt/venv
ENTRYPOINT ["python", "-m", "training"]


# The service's image: the default target, so it must stay the last stage.
FROM runtime AS serve
COPY --from=serve-build /opt/venv /opt/venv
# HTTP (REST, /metrics, /healthz, /readyz) and gRPC: TensorFlow Serving's ports.
EXPOSE 8501 8500
# Liveness for Docker and Compose (Kubernetes uses the probes of k8s/base instead). The slim
# base has no curl; urlopen raises on anything but 2xx, which makes the exit status 1. The
# plain-HTTP operations port when there is one: with TLS the HTTP port speaks TLS only.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + (os.environ.get('AEC_OPERATIONS_PORT') or os.environ.get('AEC_HTTP_PORT', '8501')) + '/healthz', timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
