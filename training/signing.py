"""Signing bundle versions with the OpenSSF ``model_signing`` package.

The signature (``model.sig`` in the version directory) covers every other file of the
version, the manifest included, hashed as the service hashes them when it verifies
(:func:`service.signature.hashing_config`). Export signs inside its temporary directory,
before the version is renamed into place; ``python -m training sign`` signs a version that
already exists. docs/security.md says who holds the key and how to rotate it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from service import bundle
from service.signature import CURVES, hashing_config
from training.errors import TrainingError

if TYPE_CHECKING:
    from model_signing import signing

logger = logging.getLogger(__name__)


class SigningError(TrainingError):
    """The signing key cannot be used, or a version cannot be signed."""


class Signer:
    """An elliptic-curve private key, read and checked once (before any training)."""

    def __init__(self, private_key: Path) -> None:
        from model_signing import signing

        self.path = private_key
        try:
            text = private_key.read_bytes()
        except OSError as exc:
            raise SigningError(f"signing key {private_key} cannot be read: "
                               f"{exc.strerror or exc}") from None
        if b"PRIVATE KEY" not in text:
            raise SigningError(f"{private_key} is not a private key in PEM form (training "
                               "signs with the private key; the service holds the public one)")
        try:
            self._config: signing.Config = signing.Config().use_elliptic_key_signer(
                private_key=private_key)
        except TypeError as exc:  # cryptography: "Password was not given but ... encrypted"
            raise SigningError(f"signing key {private_key} cannot be used: {exc} (aecluster "
                               "signs with an unencrypted key: keep it in a Secret)") from None
        except ValueError as exc:  # not PEM, or an unsupported curve
            raise SigningError(f"{private_key} is not an elliptic-curve private key in PEM "
                               f"form ({CURVES}): {exc}") from None
        except AttributeError:  # RSA or Ed25519: model_signing asks the key for its curve
            raise SigningError(f"{private_key} is not an elliptic-curve private key "
                               f"({CURVES}); create one with `openssl ecparam -name "
                               "prime256v1 -genkey -noout -out KEY`") from None

    def sign(self, version_dir: Path, signature_path: Path | None = None) -> Path:
        """Sign every file of ``version_dir`` but the signature; write the signature to
        ``signature_path`` (default: ``version_dir/model.sig``)."""
        target = signature_path or version_dir / bundle.SIGNATURE_FILE
        started = time.monotonic()
        self._config.set_hashing_config(hashing_config()).sign(version_dir, target)
        logger.info("signed %s with %s in %.2f s", version_dir.name, self.path.name,
                    time.monotonic() - started)
        return target


def sign_existing(version_dir: Path, signer: Signer) -> Path:
    """Sign a version already in a repository (checked against its manifest first).

    The signature is written beside the version and renamed into it, so a server scanning
    the repository never reads half a signature; an existing one is replaced.
    """
    manifest = bundle.read_manifest(version_dir)
    bundle.verify_checksums(version_dir, manifest)  # never sign what its manifest disowns
    name, version = bundle.parse_version_dir(version_dir)
    if (manifest.name, manifest.version) != (name, version):
        raise SigningError(f"{version_dir} holds {manifest.name} version {manifest.version} "
                           "according to its manifest; the directory and the manifest must "
                           "agree")
    tmp = version_dir.parent / f".tmp-sig-{version}-{uuid.uuid4().hex[:8]}"
    try:
        signer.sign(version_dir, tmp)
        os.replace(tmp, version_dir / bundle.SIGNATURE_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    return version_dir / bundle.SIGNATURE_FILE
