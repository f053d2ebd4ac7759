"""Trusted keys and the signature check (service/signature.py) on a real bundle.

How the repository reports a refusal (status, log, metric) is in test_repository.py.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from model_signing import hashing, signing

from service import bundle
from service.cli import load_settings
from service.settings import Settings
from service.signature import SignatureError, TrustedKeyError, Verifier, key_files, load_keys
from tests.keys import KeyPair
from tests.service.bundles import clone_version, sign_version


@pytest.fixture
def signed(tmp_path: Path, digits_bundle: Path,
           make_keys: Callable[[str], KeyPair]) -> tuple[Path, KeyPair]:
    """A copy of the digits bundle signed with a new key ``training``."""
    keys = make_keys("training")
    version = clone_version(digits_bundle, tmp_path / "repo", "digits", 1)
    sign_version(version, keys.private)
    return version, keys


def _verifier(*keys: KeyPair) -> Verifier:
    return Verifier(load_keys(",".join(str(k.public) for k in keys)))


# ---- trusted keys: settings that cannot work fail at start-up, naming the file ------------


def _public_pem(path: Path, key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> Path:
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.mark.parametrize(("make_file", "message"), [
    (lambda d, keys: d / "absent.pub", "cannot be read: No such file or directory"),
    (lambda d, keys: keys.private, "holds a private key: the service needs only the public"),
    (lambda d, keys: _public_pem(d / "k1.pub", ec.generate_private_key(ec.SECP256K1())
                                 .public_key()), "Unsupported key for curve 'secp256k1'"),
    (lambda d, keys: _public_pem(d / "ed.pub", ed25519.Ed25519PrivateKey.generate()
                                 .public_key()), "is a public key but not an elliptic-curve one"),
    (lambda d, keys: d.joinpath("notes.pub").write_text("hello") and d / "notes.pub",
     "is not an elliptic-curve public key in PEM form"),
])
def test_a_trusted_key_that_cannot_be_used_is_a_start_up_error_naming_the_file(
        tmp_path: Path, make_keys: Callable[[str], KeyPair],
        make_file: Callable[[Path, KeyPair], Path], message: str) -> None:
    good = make_keys("good")
    bad = make_file(tmp_path, make_keys("training"))
    with pytest.raises(SystemExit) as info:
        load_settings(["--model-repo", str(tmp_path), "--trusted-keys", f"{good.public},{bad}"])
    text = str(info.value)
    assert text.startswith("error: invalid settings: trusted_keys: "), text
    assert str(bad) in text and message in text, text


def test_require_signature_needs_trusted_keys(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="settings: Value error, require_signature is true but"):
        load_settings(["--model-repo", str(tmp_path), "--require-signature"])
    settings = load_settings(["--model-repo", str(tmp_path), "--no-require-signature"])
    assert not settings.signatures_required


def test_signatures_are_required_by_default_once_keys_are_given(
        tmp_path: Path, make_keys: Callable[[str], KeyPair],
        monkeypatch: pytest.MonkeyPatch) -> None:
    keys = make_keys("training")
    assert not Settings(model_repo=tmp_path).signatures_required
    monkeypatch.setenv("AEC_TRUSTED_KEYS", str(keys.public))
    assert Settings(model_repo=tmp_path).signatures_required
    monkeypatch.setenv("AEC_REQUIRE_SIGNATURE", "false")
    assert not Settings(model_repo=tmp_path).signatures_required


def test_a_mounted_configmap_directory_yields_its_keys_only(
        tmp_path: Path, make_keys: Callable[[str], KeyPair]) -> None:
    # What the kubelet mounts for a ConfigMap: the keys are symlinks through ..data into a
    # hidden timestamped directory, which is swapped atomically on update.
    a, b = make_keys("a"), make_keys("b")
    mount = tmp_path / "trusted-keys"
    stamped = mount / "..2026_12_06_17_00_00.000000001"
    stamped.mkdir(parents=True)
    for keys, name in ((a, "training-2026.pub"), (b, "training-2027.pub")):
        (stamped / name).write_bytes(keys.public.read_bytes())
    (mount / "..data").symlink_to(stamped.name)
    for name in ("training-2026.pub", "training-2027.pub"):
        (mount / name).symlink_to(f"..data/{name}")
    assert [p.name for p in key_files(str(mount))] == ["training-2026.pub", "training-2027.pub"]
    settings = Settings(model_repo=tmp_path, trusted_keys=str(mount))
    assert [k.name for k in load_keys(settings.trusted_keys)] == [
        "training-2026.pub", "training-2027.pub"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrustedKeyError, match=f"{empty} holds no public key file"):
        load_keys(str(empty))


# ---- the check itself -------------------------------------------------------------------


def test_any_one_trusted_key_verifying_is_enough(
        signed: tuple[Path, KeyPair], make_keys: Callable[[str], KeyPair]) -> None:
    version, keys = signed
    others = [make_keys(f"other-{i}") for i in range(2)]
    assert _verifier(others[0], keys, others[1]).verify(version) == "training.pub"
    with pytest.raises(SignatureError, match=r"not trusted here.*\(other-0.pub, other-1.pub\)"):
        _verifier(*others).verify(version)


def test_a_signature_that_is_not_one_is_refused(signed: tuple[Path, KeyPair]) -> None:
    version, keys = signed
    (version / bundle.SIGNATURE_FILE).write_text("PK\x03\x04 not a signature")
    with pytest.raises(SignatureError, match=r"model\.sig is not a model_signing signature"):
        _verifier(keys).verify(version)
    (version / bundle.SIGNATURE_FILE).write_bytes(b"{" * (2 << 20))
    with pytest.raises(SignatureError, match="is over 1048576 bytes"):
        _verifier(keys).verify(version)


def test_an_altered_signature_does_not_verify(signed: tuple[Path, KeyPair]) -> None:
    # The statement edited to list a replaced file's digest: the key hint still names the
    # trusted key, but the signature over the statement no longer holds.
    version, keys = signed
    raw = json.loads((version / bundle.SIGNATURE_FILE).read_text())
    statement = json.loads(base64.b64decode(raw["dsseEnvelope"]["payload"]))
    target = version / bundle.CENTROIDS_FILE
    target.write_bytes(target.read_bytes() + b"!")
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == bundle.CENTROIDS_FILE:
            resource["digest"] = bundle.sha256_file(target)
    raw["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (version / bundle.SIGNATURE_FILE).write_text(json.dumps(raw))
    with pytest.raises(SignatureError,
                       match=r"signature does not verify against the trusted keys \(training"):
        _verifier(keys).verify(version)


def test_a_signature_that_leaves_files_out_is_refused(
        tmp_path: Path, digits_bundle: Path, make_keys: Callable[[str], KeyPair]) -> None:
    # A trusted key, but a signature made (with model_signing's own options) over less than
    # the whole version: the encoder could then be anything.
    keys = make_keys("training")
    version = clone_version(digits_bundle, tmp_path / "repo", "digits", 1)
    config = hashing.Config().set_ignored_paths(paths=[bundle.SIGNATURE_FILE, "encoder"],
                                                ignore_git_paths=False)
    signing.Config().use_elliptic_key_signer(private_key=keys.private).set_hashing_config(
        config).sign(version, version / bundle.SIGNATURE_FILE)
    with pytest.raises(SignatureError, match=r"leaves \['encoder'\] out of what it covers"):
        _verifier(keys).verify(version)


def test_model_signings_own_cli_defaults_are_accepted(
        tmp_path: Path, digits_bundle: Path, make_keys: Callable[[str], KeyPair]) -> None:
    # `model_signing sign key` leaves git's files out by default; they are never read, and
    # a version holding one fails the manifest's checksums anyway.
    keys = make_keys("training")
    version = clone_version(digits_bundle, tmp_path / "repo", "digits", 1)
    config = hashing.Config().set_ignored_paths(paths=[bundle.SIGNATURE_FILE])
    signing.Config().use_elliptic_key_signer(private_key=keys.private).set_hashing_config(
        config).sign(version, version / bundle.SIGNATURE_FILE)
    assert _verifier(keys).verify(version) == "training.pub"


@pytest.mark.parametrize("add", [
    lambda where: os.symlink("/etc/passwd", where),
    lambda where: os.mkfifo(where),
], ids=["symlink", "fifo"])
@pytest.mark.timeout(60)  # hashing a FIFO would block
def test_a_link_or_special_file_in_a_signed_version_is_refused(
        signed: tuple[Path, KeyPair], add: Callable[[Path], None]) -> None:
    version, keys = signed
    add(version / "report" / "extra")
    with pytest.raises(SignatureError, match="holds a symbolic link or a special file"):
        _verifier(keys).verify(version)


def test_unsigned_is_accepted_only_when_signatures_are_not_required(
        tmp_path: Path, digits_bundle: Path, make_keys: Callable[[str], KeyPair]) -> None:
    keys = make_keys("training")
    version = clone_version(digits_bundle, tmp_path / "repo", "digits", 1)
    lenient = Verifier(load_keys(str(keys.public)), required=False)
    assert lenient.verify(version) is None
    with pytest.raises(SignatureError, match=r"is not signed: model\.sig is missing"):
        _verifier(keys).verify(version)
    (version / bundle.SIGNATURE_FILE).mkdir()
    with pytest.raises(SignatureError, match=r"model\.sig is not a file"):
        lenient.verify(version)


# ---- the verified copy: what is loaded is what was checked --------------------------------


def _swap(path: Path, data: bytes) -> None:
    """Replace a file by rename, as someone racing the server would (atomic, new inode)."""
    tmp = path.with_name(path.name + ".swap")
    tmp.write_bytes(data)
    tmp.replace(path)


@pytest.fixture
def swap_after_check(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[Path], None]], None]:
    """Run a change right after the signature check passes and before the copy: the window
    a writer of the repository would race for."""
    def arm(change: Callable[[Path], None]) -> None:
        check = Verifier._check

        def check_then_change(self: Verifier, version_dir: Path) -> Any:
            result = check(self, version_dir)
            change(version_dir)
            return result

        monkeypatch.setattr(Verifier, "_check", check_then_change)

    return arm


def test_the_copy_holds_exactly_the_signed_files(
        signed: tuple[Path, KeyPair], tmp_path: Path) -> None:
    version, keys = signed
    staged = tmp_path / "staged"
    assert _verifier(keys).stage(version, staged) == "training.pub"
    copied = {p.relative_to(staged).as_posix(): bundle.sha256_file(p)
              for p in staged.rglob("*") if p.is_file()}
    on_disk = {p.relative_to(version).as_posix(): bundle.sha256_file(p)
               for p in version.rglob("*") if p.is_file() and p.name != bundle.SIGNATURE_FILE}
    assert copied == on_disk and bundle.MANIFEST_FILE in copied


@pytest.mark.parametrize(("change", "message"), [
    (lambda v: _swap(v / bundle.CENTROIDS_FILE, b"swapped in after the check"),
     "centroids.joblib no longer matches its signature"),
    (lambda v: _swap(v / bundle.MANIFEST_FILE, b"{}"),
     "manifest.json no longer matches its signature"),
    (lambda v: (v / bundle.CENTROIDS_FILE).unlink(), "centroids.joblib is gone"),
    (lambda v: ((v / bundle.CENTROIDS_FILE).unlink(),
                (v / bundle.CENTROIDS_FILE).symlink_to(v / bundle.MANIFEST_FILE)),
     "centroids.joblib no longer matches"),
    (lambda v: ((v / bundle.CENTROIDS_FILE).unlink(), os.mkfifo(v / bundle.CENTROIDS_FILE)),
     "centroids.joblib no longer matches"),
])
@pytest.mark.timeout(60)  # a FIFO opened for reading would block without O_NONBLOCK
def test_a_file_changed_after_the_check_is_caught_while_copying(
        signed: tuple[Path, KeyPair], tmp_path: Path,
        swap_after_check: Callable[[Callable[[Path], None]], None],
        change: Callable[[Path], None], message: str) -> None:
    version, keys = signed
    swap_after_check(change)
    with pytest.raises(SignatureError, match=f"changed while it was being loaded: {message}"):
        _verifier(keys).stage(version, tmp_path / "staged")


def test_a_file_grown_after_the_check_is_not_copied_past_its_signed_size(
        signed: tuple[Path, KeyPair], tmp_path: Path,
        swap_after_check: Callable[[Callable[[Path], None]], None]) -> None:
    version, keys = signed
    target = version / bundle.CENTROIDS_FILE
    size = target.stat().st_size
    swap_after_check(lambda v: _swap(target, b"\0" * (64 << 20)))  # 64 MB where 600 B were
    with pytest.raises(SignatureError, match=r"centroids\.joblib no longer matches"):
        _verifier(keys).stage(version, tmp_path / "staged")
    assert (tmp_path / "staged" / bundle.CENTROIDS_FILE).stat().st_size == size + 1
