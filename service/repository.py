"""The model repository: which versions are loaded, hot reload, and safe unloading.

Follows TensorFlow Serving's default version policy: for every model directory under the
repository, the highest *complete* version (manifest present, checksums matching) is
served. With trusted keys (``AEC_TRUSTED_KEYS``), a version's signature is checked before
any of its files is read (service/signature.py). A new version is loaded and warmed up
beside the old one, then becomes the default in one assignment; requests that already hold
the old version finish on it, and only then is it stopped and dropped. A version that fails
to load is logged, counted in ``aecluster_model_load_failures_total`` and reported by the
status API, while whatever was serving keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from service import bundle, heap, signature
from service.batcher import Batcher
from service.errors import NotFound, Unavailable
from service.metrics import Metrics, VersionMetrics
from service.settings import Settings
from service.types import BatchOutput

logger = logging.getLogger(__name__)

State = Literal["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]


class Runtime(Protocol):
    """What the repository needs of a model runtime (service.runtime.ModelRuntime)."""

    def run(self, images: np.ndarray, *, with_reconstruction: bool) -> BatchOutput: ...

    def warmup(self) -> None: ...


RuntimeFactory = Callable[[Path, bundle.Manifest, np.ndarray], Runtime]


@dataclass(frozen=True)
class VersionStatus:
    """One row of TensorFlow Serving's ModelVersionStatus."""

    version: int
    state: State
    error_code: str = "OK"
    error_message: str = ""


@dataclass(eq=False)
class LoadedVersion:
    """A version in memory: its manifest, runtime and batcher, and who is using it."""

    name: str
    version: int
    path: Path
    manifest: bundle.Manifest
    runtime: Runtime
    batcher: Batcher
    outlier_threshold: np.ndarray  # float32 [K]: per-cluster p99 training distance
    state: State = "AVAILABLE"
    active: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # (model, version) as metric labels, built once: requests are counted under them.
    labels: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.idle.set()
        self.labels = (self.name, str(self.version))


# A failed version is retried when its files change, but no sooner than this after its
# last attempt, doubling per failure up to the maximum: a copy still in progress is not
# re-verified (every file hashed) on every scan.
RETRY_BACKOFF_S = 1.0
RETRY_BACKOFF_MAX_S = 60.0


@dataclass(frozen=True)
class _Failure:
    fingerprint: tuple[tuple[str, int, int], ...]  # the version's files when it failed
    message: str
    attempts: int
    next_try: float  # time.monotonic(): no retry before it, changed or not


class ModelRepository:
    """Loads, serves and hot-reloads the models of one repository directory."""

    def __init__(
        self, settings: Settings, metrics: Metrics, runtime_factory: RuntimeFactory
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._factory = runtime_factory
        self._root = settings.model_repo
        # name -> version -> loaded; the default of each model is its highest AVAILABLE version.
        self._loaded: dict[str, dict[int, LoadedVersion]] = {}
        self._failures: dict[tuple[str, int], _Failure] = {}
        self._loading: set[tuple[str, int]] = set()
        self._unloaded: dict[tuple[str, int], VersionStatus] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self._scan_lock = asyncio.Lock()
        self._stopping = False
        self._signatures: signature.Verifier | None = None
        if settings.trusted_keys.strip():
            self._signatures = signature.Verifier(signature.load_keys(settings.trusted_keys),
                                                  required=settings.signatures_required)
        # Verified copies of signed versions are loaded from here (private to this process,
        # made at the first signed load), each removed once its version is in memory.
        self._staging: Path | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load what is in the repository now, then poll it for changes."""
        if not self._root.is_dir():
            logger.warning("model repository %s does not exist (yet); polling it", self._root)
        self._log_trust()
        await self.poll_once()
        if self._settings.poll_seconds > 0:
            self._poll_task = asyncio.create_task(self._poll_forever(), name="repository-poll")

    def _log_trust(self) -> None:
        if self._signatures is None:
            logger.warning("bundles are not signature-checked (AEC_TRUSTED_KEYS is not set): "
                           "whoever can write %s can run code in this server "
                           "(docs/security.md)", self._root)
            return
        logger.info("bundles must be signed by a trusted key (%s) before any of their files "
                    "is read", ", ".join(self._signatures.key_names))
        if not self._signatures.required:
            logger.warning("unsigned versions are loaded all the same "
                           "(AEC_REQUIRE_SIGNATURE=false); signed ones must verify")

    async def stop(self, timeout: float) -> None:
        """Stop polling, then let every batcher finish its queue within ``timeout``."""
        self._stopping = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        versions = [lv for by_version in self._loaded.values() for lv in by_version.values()]
        await asyncio.gather(*(lv.batcher.stop(timeout) for lv in versions))
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)

    async def _poll_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._settings.poll_seconds)
            try:
                await self.poll_once()
            except Exception:  # a bad scan must never stop future scans
                logger.exception("repository scan of %s failed", self._root)

    # ---- scanning --------------------------------------------------------------------

    def _wanted(self) -> dict[str, int]:
        """Model name -> highest complete version on disk (names that are not valid are skipped)."""
        wanted: dict[str, int] = {}
        if not self._root.is_dir():
            return wanted
        for model_dir in sorted(self._root.iterdir()):
            if not model_dir.is_dir() or not bundle.MODEL_NAME_PATTERN.match(model_dir.name):
                continue
            versions = [
                v for v in bundle.list_versions(model_dir)
                if not self._failed_unchanged(model_dir.name, v)
            ]
            if versions:
                wanted[model_dir.name] = versions[-1]
        return wanted

    def _failed_unchanged(self, name: str, version: int) -> bool:
        """Whether a failed version should be skipped by this scan.

        It is tried again once any of its files changed (added, removed, resized, touched)
        and its backoff has passed. Copy tools (rsync, ``aws s3 sync``) write in name
        order, so ``manifest.json`` can land before ``report/``: such a version fails
        until the copy completes, and then loads.
        """
        failure = self._failures.get((name, version))
        if failure is None:
            return False
        if time.monotonic() < failure.next_try:
            return True
        return _fingerprint(self._root / name / str(version)) == failure.fingerprint

    async def poll_once(self) -> None:
        """One scan: load new highest versions, unload replaced or removed ones."""
        async with self._scan_lock:
            changed = unloaded = False
            wanted = self._wanted()
            for name, version in wanted.items():
                current = self._loaded.get(name, {})
                if version not in current:
                    await self._load(name, version)
                    changed = True
            for name, by_version in list(self._loaded.items()):
                keep = wanted.get(name)
                for version, lv in list(by_version.items()):
                    on_disk = (lv.path / bundle.MANIFEST_FILE).is_file()
                    default = self._default_version(name)
                    if not on_disk or (keep is not None and version != keep and default != version):
                        await self._unload(lv, reason="removed" if not on_disk else "replaced")
                        changed = unloaded = True
            if changed:
                # Once per change of the loaded set, not per request: see service/heap.py.
                heap.settle(reclaim=unloaded)

    async def _load(self, name: str, version: int) -> None:
        path = self._root / name / str(version)
        key = (name, version)
        self._loading.add(key)
        started = time.monotonic()
        logger.info("loading %s version %d from %s", name, version, path)
        try:
            manifest, runtime = await asyncio.to_thread(self._load_sync, path)
        except Exception as exc:
            self._loading.discard(key)
            known = isinstance(exc, bundle.BundleError)
            message = str(exc) if known else f"{type(exc).__name__}: {exc}"
            # Callers read this in the status API: paths relative to the repository, not the
            # server's file system layout (issue 39).
            message = message.replace(f"{self._root.resolve()}/", "").replace(
                f"{self._root}/", "")
            if self._staging is not None:  # a verified copy stands for its version
                message = message.replace(f"{self._staging}/", "")
            attempts = self._failures[key].attempts + 1 if key in self._failures else 1
            backoff = min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S * 2 ** (attempts - 1))
            self._failures[key] = _Failure(_fingerprint(path), message, attempts,
                                           time.monotonic() + backoff)
            self._metrics.model_load_failures_total.labels(model=name).inc()
            logger.error("could not load %s version %d: %s", name, version, message,
                         exc_info=not known)
            return
        self._loading.discard(key)
        self._failures.pop(key, None)
        settings = self._settings
        thresholds = np.array([s.p99 for s in manifest.cluster_stats], dtype=np.float32)
        batcher = Batcher(
            lambda images, rec: runtime.run(images, with_reconstruction=rec),
            model=name, version=version, max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_batch_delay_ms / 1000.0, max_queue=settings.max_queue,
            metrics=self._metrics,
            observe=VersionMetrics(self._metrics, name, version, thresholds).observe,
        )
        await batcher.start()
        lv = LoadedVersion(name, version, path, manifest, runtime, batcher, thresholds)
        # The swap: one dict assignment, no await in between, so a request sees either
        # the old default or the new one, never neither.
        self._loaded.setdefault(name, {})[version] = lv
        self._unloaded.pop(key, None)
        self._metrics.model_info.labels(**_info_labels(manifest)).set(1)
        logger.info("%s version %d ready in %.1f s (warmed up)", name, version,
                    time.monotonic() - started)

    def _load_sync(self, path: Path) -> tuple[bundle.Manifest, Runtime]:
        if self._signatures is None:
            return self._load_from(path, path)
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="aecluster-verified-"))
        staged = self._staging / path.parent.name / path.name
        shutil.rmtree(staged, ignore_errors=True)
        try:
            # First: nothing of the version is read (parsed, unpickled, loaded) before its
            # signature verifies, and then only the verified copy is.
            signed = self._stage(self._signatures, path, staged)
            return self._load_from(staged if signed else path, path)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _load_from(self, source: Path, path: Path) -> tuple[bundle.Manifest, Runtime]:
        """Load the version ``path`` from ``source`` (itself, or its verified copy)."""
        manifest = bundle.read_manifest(source)
        name, version = bundle.parse_version_dir(path)
        if (manifest.name, manifest.version) != (name, version):
            raise bundle.BundleError(
                f"{path} holds {manifest.name} version {manifest.version} according to its "
                "manifest; the directory and the manifest must agree"
            )
        # Verifies the checksums before unpickling.
        centroids = bundle.load_centroids(source, manifest)
        runtime = self._factory(source, manifest, centroids)
        runtime.warmup()
        return manifest, runtime

    def _stage(self, verifier: signature.Verifier, path: Path, staged: Path) -> bool:
        """Verify ``path`` and copy it to ``staged``; False: unsigned and accepted as is."""
        started = time.monotonic()
        key = verifier.stage(path, staged)
        where = path.relative_to(self._root).as_posix()
        if key is None:
            logger.warning("%s is not signed; loading it because AEC_REQUIRE_SIGNATURE is "
                           "false", where)
            return False
        logger.info("%s: signature verified with trusted key %s and copied in %.2f s", where,
                    key, time.monotonic() - started)
        return True

    async def _unload(self, lv: LoadedVersion, *, reason: str) -> None:
        lv.state = "UNLOADING"
        by_version = self._loaded.get(lv.name, {})
        by_version.pop(lv.version, None)
        if not by_version:
            self._loaded.pop(lv.name, None)
        logger.info("unloading %s version %d (%s)", lv.name, lv.version, reason)
        # Requests that hold this version finish on it; then its queue drains and it stops.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lv.idle.wait(), timeout=self._settings.drain_seconds)
        await lv.batcher.stop(self._settings.drain_seconds)
        lv.state = "END"
        self._unloaded[(lv.name, lv.version)] = VersionStatus(lv.version, "END")
        self._metrics.forget_version(lv.name, lv.version)

    # ---- lookups ---------------------------------------------------------------------

    def _default_version(self, name: str) -> int | None:
        available = [v for v, lv in self._loaded.get(name, {}).items() if lv.state == "AVAILABLE"]
        return max(available) if available else None

    def get(self, name: str, version: int | None = None) -> LoadedVersion:
        """The loaded version asked for (None: the model's default), or NotFound/Unavailable."""
        by_version = self._loaded.get(name)
        if not by_version:
            if any(key[0] == name for key in self._loading):
                raise Unavailable(f"model {name!r} is loading; retry shortly")
            if any(key[0] == name for key in self._failures):
                raise Unavailable(f"model {name!r} failed to load: {self._failure_text(name)}")
            known = ", ".join(sorted(self._loaded)) or "none"
            raise NotFound(f"model {name!r} is not served here (models: {known})")
        if version is None:
            default = self._default_version(name)
            if default is None:
                raise Unavailable(f"model {name!r} has no version ready")
            return by_version[default]
        lv = by_version.get(version)
        if lv is None or lv.state != "AVAILABLE":
            loaded = ", ".join(str(v) for v in sorted(by_version)) or "none"
            raise NotFound(
                f"version {version} of model {name!r} is not loaded (loaded versions: {loaded})"
            )
        return lv

    def _failure_text(self, name: str) -> str:
        return "; ".join(f"version {v}: {f.message}" for (n, v), f in self._failures.items()
                         if n == name)

    @contextlib.contextmanager
    def acquire(self, name: str, version: int | None = None) -> Iterator[LoadedVersion]:
        """Hold a version for one request so it is not stopped while the request runs."""
        lv = self.get(name, version)
        lv.active += 1
        lv.idle.clear()
        try:
            yield lv
        finally:
            lv.active -= 1
            if lv.active == 0:
                lv.idle.set()

    def loaded_versions(self) -> list[LoadedVersion]:
        """Every loaded, available version, sorted by name then version."""
        return sorted(
            (lv for by_version in self._loaded.values() for lv in by_version.values()
             if lv.state == "AVAILABLE"),
            key=lambda lv: (lv.name, lv.version),
        )

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """TensorFlow Serving's model status rows for ``name`` (one version or all known)."""
        rows: dict[int, VersionStatus] = {}
        for (n, v), st in self._unloaded.items():
            if n == name:
                rows[v] = st
        for (n, v), failure in self._failures.items():
            if n == name:
                rows[v] = VersionStatus(v, "END", "UNKNOWN", failure.message)
        for n, v in self._loading:
            if n == name:
                rows[v] = VersionStatus(v, "LOADING")
        for v, lv in self._loaded.get(name, {}).items():
            rows[v] = VersionStatus(v, lv.state)
        if not rows:
            raise NotFound(f"model {name!r} is not known here")
        if version is not None:
            if version not in rows:
                raise NotFound(f"version {version} of model {name!r} is not known here")
            return [rows[version]]
        return [rows[v] for v in sorted(rows, reverse=True)]

    def has_ready_model(self) -> bool:
        return bool(self.loaded_versions())

    def known_models(self) -> dict[str, Any]:
        """Name -> list of loaded versions (for logs and the index page)."""
        return {name: sorted(by_version) for name, by_version in self._loaded.items()}


def _fingerprint(version_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, mtime in ns) of every file under ``version_dir``, sorted."""
    entries = []
    for path in version_dir.rglob("*"):
        try:
            stat = path.stat()
        except OSError:  # removed while we looked: the next scan sees the change
            continue
        if path.is_file():
            entries.append((path.relative_to(version_dir).as_posix(), stat.st_size,
                            stat.st_mtime_ns))
    return tuple(sorted(entries))


def _info_labels(manifest: bundle.Manifest) -> dict[str, str]:
    spec = manifest.input
    return {
        "model": manifest.name,
        "version": str(manifest.version),
        "latent_dim": str(manifest.latent_dim),
        "n_clusters": str(manifest.n_clusters),
        "input": f"{spec.height}x{spec.width}x{spec.channels}",
        "model_kind": manifest.training.model_kind,
    }
