"""The model repository: version policy, verified loads, hot reload and unloading."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest

from service import bundle
from service.errors import NotFound, Unavailable
from service.metrics import Metrics
from service.repository import RETRY_BACKOFF_S, ModelRepository
from service.runtime import runtime_factory
from service.settings import Settings
from tests.keys import KeyPair
from tests.service.bundles import clone_version, sign_version

pytestmark = pytest.mark.anyio


def _repository(repo: Path, **overrides: object) -> tuple[ModelRepository, Metrics]:
    settings = Settings(model_repo=repo, poll_seconds=0, max_batch_size=4, drain_seconds=5,
                        **overrides)  # type: ignore[arg-type]
    metrics = Metrics()

    factory = runtime_factory("/CPU:0", settings.batch_sizes())

    return ModelRepository(settings, metrics, factory), metrics


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_serves_the_highest_complete_version(model_repo: Path, digits_bundle: Path) -> None:
    clone_version(digits_bundle, model_repo, "digits", 3)
    incomplete = model_repo / "digits" / "7"
    shutil.copytree(model_repo / "digits" / "3", incomplete)
    (incomplete / bundle.MANIFEST_FILE).unlink()  # export still running: not a version yet
    (model_repo / "digits" / ".tmp-9-abc").mkdir()
    repo, metrics = _repository(model_repo)
    await repo.start()
    try:
        assert repo.get("digits").version == 3
        assert [lv.version for lv in repo.loaded_versions()] == [3]
        assert repo.has_ready_model()
        assert _sample(metrics, "aecluster_model_info", model="digits", version="3",
                       latent_dim="8", n_clusters="10", input="8x8x1", model_kind="conv") == 1
        with pytest.raises(NotFound, match=r"version 1 of model 'digits' is not loaded"):
            repo.get("digits", 1)
        with pytest.raises(NotFound, match="not served here"):
            repo.get("fashion")
    finally:
        await repo.stop(1)


async def test_tampered_bundle_is_refused_and_counted(model_repo: Path) -> None:
    target = model_repo / "digits" / "1" / bundle.CENTROIDS_FILE
    target.write_bytes(target.read_bytes() + b"!")
    repo, metrics = _repository(model_repo)
    await repo.start()
    try:
        assert not repo.has_ready_model()
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 1
        with pytest.raises(Unavailable, match="checksum mismatch"):
            repo.get("digits")
        [status] = repo.status("digits")
        assert status.state == "END" and "checksum mismatch" in status.error_message
        await repo.poll_once()  # an unchanged broken version is not retried on every scan
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 1
    finally:
        await repo.stop(1)


async def test_hot_reload_swaps_and_a_bad_new_version_keeps_the_old(
        model_repo: Path, digits_bundle: Path) -> None:
    repo, metrics = _repository(model_repo)
    await repo.start()
    try:
        v1 = repo.get("digits")
        clone_version(digits_bundle, model_repo, "digits", 2)
        await repo.poll_once()
        assert repo.get("digits").version == 2
        assert v1.state == "END"
        assert [(s.version, s.state) for s in repo.status("digits")] == [(2, "AVAILABLE"),
                                                                          (1, "END")]
        # A broken version 3 must not disturb version 2.
        broken = clone_version(digits_bundle, model_repo, "digits", 3)
        raw = json.loads((broken / bundle.MANIFEST_FILE).read_text())
        raw["n_clusters"] = 99
        (broken / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
        await repo.poll_once()
        assert repo.get("digits").version == 2
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 1
        # Removing the served version falls back to the next complete one on disk.
        shutil.rmtree(broken)
        shutil.rmtree(model_repo / "digits" / "2")
        await repo.poll_once()
        assert repo.get("digits").version == 1
    finally:
        await repo.stop(1)


async def test_a_held_version_is_unloaded_only_after_its_requests(
        model_repo: Path, digits_bundle: Path) -> None:
    repo, _ = _repository(model_repo)
    await repo.start()
    try:
        images = np.zeros((2, 8, 8, 1), np.float32)
        with repo.acquire("digits") as held:
            clone_version(digits_bundle, model_repo, "digits", 2)
            scan = asyncio.create_task(repo.poll_once())
            for _ in range(600):  # loading and warming up takes a few seconds
                if repo.get("digits").version == 2:
                    break
                await asyncio.sleep(0.05)
            assert repo.get("digits").version == 2  # new requests go to the new version
            assert held.state == "UNLOADING" and not scan.done()
            out = await held.batcher.submit(images, with_reconstruction=False)
            assert out.cluster_id.shape == (2,)  # the old version still answers its caller
        await asyncio.wait_for(scan, timeout=10)
        assert held.state == "END"
    finally:
        await repo.stop(1)


async def test_missing_repository_is_polled_not_fatal(tmp_path: Path, digits_bundle: Path) -> None:
    repo, _ = _repository(tmp_path / "later")
    await repo.start()
    try:
        assert not repo.has_ready_model()
        clone_version(digits_bundle, tmp_path / "later", "digits", 1)
        await repo.poll_once()
        assert repo.get("digits").version == 1
    finally:
        await repo.stop(1)


async def test_manifest_must_match_its_directory(model_repo: Path) -> None:
    moved = model_repo / "other" / "1"
    moved.parent.mkdir()
    (model_repo / "digits" / "1").rename(moved)
    repo, _ = _repository(model_repo)
    await repo.start()
    try:
        with pytest.raises(Unavailable, match="directory and the manifest must agree"):
            repo.get("other")
    finally:
        await repo.stop(1)


async def test_a_version_copied_manifest_first_loads_once_the_copy_completes(
        model_repo: Path, digits_bundle: Path) -> None:
    # Issue 39: rsync and `aws s3 sync` copy in name order, so manifest.json lands before
    # report/. The version failed verification and was never retried (the retry was keyed on
    # the manifest's mtime alone).
    repo, metrics = _repository(model_repo)
    await repo.start()
    try:
        staged = clone_version(digits_bundle, model_repo.parent / "staging", "digits", 2)
        late = sorted(p for p in staged.rglob("*") if p.is_file()
                      and p.relative_to(staged).as_posix() > bundle.MANIFEST_FILE)
        assert late, "the bundle has files that sort after manifest.json"
        partial = model_repo / "digits" / "2"
        shutil.copytree(staged, partial)
        for path in late:  # the copy has not reached these yet
            (partial / path.relative_to(staged)).unlink()
        await repo.poll_once()
        assert repo.get("digits").version == 1
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 1
        [failed] = [s for s in repo.status("digits") if s.version == 2]
        assert "missing" in failed.error_message
        await repo.poll_once()  # unchanged: not retried on every scan
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 1
        for path in late:  # the copy completes, manifest.json untouched
            shutil.copy2(path, partial / path.relative_to(staged))
        await asyncio.sleep(RETRY_BACKOFF_S + 0.1)
        await repo.poll_once()
        assert repo.get("digits").version == 2
        assert (2, "AVAILABLE") in [(s.version, s.state) for s in repo.status("digits")]
    finally:
        await repo.stop(1)


async def test_failures_name_paths_relative_to_the_repository_and_say_why(
        model_repo: Path, digits_bundle: Path) -> None:
    # Issue 39: the status API showed the server's absolute paths, and a truncated SavedModel
    # read "IndexError: Read less bytes than requested".
    version = clone_version(digits_bundle, model_repo, "digits", 2)
    variables = sorted((version / bundle.ENCODER_DIR / "variables").glob("*.data-*"))[0]
    variables.write_bytes(variables.read_bytes()[: variables.stat().st_size // 2])
    manifest = json.loads((version / bundle.MANIFEST_FILE).read_text())
    relative = variables.relative_to(version).as_posix()
    manifest["files"][relative] = bundle.sha256_file(variables)  # checksums pass
    (version / bundle.MANIFEST_FILE).write_text(json.dumps(manifest))
    (model_repo / "digits" / "3").mkdir()
    (model_repo / "digits" / "3" / bundle.MANIFEST_FILE).write_text(
        json.dumps({**manifest, "version": 3}))  # a manifest whose files are all missing
    repo, _ = _repository(model_repo)
    await repo.start()
    try:
        await repo.poll_once()
        await asyncio.sleep(RETRY_BACKOFF_S + 0.1)
        shutil.rmtree(model_repo / "digits" / "3")
        await repo.poll_once()
        messages = {s.version: s.error_message for s in repo.status("digits")
                    if s.error_message}
        assert str(model_repo) not in " ".join(messages.values()), messages
        assert messages[3].startswith("digits/3 failed verification"), messages[3]
        assert "encoder SavedModel could not be loaded; it is damaged, truncated" in (
            messages[2]), messages[2]
        assert repo.get("digits").version == 1
    finally:
        await repo.stop(1)


# ---- signed bundles (issue 39, 1b): the signature is checked before any file is read ------


def _hostile_centroids(version: Path, marker: Path) -> None:
    """Replace centroids.joblib by a pickle that writes ``marker`` under plain joblib.load,
    with the manifest's checksum recomputed: only the signature can tell."""

    class RunsCode:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return exec, (f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')",)

    target = version / bundle.CENTROIDS_FILE
    joblib.dump({"format": 1, "centroids": RunsCode()}, target)
    raw = json.loads((version / bundle.MANIFEST_FILE).read_text())
    raw["files"][bundle.CENTROIDS_FILE] = bundle.sha256_file(target)
    (version / bundle.MANIFEST_FILE).write_text(json.dumps(raw))


def _error(repo: ModelRepository, version: int) -> str:
    [row] = [s for s in repo.status("digits") if s.version == version]
    assert row.state == "END", row
    return row.error_message


async def test_a_signed_version_loads_with_its_key_trusted(
        model_repo: Path, make_keys: Callable[[str], KeyPair],
        caplog: pytest.LogCaptureFixture) -> None:
    keys = make_keys("training")
    sign_version(model_repo / "digits" / "1", keys.private)
    repo, metrics = _repository(model_repo, trusted_keys=str(keys.public))
    with caplog.at_level(logging.INFO, logger="service.repository"):
        await repo.start()
    try:
        assert repo.get("digits").version == 1
        assert [(s.version, s.state) for s in repo.status("digits")] == [(1, "AVAILABLE")]
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 0
        assert "signature verified with trusted key training.pub and copied" in caplog.text
        assert "signed by a trusted key (training.pub)" in caplog.text
    finally:
        await repo.stop(1)


async def test_an_unsigned_version_is_refused_saying_so_and_counted(
        model_repo: Path, make_keys: Callable[[str], KeyPair],
        caplog: pytest.LogCaptureFixture) -> None:
    keys = make_keys("training")
    repo, metrics = _repository(model_repo, trusted_keys=str(keys.public))
    with caplog.at_level(logging.INFO, logger="service.repository"):
        await repo.start()
    try:
        assert not repo.has_ready_model()
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 1
        message = _error(repo, 1)
        assert message.startswith("digits/1 is not signed: model.sig is missing"), message
        with pytest.raises(Unavailable, match="is not signed"):
            repo.get("digits")
        assert "could not load digits version 1: digits/1 is not signed" in caplog.text
    finally:
        await repo.stop(1)


async def test_a_version_signed_by_an_untrusted_key_is_refused(
        model_repo: Path, make_keys: Callable[[str], KeyPair]) -> None:
    trusted, other = make_keys("training"), make_keys("someone-else")
    sign_version(model_repo / "digits" / "1", other.private)
    repo, metrics = _repository(model_repo, trusted_keys=str(trusted.public))
    await repo.start()
    try:
        assert not repo.has_ready_model()
        assert "signature does not verify against the trusted keys" in _error(repo, 1)
        assert "signed by a key that is not trusted" in _error(repo, 1)
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 1
    finally:
        await repo.stop(1)


def _rewrite_centroids_and_manifest(version: Path) -> str:
    target = version / bundle.CENTROIDS_FILE
    payload = bundle.centroid_payload(np.ones((10, 8), np.float32))
    joblib.dump(payload, target)
    raw = json.loads((version / bundle.MANIFEST_FILE).read_text())
    raw["files"][bundle.CENTROIDS_FILE] = bundle.sha256_file(target)  # the checksums pass
    (version / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    return "changed ['centroids.joblib', 'manifest.json']"


def _replace_centroids(version: Path) -> str:
    target = version / bundle.CENTROIDS_FILE
    target.write_bytes(target.read_bytes() + b"!")
    return "changed ['centroids.joblib']"


def _add_a_file(version: Path) -> str:
    (version / "report" / "notes.txt").write_text("added after signing")
    return "added ['report/notes.txt']"


def _remove_an_exemplar(version: Path) -> str:
    (version / "exemplars" / "0" / "0.png").unlink()
    return "removed ['exemplars/0/0.png']"


@pytest.mark.parametrize("tamper", [_rewrite_centroids_and_manifest, _replace_centroids,
                                    _add_a_file, _remove_an_exemplar])
async def test_a_version_changed_after_signing_is_refused(
        model_repo: Path, make_keys: Callable[[str], KeyPair],
        tamper: Callable[[Path], str]) -> None:
    keys = make_keys("training")
    version = model_repo / "digits" / "1"
    sign_version(version, keys.private)
    expected = tamper(version)
    repo, metrics = _repository(model_repo, trusted_keys=str(keys.public))
    await repo.start()
    try:
        assert not repo.has_ready_model()
        message = _error(repo, 1)
        assert message.startswith("digits/1 has changed since it was signed (key training.pub)")
        assert expected in message, message
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 1
    finally:
        await repo.stop(1)


async def test_without_trusted_keys_unsigned_versions_load_as_before(
        model_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo, metrics = _repository(model_repo)
    with caplog.at_level(logging.INFO, logger="service.repository"):
        await repo.start()
    try:
        assert repo.get("digits").version == 1
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 0
        [warning] = [r for r in caplog.records if "not signature-checked" in r.getMessage()]
        assert warning.levelno == logging.WARNING
        assert "signature verified" not in caplog.text
    finally:
        await repo.stop(1)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed-then-changed"])
async def test_the_signature_is_checked_before_any_file_is_read(
        model_repo: Path, make_keys: Callable[[str], KeyPair], tmp_path: Path,
        signed: bool) -> None:
    # A centroids file that would run code under plain joblib.load, with its checksum
    # recomputed. Without keys it reaches the restricted unpickler, which refuses it (the
    # second layer); with keys the signature refuses the version before the manifest is read,
    # so the unpickler never sees it.
    keys = make_keys("training")
    marker = tmp_path / "ran"
    hostile = clone_version(model_repo / "digits" / "1", model_repo, "digits", 2)
    if signed:
        sign_version(hostile, keys.private)
    _hostile_centroids(hostile, marker)

    plain, _ = _repository(model_repo)
    await plain.start()
    try:
        assert _error(plain, 2).startswith("centroids.joblib was refused, nothing in it was run")
    finally:
        await plain.stop(1)

    (hostile / bundle.MANIFEST_FILE).write_text("{ not json")  # reading it would fail too
    repo, metrics = _repository(model_repo, trusted_keys=str(keys.public),
                                require_signature=True)
    await repo.start()
    try:
        message = _error(repo, 2)
        reason = "has changed since it was signed" if signed else "is not signed"
        assert message.startswith(f"digits/2 {reason}"), message
        for later in ("not readable JSON", "bundle contract", "nothing in it was run"):
            assert later not in message, message  # the manifest's and unpickler's refusals
        assert not marker.exists()
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 1
    finally:
        await repo.stop(1)


async def test_a_refused_version_loads_once_it_is_signed(
        model_repo: Path, make_keys: Callable[[str], KeyPair]) -> None:
    # Moving a repository over to signing: an unsigned version is refused, then signed in
    # place (`python -m training sign`); model.sig appearing is a change, so it is retried.
    keys = make_keys("training")
    repo, metrics = _repository(model_repo, trusted_keys=str(keys.public))
    await repo.start()
    try:
        assert "is not signed" in _error(repo, 1)
        sign_version(model_repo / "digits" / "1", keys.private)
        await asyncio.sleep(RETRY_BACKOFF_S + 0.1)
        await repo.poll_once()
        assert repo.get("digits").version == 1
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 1
    finally:
        await repo.stop(1)


async def test_require_signature_false_loads_unsigned_but_checks_signed(
        model_repo: Path, make_keys: Callable[[str], KeyPair], digits_bundle: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    trusted, other = make_keys("training"), make_keys("someone-else")
    sign_version(clone_version(digits_bundle, model_repo, "mis", 1), other.private)
    repo, _ = _repository(model_repo, trusted_keys=str(trusted.public), require_signature=False)
    with caplog.at_level(logging.INFO, logger="service.repository"):
        await repo.start()
    try:
        assert repo.get("digits").version == 1  # unsigned: loaded, with a warning
        assert "digits/1 is not signed; loading it because AEC_REQUIRE_SIGNATURE is false" in (
            caplog.text)
        [row] = repo.status("mis")
        assert "not trusted" in row.error_message  # a signature present must still verify
    finally:
        await repo.stop(1)


async def test_a_signed_version_is_loaded_from_its_verified_copy(
        model_repo: Path, make_keys: Callable[[str], KeyPair], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A writer racing the server swaps in a hostile centroids file right after the signature
    # verified: the copy the server loads from is checked byte for byte, so the swap is caught
    # and nothing of it runs. A clean version is served from memory once its copy is removed.
    from service.signature import Verifier

    keys = make_keys("training")
    marker = tmp_path / "ran"
    sign_version(model_repo / "digits" / "1", keys.private)
    hostile = clone_version(model_repo / "digits" / "1", model_repo.parent / "stash", "digits", 2)
    sign_version(hostile, keys.private)
    racing = model_repo / "digits" / "2"
    shutil.copytree(hostile, racing)
    check = Verifier._check

    def check_then_swap(self: Verifier, version_dir: Path) -> object:
        result = check(self, version_dir)
        if version_dir == racing:
            _hostile_centroids(version_dir, marker)
        return result

    monkeypatch.setattr(Verifier, "_check", check_then_swap)
    private = tmp_path / "private-tmp"  # where this server's temporary files go
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    repo, metrics = _repository(model_repo, trusted_keys=str(keys.public))
    await repo.start()
    try:
        message = _error(repo, 2)
        assert message.startswith("digits/2 changed while it was being loaded: "
                                  "centroids.joblib no longer matches its signature"), message
        assert not marker.exists()
        assert _sample(metrics, "aecluster_model_load_failures_total", model="digits") == 1
        await repo.poll_once()  # the next scan falls back to version 1, signed and intact
        lv = repo.get("digits")
        assert lv.version == 1 and lv.path == model_repo / "digits" / "1"
        [staging] = private.glob("aecluster-verified-*")
        assert not [p for p in staging.rglob("*") if p.is_file()]  # each copy is removed
        out = await lv.batcher.submit(np.zeros((2, 8, 8, 1), np.float32),
                                      with_reconstruction=True)
        assert out.cluster_id.shape == (2,)  # served from memory, its copy gone
    finally:
        await repo.stop(1)
    assert not list(private.glob("aecluster-*"))
