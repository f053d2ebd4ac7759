"""Bundle signatures: which keys the service trusts, and the check a version passes first.

The manifest's SHA-256 list proves integrity, not origin: it sits in the same writable
folder as the files it lists, and a SavedModel is a program. A version signed with the
OpenSSF ``model_signing`` package (``model.sig``, written by ``python -m training sign`` or
``train --signing-key``) names who made it. With trusted public keys configured
(``AEC_TRUSTED_KEYS``), the service checks the signature over every file of a version before
it reads any of them: the manifest, the centroids and the SavedModels are only opened once
the signature verifies, and a version that fails is refused with the reason.

Signing and verifying hash the same way (:func:`hashing_config`): SHA-256 of every file in
the version directory, the signature file alone left out, so a file added, removed or
changed after signing fails the check. docs/security.md describes the trust model.

Checking files in a folder others can write and then loading them from there leaves a
window: a file swapped after the check is loaded unchecked. :meth:`Verifier.stage` therefore
copies what the signature covers into a private folder, comparing every byte copied with the
signed digests, and the service loads that copy.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import stat
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from service.bundle import SIGNATURE_FILE, BundleError, sha256_file

if TYPE_CHECKING:
    from model_signing import hashing, verifying

# Paths a signature may leave out besides itself: model_signing's own CLI leaves git's files
# out by default. None of them is ever read by the service, and the manifest's checksums
# refuse a version holding any of them (they are not listed), so a version signed with the
# CLI still loads and nothing it leaves out can matter.
_GIT_PATHS = frozenset({".git", ".gitattributes", ".github", ".gitignore"})
ALLOWED_UNSIGNED = frozenset({SIGNATURE_FILE}) | _GIT_PATHS
# Signatures are a few KB; a larger file is not one of ours (and is not parsed).
MAX_SIGNATURE_BYTES = 1 << 20
# Curves model_signing accepts (it matches Sigstore's specs).
CURVES = "P-256, P-384 or P-521"


class SignatureError(BundleError):
    """A version was refused because of its signature; the message says why."""


class TrustedKeyError(ValueError):
    """A trusted-key setting names something that is not an elliptic-curve public key (a
    ValueError: pydantic reports its message as an invalid setting)."""


def hashing_config() -> hashing.Config:
    """How a version is hashed for signing and for verifying: the same both times.

    A fresh object per use: model_signing's verifier adds the signed ``ignore_paths`` to the
    configuration it is given, which must not leak into the next verification.
    """
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


@dataclass(frozen=True)
class TrustedKey:
    """One public key the service accepts signatures from."""

    path: Path
    config: verifying.Config  # model_signing's verifier, holding the parsed key

    @property
    def name(self) -> str:
        return self.path.name


def key_files(spec: str) -> list[Path]:
    """The files a trusted-keys setting names: a directory (every file in it whose name does
    not start with '.', as in a mounted ConfigMap or Secret) or a comma-separated list."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) == 1 and Path(parts[0]).is_dir():
        folder = Path(parts[0])
        files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
        if not files:
            raise TrustedKeyError(f"{folder} holds no public key file")
        return files
    return [Path(p) for p in parts]


def load_key(path: Path) -> TrustedKey:
    """Parse one public key; raises :class:`TrustedKeyError` naming the file and the problem."""
    from model_signing import verifying

    if path.is_dir():
        raise TrustedKeyError(f"{path} is a directory; give one directory alone, or a "
                              "comma-separated list of key files")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise TrustedKeyError(f"trusted key {path} cannot be read: "
                              f"{exc.strerror or exc}") from None
    if b"PRIVATE KEY" in text:
        raise TrustedKeyError(f"{path} holds a private key: the service needs only the public "
                              "key (openssl ec -in KEY -pubout), and the private key must stay "
                              "with training")
    try:
        config = verifying.Config().use_elliptic_key_verifier(public_key=path)
    except ValueError as exc:  # not PEM, not a public key, or an unsupported curve
        raise TrustedKeyError(f"{path} is not an elliptic-curve public key in PEM form "
                              f"({CURVES}): {exc}") from None
    except AttributeError:  # an RSA or Ed25519 key: model_signing asks it for its curve
        raise TrustedKeyError(f"{path} is a public key but not an elliptic-curve one "
                              f"({CURVES}): model_signing signs with elliptic-curve keys") from None
    return TrustedKey(path, config)


def load_keys(spec: str) -> list[TrustedKey]:
    """Every key a trusted-keys setting names, each checked; raises on the first bad one."""
    files = key_files(spec)
    if not files:
        raise TrustedKeyError("no key file given")
    return [load_key(path) for path in files]


class Verifier:
    """Checks versions against a fixed set of trusted keys (one verifying is enough)."""

    def __init__(self, keys: Sequence[TrustedKey], *, required: bool = True) -> None:
        if not keys:
            raise ValueError("a verifier needs at least one trusted key")
        self.keys = tuple(keys)
        self.required = required
        # model_signing's verifier configs hold state during a call (the hashing config).
        self._lock = threading.Lock()

    @property
    def key_names(self) -> list[str]:
        return [key.name for key in self.keys]

    def verify(self, version_dir: Path) -> str | None:
        """Check ``version_dir`` before anything in it is read; return the name of the key
        that verified it (None: unsigned, and signatures are not required).

        Raises :class:`SignatureError` saying why the version is refused.
        """
        return self._check(version_dir)[0]

    def stage(self, version_dir: Path, target: Path) -> str | None:
        """Check ``version_dir``, then copy the files its signature covers into ``target``
        (a new folder, private to this process), every byte compared with the signed digests.

        Returns the key's name, or None for an unsigned version that is accepted (signatures
        not required): then nothing is copied, and it is loaded from where it is.
        """
        sizes = _sizes(version_dir)  # before the check: see _copy_signed
        key, statement = self._check(version_dir)
        if key is None or statement is None:
            return None
        _copy_signed(version_dir, target, statement, sizes, version_dir.as_posix())
        return key

    def _check(self, version_dir: Path) -> tuple[str | None, dict[str, Any] | None]:
        where = version_dir.as_posix()
        signature = version_dir / SIGNATURE_FILE
        if not signature.is_file():
            if signature.exists() or signature.is_symlink():
                raise SignatureError(f"{where} is refused: {SIGNATURE_FILE} is not a file")
            if not self.required:
                return None, None
            raise SignatureError(
                f"{where} is not signed: {SIGNATURE_FILE} is missing, and this server loads only "
                "versions signed by a trusted key (AEC_TRUSTED_KEYS; sign with `python -m "
                "training sign`)")
        raw = _read_signature(signature, where)
        statement = _statement(raw, where)
        unsigned = _unsigned_paths(statement, where)
        # Verify a private copy of the bytes read: the file in the version could be swapped
        # between model_signing's read and the check of what it leaves out.
        with self._lock, tempfile.TemporaryDirectory(prefix="aecluster-sig-") as scratch:
            copy = Path(scratch) / SIGNATURE_FILE
            copy.write_bytes(raw)
            key = self._verify_with_keys(version_dir, copy, where, statement, unsigned)
        extra = sorted(set(unsigned) - ALLOWED_UNSIGNED)
        if extra:
            raise SignatureError(
                f"{where} is refused: its signature (key {key}) leaves {extra[:5]} out of what "
                f"it covers; a version's signature must cover every file but {SIGNATURE_FILE}")
        return key, statement

    def _verify_with_keys(self, version_dir: Path, signature: Path, where: str,
                          statement: dict[str, Any], unsigned: list[str]) -> str:
        untrusted = 0
        for key in self.keys:
            config = key.config.set_hashing_config(hashing_config())
            try:
                config.verify(version_dir, signature)
            except Exception as exc:  # model_signing raises plain ValueErrors and others
                outcome = _classify(exc)
                if outcome == "untrusted":  # its key hint names another key: try the next
                    untrusted += 1
                    continue
                if outcome == "invalid":  # the key matched, the signature bytes did not
                    continue
                if outcome == "changed":  # the signature verified with this key
                    raise SignatureError(
                        f"{where} has changed since it was signed (key {key.name}): "
                        f"{_differences(version_dir, statement, unsigned)}") from None
                if outcome == "not-a-file":
                    raise SignatureError(
                        f"{where} is refused: it holds a symbolic link or a special file (FIFO, "
                        "socket, device), which a signed version may not; it holds files and "
                        "folders only") from None
                raise SignatureError(
                    f"{where} is refused: {SIGNATURE_FILE} is not a valid signature "
                    f"({type(exc).__name__}: {_short(str(exc))})") from None
            return key.name
        if untrusted == len(self.keys):
            raise SignatureError(
                f"{where} is signed by a key that is not trusted here: the signature does not "
                f"verify against the trusted keys ({', '.join(self.key_names)})")
        raise SignatureError(
            f"{where} is refused: the signature does not verify against the trusted keys "
            f"({', '.join(self.key_names)}); {SIGNATURE_FILE} was altered or is damaged")


def _read_signature(path: Path, where: str) -> bytes:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SIGNATURE_BYTES + 1)
    except OSError as exc:
        raise SignatureError(f"{where}: {SIGNATURE_FILE} cannot be read: "
                             f"{exc.strerror or exc}") from None
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{where} is refused: {SIGNATURE_FILE} is over "
                             f"{MAX_SIGNATURE_BYTES} bytes, not a signature")
    return raw


def _statement(raw: bytes, where: str) -> dict[str, Any]:
    """The in-toto statement a signature carries (only trusted once the signature verifies)."""
    try:
        envelope = json.loads(raw)["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
        if not isinstance(statement, dict) or not isinstance(statement.get("predicate"), dict):
            raise ValueError("no predicate")
        return statement
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SignatureError(
            f"{where} is refused: {SIGNATURE_FILE} is not a model_signing signature "
            f"({type(exc).__name__}: {_short(str(exc))})") from None


def _unsigned_paths(statement: dict[str, Any], where: str) -> list[str]:
    """The paths the signed statement says it leaves out."""
    serialization = statement["predicate"].get("serialization")
    ignored = serialization.get("ignore_paths", []) if isinstance(serialization, dict) else None
    if not isinstance(ignored, list) or not all(isinstance(p, str) for p in ignored):
        raise SignatureError(f"{where} is refused: {SIGNATURE_FILE} does not say which paths "
                             "it leaves out in a form model_signing writes")
    return [p.rstrip("/") for p in ignored]


def _differences(version_dir: Path, statement: dict[str, Any], unsigned: list[str]) -> str:
    """What differs between the signed files and those on disk, for the refusal message.

    model_signing's own list is a repr of byte strings; this hashes the version once more,
    only on this failure path.
    """
    signed = {r.get("name"): r.get("digest") for r in statement["predicate"].get("resources", [])
              if isinstance(r, dict)}

    def left_out(relative: str) -> bool:
        return any(relative == p or relative.startswith(p + "/") for p in unsigned)

    actual = {}
    for path in version_dir.rglob("*"):
        relative = path.relative_to(version_dir).as_posix()
        if path.is_file() and not left_out(relative):
            actual[relative] = sha256_file(path)
    added = sorted(set(actual) - set(signed))
    removed = sorted(p for p in set(signed) - set(actual) if isinstance(p, str))
    changed = sorted(p for p in set(actual) & set(signed) if actual[p] != signed[p])
    parts = [f"{label} {names[:5]}" for label, names in
             (("added", added), ("removed", removed), ("changed", changed)) if names]
    return "; ".join(parts) or "its files no longer hash as signed"


def _signed_files(statement: dict[str, Any], where: str) -> dict[str, str]:
    """Relative path -> SHA-256 of every file the (verified) statement covers."""
    signed: dict[str, str] = {}
    for resource in statement["predicate"].get("resources", []):
        fields = resource if isinstance(resource, dict) else {}
        name, digest = fields.get("name"), fields.get("digest")
        path = PurePosixPath(name) if isinstance(name, str) else PurePosixPath("/")
        if (path.is_absolute() or ".." in path.parts or not path.parts
                or not isinstance(digest, str) or fields.get("algorithm") != "sha256"):
            raise SignatureError(f"{where} is refused: its signature lists {name!r}, not a "
                                 "SHA-256 of a file inside the version")
        signed[path.as_posix()] = digest
    return signed


def _sizes(version_dir: Path) -> dict[str, int]:
    """Relative path -> size of every entry under ``version_dir`` (links not followed)."""
    sizes = {}
    for folder, _, names in os.walk(version_dir):
        for name in names:
            path = Path(folder, name)
            with contextlib.suppress(OSError):  # gone meanwhile: the check will say so
                sizes[path.relative_to(version_dir).as_posix()] = os.lstat(path).st_size
    return sizes


def _copy_signed(version_dir: Path, target: Path, statement: dict[str, Any],
                 sizes: dict[str, int], where: str) -> None:
    """Copy every signed file of ``version_dir`` to ``target``, checking it as it is copied.

    A file is read never through a final symbolic link, never from a FIFO or device, and at
    most to the size it had before the check (``sizes``): one swapped for a larger file
    after the check cannot fill this server's disk. Any difference from the signed digest
    refuses the version.
    """
    signed = _signed_files(statement, where)
    target.mkdir(parents=True)
    for name, digest in sorted(signed.items()):
        if not (version_dir / name).exists() or name not in sizes:
            raise SignatureError(f"{where} changed while it was being loaded: {name} is "
                                 "gone")
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if _copy_file(version_dir / name, destination, sizes[name]) != digest:
            raise SignatureError(f"{where} changed while it was being loaded: {name} no longer "
                                 "matches its signature")


def _copy_file(source: Path, destination: Path, limit: int) -> str:
    """Copy at most ``limit`` + 1 bytes of a regular file; return the SHA-256 of what was
    read (which differs from any digest of a ``limit``-byte file when it grew)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    digest = hashlib.sha256()
    try:
        handle = os.open(source, flags)
    except OSError:
        return ""  # a link or gone: not what was signed
    with open(handle, "rb") as reader:
        if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
            return ""
        with destination.open("xb") as writer:
            copied = 0
            while copied <= limit and (block := reader.read(min(1 << 20, limit + 1 - copied))):
                copied += len(block)
                digest.update(block)
                writer.write(block)
    return digest.hexdigest()


def _classify(exc: Exception) -> str:
    """What a model_signing 1.x failure means (its errors are not typed)."""
    text = str(exc)
    if type(exc).__name__ == "InvalidSignature":  # cryptography.exceptions
        return "invalid"
    if isinstance(exc, ValueError):
        if text.startswith("Key mismatch"):
            return "untrusted"
        if text.startswith("Signature mismatch"):
            return "changed"
        if text.startswith("Cannot use '"):  # a symlink, or not a file or folder
            return "not-a-file"
    return "malformed"


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
