"""Signing versions: `train --signing-key`, `python -m training sign`, inside the atomic export."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service import bundle
from service.signature import SignatureError, Verifier, load_keys
from tests.keys import KeyPair
from tests.service.bundles import clone_version
from training import export
from training.cli import main
from training.signing import Signer, SigningError


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _verifier(*keys: KeyPair) -> Verifier:
    return Verifier(load_keys(",".join(str(k.public) for k in keys)))


def test_train_with_a_signing_key_writes_a_signed_version_the_service_loads(
        tmp_path: Path, make_keys: Callable[[str], KeyPair],
        capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from service.metrics import Metrics
    from service.repository import ModelRepository
    from service.runtime import runtime_factory
    from service.settings import Settings

    keys = make_keys("training")
    out = tmp_path / "repo" / "digits" / "1"
    code, stdout, err = _run(["train", "--dataset", "digits", "--model", "dense", "--latent", "4",
                              "--epochs", "1", "--clusters", "3", "--exemplars", "1",
                              "--signing-key", str(keys.private), "--out", str(out)], capsys)
    assert code == 0, err
    assert json.loads(stdout)["signed"] is True
    assert (out / bundle.SIGNATURE_FILE).is_file()
    assert bundle.SIGNATURE_FILE not in bundle.read_manifest(out).files
    assert [p.name for p in out.parent.iterdir()] == ["1"]  # nothing left beside it
    assert _verifier(keys).verify(out) == "training.pub"

    async def load() -> list[tuple[int, str]]:
        settings = Settings(model_repo=tmp_path / "repo", poll_seconds=0, max_batch_size=2,
                            trusted_keys=str(keys.public))
        repo = ModelRepository(settings, Metrics(), runtime_factory("/CPU:0", (1, 2)))
        await repo.start()
        try:
            return [(s.version, s.state) for s in repo.status("digits")]
        finally:
            await repo.stop(1)

    assert asyncio.run(load()) == [(1, "AVAILABLE")]


def _encrypted(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret")))
    return path


def _rsa(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


@pytest.mark.parametrize(("make_key", "message"), [
    (lambda d, keys: keys.public, "is not a private key in PEM form"),
    (lambda d, keys: d / "missing.pem", "cannot be read: No such file"),
    (lambda d, keys: _rsa(d / "rsa.pem"), "is not an elliptic-curve private key"),
    (lambda d, keys: _encrypted(d / "locked.pem", ec.generate_private_key(ec.SECP384R1())),
     "signs with an unencrypted key"),
])
def test_a_bad_signing_key_is_refused_before_training(
        tmp_path: Path, make_keys: Callable[[str], KeyPair],
        capsys: pytest.CaptureFixture[str], make_key: Callable[[Path, KeyPair], Path],
        message: str) -> None:
    key = make_key(tmp_path, make_keys("training"))
    out = tmp_path / "repo" / "m" / "1"
    started = time.monotonic()
    code, _, err = _run(["train", "--dataset", "digits", "--epochs", "50",
                         "--signing-key", str(key), "--out", str(out)], capsys)
    assert code == 2 and message in err, err
    assert str(key) in err and "Traceback" not in err
    assert time.monotonic() - started < 30  # refused up front, not after fitting
    assert not out.exists()


def test_sign_command_signs_an_existing_version_and_re_signs_it(
        tmp_path: Path, digits_bundle: Path, make_keys: Callable[[str], KeyPair],
        capsys: pytest.CaptureFixture[str]) -> None:
    old, new = make_keys("old"), make_keys("new")
    version = clone_version(digits_bundle, tmp_path / "repo", "digits", 4)
    with pytest.raises(SignatureError, match="is not signed"):
        _verifier(old).verify(version)
    code, out, err = _run(["sign", "--bundle", str(version), "--signing-key", str(old.private)],
                          capsys)
    assert code == 0, err
    assert json.loads(out)["signature"] == str(version / bundle.SIGNATURE_FILE)
    assert _verifier(old).verify(version) == "old.pub"
    # Key rotation: signing again replaces the signature; the old key no longer verifies it.
    code, _, err = _run(["sign", "--bundle", str(version), "--signing-key", str(new.private)],
                        capsys)
    assert code == 0, err
    assert _verifier(new).verify(version) == "new.pub"
    with pytest.raises(SignatureError, match="not trusted"):
        _verifier(old).verify(version)
    assert _verifier(old, new).verify(version) == "new.pub"  # during a rotation: either
    assert sorted(p.name for p in version.parent.iterdir()) == ["4"]  # no temporary left


def test_sign_command_refuses_a_version_that_does_not_match_its_manifest(
        tmp_path: Path, digits_bundle: Path, make_keys: Callable[[str], KeyPair],
        capsys: pytest.CaptureFixture[str]) -> None:
    keys = make_keys("training")
    version = clone_version(digits_bundle, tmp_path / "repo", "digits", 1)
    (version / "report" / "dropped-in.txt").write_text("not from training")
    code, _, err = _run(["sign", "--bundle", str(version), "--signing-key", str(keys.private)],
                        capsys)
    assert code == 2 and "failed verification" in err and "dropped-in.txt" in err, err
    assert not (version / bundle.SIGNATURE_FILE).exists()


# ---- export: the signature is part of the atomic export -----------------------------------


def _tiny_export(out: Path, signer: Signer | None) -> bundle.Manifest:
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 1), name="images")
    encoder = keras.Model(images, keras.layers.Dense(3)(keras.layers.Flatten()(images)))
    code = keras.Input((3,), name="embedding")
    decoder = keras.Model(code, keras.layers.Reshape((8, 8, 1))(keras.layers.Dense(64)(code)))
    contents = export.BundleContents(
        input=bundle.InputSpec(height=8, width=8, channels=1, color_mode="gray"),
        centroids=np.zeros((2, 3), np.float32),
        cluster_stats=[{"cluster": i, "count": 1, "mean": 0.0, "p50": 0.0, "p95": 0.0,
                        "p99": 0.0} for i in range(2)],
        training=bundle.TrainingInfo(
            data_source="digits", model_kind="dense", loss="mse", labels_used=False,
            hyperparameters={}, epochs=0, final_losses={}, n_train=1, n_heldout=0,
            heldout_kind="none", seconds=0.0),
    )
    return export.export_bundle(out, encoder=encoder, decoder=decoder, contents=contents,
                                signer=signer, overwrite=True)


class _InterruptedAfterSigning(Signer):
    def sign(self, version_dir: Path, signature_path: Path | None = None) -> Path:
        written = super().sign(version_dir, signature_path)
        assert written.is_file()
        raise KeyboardInterrupt


def test_export_signs_inside_the_temporary_directory(
        tmp_path: Path, make_keys: Callable[[str], KeyPair]) -> None:
    keys = make_keys("training")
    out = tmp_path / "repo" / "m" / "1"
    _tiny_export(out, Signer(keys.private))
    assert _verifier(keys).verify(out) == "training.pub"
    # Overwriting with an unsigned export leaves no stale signature behind.
    _tiny_export(out, None)
    assert not (out / bundle.SIGNATURE_FILE).exists()
    # Interrupted after the signature is written but before the rename: nothing appears.
    shutil.rmtree(out)
    with pytest.raises(KeyboardInterrupt):
        _tiny_export(out, _InterruptedAfterSigning(keys.private))
    assert list(out.parent.iterdir()) == []


def test_a_signer_needs_a_private_key(make_keys: Callable[[str], KeyPair]) -> None:
    with pytest.raises(SigningError, match="is not a private key"):
        Signer(make_keys("training").public)
