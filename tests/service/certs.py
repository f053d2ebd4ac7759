"""Real X.509 material for the TLS tests, made with ``cryptography`` at test time.

A :class:`CertificateAuthority` issues server certificates (for 127.0.0.1 and localhost) and
client certificates; :func:`kubelet_secret_dir` lays files out the way the kubelet mounts a
Secret (files that are symlinks into a directory that a ``..data`` symlink points at, swapped
atomically on update), so rotation is tested the way cert-manager and Kubernetes do it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def der(self) -> bytes:
        """The certificate in DER, as ``ssl`` returns a peer's certificate."""
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        return cert.public_bytes(serialization.Encoding.DER)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """``stem.crt`` and ``stem.key`` in ``directory``; returns (cert, key)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return cert, key


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates valid for a day."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._key = _key()
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def _issue(self, common_name: str, usage: x509.ObjectIdentifier,
               names: x509.SubjectAlternativeName | None) -> Issued:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
        )
        if names is not None:
            builder = builder.add_extension(names, critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem(key))

    def server(self, common_name: str = "aecluster") -> Issued:
        """A server certificate for 127.0.0.1 and localhost (a fresh key each time)."""
        names = x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in SERVER_NAMES]
            + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS])
        return self._issue(common_name, ExtendedKeyUsageOID.SERVER_AUTH, names)

    def client(self, common_name: str = "client") -> Issued:
        """A client certificate (TLS client authentication)."""
        return self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, None)


def kubelet_secret_dir(directory: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into ``directory`` as the kubelet writes a Secret volume, replacing
    what is there in one atomic step: the data go to a new hidden directory, ``..data`` is
    re-pointed at it with a rename, and each name is a symlink through ``..data``."""
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{uuid.uuid4().hex}"
    version.mkdir()
    for name, data in files.items():
        (version / name).write_bytes(data)
    link = directory / f"..data_{uuid.uuid4().hex}"
    link.symlink_to(version.name)
    os.replace(link, directory / "..data")
    for name in files:
        path = directory / name
        if not path.is_symlink():
            path.symlink_to(f"..data/{name}")
