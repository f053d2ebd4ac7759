"""Device selection and distribution strategies (this suite runs where there is no GPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tensorflow as tf

from training.devices import configure_devices, select_strategy, worker_count
from training.errors import ConfigError

no_gpu = pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")),
                            reason="checks the behaviour of a machine without GPUs")


@no_gpu
@pytest.mark.parametrize("device", ["cpu", "auto", " CPU "])
def test_cpu_and_auto_without_gpu(device: str) -> None:
    assert configure_devices(device) == ["/device:CPU:0"]
    assert tf.config.get_visible_devices("GPU") == []


@no_gpu
@pytest.mark.parametrize("device", ["gpu", "gpu:0", "GPU:0,1"])
def test_gpu_requested_without_gpu(device: str) -> None:
    with pytest.raises(ConfigError, match="sees none"):
        configure_devices(device)


@pytest.mark.parametrize("device", ["tpu", "cpu:1", "gpu:", "gpu:a", "auto:0", ""])
def test_unknown_device_strings(device: str) -> None:
    with pytest.raises(ConfigError, match="not understood"):
        configure_devices(device)


@pytest.mark.parametrize(
    ("tf_config", "workers"),
    [
        ("", 1),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}), 1),
        (json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"index": 1}}), 2),
        (json.dumps({"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]}}), 3),
        (json.dumps({"cluster": {"ps": ["p:1"], "worker": ["a:1"]}}), 1),
    ],
)
def test_worker_count(tf_config: str, workers: int) -> None:
    assert worker_count(tf_config) == workers


@pytest.mark.parametrize("tf_config", ["{not json", "[1, 2]", json.dumps({"cluster": [1]})])
def test_malformed_tf_config(tf_config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        worker_count(tf_config)
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        select_strategy(["/device:CPU:0"])


@pytest.mark.parametrize("tf_config", [None, json.dumps({"cluster": {"worker": ["a:1"]}})])
def test_default_strategy_on_one_device(tf_config: str | None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    strategy = select_strategy(["/device:CPU:0"])
    assert strategy is tf.distribute.get_strategy()
    assert not tf.distribute.has_strategy()  # the default one, not a scope someone entered
    assert strategy.num_replicas_in_sync == 1


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


WORKER = """
    import json
    import numpy as np, tensorflow as tf
    from sklearn.datasets import load_digits
    from training.devices import configure_devices, select_strategy
    from training.config import AutoencoderConfig
    from training.models import build_autoencoder, fit_autoencoder, train_feature_classifier

    strategy = select_strategy(configure_devices("cpu"))
    assert type(strategy).__name__ == "CollectiveAllReduceStrategy", type(strategy)
    digits = load_digits()
    x = (digits.images[:384] / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    data = tf.data.Dataset.from_tensor_slices((x, digits.target[:384])).batch(64)
    with strategy.scope():
        extractor = train_feature_classifier(data, None, (8, 8, 1), 10, epochs=1, seed=0)
        config = AutoencoderConfig(kind="vae", loss="perceptual", dense_units=(16,),
                                   conv_filters=(8, 8), latent_dim=4)
        model = build_autoencoder(config, (8, 8, 1), feature_extractor=extractor)
    history = fit_autoencoder(model, data, data, epochs=2)
    print("HISTORY " + json.dumps(history), flush=True)
"""


@pytest.mark.slow
def test_two_workers_train_together_from_tf_config(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    repo = Path(__file__).resolve().parents[2]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = {**os.environ, "TF_CONFIG": tf_config, "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": str(repo)}
        procs.append(subprocess.Popen([sys.executable, str(script)], cwd=repo, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(out)
    finally:
        for proc in procs:  # a worker whose peer died waits forever: do not leak it
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    histories = [json.loads(line.split(" ", 1)[1]) for out in outputs
                 for line in out.splitlines() if line.startswith("HISTORY ")]
    assert len(histories) == 2
    # Metrics are aggregated over both workers' shards, so both report the same history.
    assert histories[0] == histories[1]
    assert {"loss", "val_loss", "kl_loss"} <= set(histories[0])


@pytest.mark.parametrize(
    ("tf_config", "chief"),
    [
        ("", True),
        ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}', True),
        ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}', False),
        ('{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, '
         '"task": {"type": "chief", "index": 0}}', True),
        ('{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, '
         '"task": {"type": "worker", "index": 0}}', False),
    ],
)
def test_only_the_chief_writes_the_bundle(tf_config: str, chief: bool) -> None:
    from training.devices import is_chief

    assert is_chief(tf_config) is chief
