"""Choose the devices training runs on and the matching ``tf.distribute`` strategy.

Call :func:`configure_devices` first thing, before any model or tensor exists: TensorFlow
fixes the visible devices and their memory policy when it initialises its runtime.
"""

from __future__ import annotations

import json
import logging
import os
import re

import keras
import tensorflow as tf

from training.errors import ConfigError

logger = logging.getLogger(__name__)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|gpu)(?::(\d+(?:,\d+)*))?$")


def configure_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's kernels deterministic.

    Same seed, data, code and hardware then give the same bundle, bit for bit. Without it,
    multi-threaded kernels (reductions, and most GPU kernels) may add floating-point
    numbers in a different order on every run, and a long training run amplifies those
    last-bit differences into different weights. The switch is process-wide and cannot be
    undone; it costs speed (most on GPUs), and an op with no deterministic kernel raises
    instead of running.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    logger.info("deterministic kernels on (tf.config.experimental.enable_op_determinism), "
                "seed %d", seed)


def configure_devices(device: str = "auto", *, memory_growth: bool = True) -> list[str]:
    """Make only the requested devices visible and return the logical device names in use.

    ``device``: ``"auto"`` uses every GPU if there is one, else the CPU; ``"cpu"`` hides
    the GPUs; ``"gpu"`` uses every GPU and ``"gpu:0,1"`` those indices. A GPU that is not
    there raises :class:`ConfigError`. With ``memory_growth`` the GPUs in use allocate
    memory as needed instead of all at once, so other processes can share them.
    """
    match = _DEVICE_PATTERN.match(device.strip().lower())
    if match is None or (match.group(1) != "gpu" and match.group(2) is not None):
        raise ConfigError(f"device {device!r} is not understood: use 'auto', 'cpu', 'gpu' or "
                          "'gpu:0,1' (GPU indices)")
    kind, indices = match.group(1), match.group(2)
    gpus = tf.config.list_physical_devices("GPU")
    if kind == "cpu":
        wanted = []
    elif kind == "auto":
        wanted = gpus
    else:
        if not gpus:
            raise ConfigError(f"device {device!r} asks for a GPU but TensorFlow sees none: use "
                              "device 'cpu' or 'auto', or check the CUDA driver and that "
                              "tensorflow[and-cuda] is installed")
        wanted = gpus if indices is None else _pick(gpus, indices, device)

    if tf.config.get_visible_devices("GPU") != wanted:
        try:
            tf.config.set_visible_devices(wanted, "GPU")
        except RuntimeError as exc:
            raise ConfigError(f"cannot switch to device {device!r}: TensorFlow has already "
                              "initialised its devices; configure devices before building "
                              "models or datasets") from exc
    if memory_growth:
        for gpu in wanted:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                # Already initialised: the setting it started with stays; not worth failing for.
                logger.warning("memory growth could not be enabled on %s: TensorFlow was "
                               "initialised before configure_devices", gpu.name)

    # Named, not listed: list_logical_devices() would initialise the runtime, after which
    # MultiWorkerMirroredStrategy can no longer configure its collective ops. Visible GPUs
    # are renumbered from 0 in the logical space.
    names = [f"/device:GPU:{i}" for i in range(len(wanted))] if wanted else ["/device:CPU:0"]
    logger.info("training on %s", ", ".join(names))
    return names


def _pick(gpus: list[tf.config.PhysicalDevice], indices: str,
          device: str) -> list[tf.config.PhysicalDevice]:
    chosen = []
    for index in dict.fromkeys(int(i) for i in indices.split(",")):
        if index >= len(gpus):
            raise ConfigError(f"device {device!r} names GPU {index}, but only {len(gpus)} GPU(s) "
                              f"are visible (indices 0..{len(gpus) - 1})")
        chosen.append(gpus[index])
    return chosen


def worker_count(tf_config: str | None = None) -> int:
    """Workers (chief included) that ``TF_CONFIG`` describes; 1 when it is unset or empty."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw.strip():
        return 1
    try:
        parsed = json.loads(raw)
        cluster = parsed.get("cluster", {})
        return max(1, sum(len(cluster.get(role, [])) for role in ("chief", "worker")))
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise ConfigError(
            "TF_CONFIG is not valid: expected JSON like {\"cluster\": {\"worker\": "
            "[\"host:port\", ...]}, \"task\": {\"type\": \"worker\", \"index\": 0}}"
        ) from exc


def is_chief(tf_config: str | None = None) -> bool:
    """Whether this process writes the results of a multi-worker run.

    The chief is task ``chief``, or worker 0 when the cluster has no chief; a single
    process (no ``TF_CONFIG``) is its own chief.
    """
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if worker_count(raw) <= 1:
        return True
    parsed = json.loads(raw)
    task = parsed.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and not parsed.get("cluster", {}).get("chief")


def select_strategy(devices: list[str]) -> tf.distribute.Strategy:
    """The distribution strategy for ``devices`` (as returned by :func:`configure_devices`).

    Several workers in ``TF_CONFIG``: ``MultiWorkerMirroredStrategy``; more than one GPU:
    ``MirroredStrategy`` over them; otherwise the default (no-op) strategy. Build models
    inside ``strategy.scope()``.
    """
    gpus = [d for d in devices if "GPU" in d.upper()]
    workers = worker_count()
    if workers > 1:
        logger.info("multi-worker training: %d workers, %d local GPU(s)", workers, len(gpus))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(gpus) > 1:
        logger.info("mirrored training on %d GPUs", len(gpus))
        return tf.distribute.MirroredStrategy(devices=gpus)
    return tf.distribute.get_strategy()
