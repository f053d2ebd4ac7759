"""Elliptic-curve key pairs for the signing tests, made the way an operator would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class KeyPair:
    """A private key and its public key, in PEM files."""

    private: Path
    public: Path


def make_key_pair(folder: Path, name: str, curve: ec.EllipticCurve | None = None) -> KeyPair:
    """Write ``folder/name.pem`` (PKCS#8, unencrypted) and ``folder/name.pub`` (SPKI)."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private, public)
