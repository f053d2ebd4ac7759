"""The model bundle contract shared by training (writer) and service (reader).

A model repository follows TensorFlow Serving's layout, ``REPO/<name>/<version>/``::

    encoder/           SavedModel, signature serving_default: images [N,H,W,C] -> embedding [N,D]
    decoder/           SavedModel, signature serving_default: embedding [N,D] -> reconstruction
    centroids.joblib   {"format": 1, "metric": "euclidean", "centroids": float32 [K,D]}
    report/            optional files for people (curves, history); checksummed like the rest
    exemplars/         optional PNG thumbnails per cluster, exemplars/<cluster>/<i>.png,
                       nearest to the centroid first; listed in the manifest's ``exemplars``
    saved_model.pb,    optional: one SavedModel for stock TensorFlow Serving, the whole job in
    variables/, ...    its graph (signatures serving_default and predict_bytes)
    manifest.json      written last; its presence marks the version complete
    model.sig          optional: OpenSSF model_signing signature over every other file,
                       manifest.json included (service/signature.py); not in ``files``

This module never imports TensorFlow: reading and checking a bundle must stay cheap,
and the service's core decides where TensorFlow runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
# model_signing's conventional name. It signs the manifest, so the manifest cannot list it.
SIGNATURE_FILE = "model.sig"
ENCODER_DIR = "encoder"
DECODER_DIR = "decoder"
CENTROIDS_FILE = "centroids.joblib"
REPORT_DIR = "report"
EXEMPLARS_DIR = "exemplars"
CENTROIDS_FORMAT = 1

# Signature and tensor names inside the SavedModels; the service and TF Serving clients
# address the models by these names, so they are part of the contract.
SIGNATURE = "serving_default"
ENCODER_INPUT = "images"
ENCODER_OUTPUT = "embedding"
DECODER_INPUT = "embedding"
DECODER_OUTPUT = "reconstruction"

# The version's own SavedModel for stock TensorFlow Serving (training/tfserving.py): at the
# version's root, where tensorflow/serving looks for it, beside the files above. Optional:
# versions exported before it have none, and the service never reads it.
TFSERVING_MODEL_FILE = "saved_model.pb"
# Its two signatures and their tensors are the ones the service's TF Serving API answers to,
# so a client cannot tell the two servers apart by names.
BYTES_SIGNATURE = "predict_bytes"
BYTES_INPUT = "image_bytes"
OUTPUT_NAMES = ("cluster_id", "distance", "is_outlier", "reconstruction", "embedding")

# Model names become directory names and URL path segments: keep them boring.
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# The one shape an exemplar path may have: the service maps URLs onto it, so nothing else
# (no "..", no other directory) can ever be named through the exemplar endpoint.
# Used with fullmatch (a "$" would also accept a trailing newline).
EXEMPLAR_PATH_PATTERN = re.compile(r"exemplars/(0|[1-9][0-9]{0,8})/(0|[1-9][0-9]{0,8})\.png")

ColorMode = Literal["gray", "rgb", "red"]


class BundleError(Exception):
    """A bundle is missing, incomplete, malformed or does not match its checksums."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """What the encoder expects and how raw images are turned into it."""

    height: int = Field(gt=0, description="Input height in pixels.")
    width: int = Field(gt=0, description="Input width in pixels.")
    channels: Literal[1, 3] = Field(description="1 for gray/red, 3 for rgb.")
    color_mode: ColorMode = Field(
        description="gray: luminance of the decoded image; rgb: three channels; "
        "red: only the red channel of an RGB image."
    )
    value_scale: Literal["unit"] = Field(
        default="unit",
        description="unit: float32 in [0, 1]; 8-bit images are divided by 255.",
    )
    resize: Literal["bilinear", "area", "nearest"] = Field(
        default="bilinear", description="Method used to bring other sizes to height x width."
    )
    preserve_aspect_ratio: bool = Field(
        default=False, description="False: images are stretched to height x width, as in training."
    )

    @model_validator(mode="after")
    def _channels_match_mode(self) -> InputSpec:
        expected = 3 if self.color_mode == "rgb" else 1
        if self.channels != expected:
            raise ValueError(
                f"color_mode {self.color_mode!r} needs {expected} channel(s), not {self.channels}"
            )
        return self


class ClusterStats(_Strict):
    """Distances of the training images assigned to one cluster (Euclidean, embedding space)."""

    cluster: int = Field(ge=0)
    count: int = Field(ge=0)
    mean: float
    p50: float
    p95: float
    p99: float


class TrainingInfo(_Strict):
    """How the bundle was made: enough to reproduce it and to judge it."""

    data_source: str
    model_kind: Literal["dense", "conv", "vae", "contrastive"]
    loss: Literal["mse", "bce", "perceptual"]
    labels_used: bool = Field(description="True when labels influenced fitting (perceptual loss).")
    hyperparameters: dict[str, Any]
    epochs: int = Field(ge=0)
    final_losses: dict[str, float]
    n_train: int = Field(ge=0)
    n_heldout: int = Field(ge=0)
    heldout_kind: Literal["test-split", "val-fraction", "none"]
    seconds: float = Field(ge=0, description="Wall time of fitting, embedding and k-means.")


class Manifest(_Strict):
    """Contents of ``manifest.json``; docs/bundle.md describes every field."""

    schema_version: Literal[1] = 1
    name: str
    version: int = Field(gt=0)
    created_at: str
    input: InputSpec
    latent_dim: int = Field(gt=0)
    n_clusters: int = Field(gt=0)
    distance_metric: Literal["euclidean"] = "euclidean"
    outlier_threshold: Literal["p99"] = Field(
        default="p99",
        description="An image is an outlier when its distance exceeds this per-cluster statistic.",
    )
    cluster_stats: list[ClusterStats]
    class_names: list[str] | None = None
    label_map: dict[str, str] | None = Field(
        default=None, description="Cluster id (as a string, JSON keys are strings) -> label name."
    )
    training: TrainingInfo
    evaluation: dict[str, Any] = Field(default_factory=dict)
    library_versions: dict[str, str]
    files: dict[str, str] = Field(description="Relative POSIX path -> SHA-256 of every other file.")
    exemplars: dict[str, list[str]] | None = Field(
        default=None,
        description="Cluster id (as a string) -> PNG thumbnails of training images nearest to "
        "its centroid, nearest first, as paths exemplars/<cluster>/<i>.png listed in files. "
        "None: the bundle has none (bundles from before exemplars existed).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if not MODEL_NAME_PATTERN.match(self.name):
            raise ValueError(f"model name {self.name!r} is not a valid name")
        if len(self.cluster_stats) != self.n_clusters:
            raise ValueError(
                f"cluster_stats has {len(self.cluster_stats)} entries "
                f"for {self.n_clusters} clusters"
            )
        if [s.cluster for s in self.cluster_stats] != list(range(self.n_clusters)):
            raise ValueError("cluster_stats must list clusters 0..K-1 in order")
        if self.label_map is not None:
            bad = [k for k in self.label_map if not k.isdigit() or int(k) >= self.n_clusters]
            if bad:
                raise ValueError(f"label_map names clusters that do not exist: {bad}")
        for required in (CENTROIDS_FILE, f"{ENCODER_DIR}/saved_model.pb",
                         f"{DECODER_DIR}/saved_model.pb"):
            if required not in self.files:
                raise ValueError(f"files does not list {required}")
        if self.exemplars is not None:
            self._check_exemplars(self.exemplars)
        return self

    def _check_exemplars(self, exemplars: dict[str, list[str]]) -> None:
        clusters = {str(c) for c in range(self.n_clusters)}
        bad = [k for k in exemplars if k not in clusters]
        if bad:
            raise ValueError(f"exemplars names clusters that do not exist: {bad[:5]}")
        for key, paths in exemplars.items():
            for path in paths:
                match = EXEMPLAR_PATH_PATTERN.fullmatch(path)
                if match is None or int(match.group(1)) != int(key):
                    raise ValueError(
                        f"exemplar path {path!r} of cluster {key} must be "
                        f"{EXEMPLARS_DIR}/{int(key)}/<index>.png"
                    )
                if path not in self.files:
                    raise ValueError(f"exemplar {path!r} is not listed (checksummed) in files")
            if len(set(paths)) != len(paths):
                raise ValueError(f"exemplars of cluster {key} list a path twice")

    def exemplar_paths(self, cluster: int) -> list[str]:
        """Exemplar paths of ``cluster``, nearest to the centroid first (empty: none)."""
        if self.exemplars is None:
            return []
        return list(self.exemplars.get(str(cluster), []))

    def cluster_label(self, cluster: int) -> str | None:
        """The label mapped to ``cluster``, or None when the bundle has no labels."""
        if self.label_map is None:
            return None
        return self.label_map.get(str(cluster))


def exemplar_path(cluster: int, index: int) -> str:
    """The bundle-relative path of exemplar ``index`` of ``cluster`` (writer and reader agree)."""
    return f"{EXEMPLARS_DIR}/{cluster}/{index}.png"


def validate_model_name(name: str) -> str:
    """Return ``name`` if it can be a model directory and URL segment, else raise."""
    if not MODEL_NAME_PATTERN.match(name) or name in {".", ".."}:
        raise BundleError(
            f"model name {name!r} is not allowed: use letters, digits, '_', '-', '.', "
            "starting with a letter or digit"
        )
    return name


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large variables files do not fill memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _bundle_files(version_dir: Path) -> Iterable[Path]:
    outside = {version_dir / MANIFEST_FILE, version_dir / SIGNATURE_FILE}
    for path in sorted(version_dir.rglob("*")):
        if path.is_file() and path not in outside:
            yield path


def hash_files(version_dir: Path) -> dict[str, str]:
    """SHA-256 of every file under ``version_dir`` except the top-level manifest and
    signature (which covers the manifest, so is written after it)."""
    return {
        path.relative_to(version_dir).as_posix(): sha256_file(path)
        for path in _bundle_files(version_dir)
    }


def read_manifest(version_dir: Path) -> Manifest:
    """Parse and validate ``manifest.json``; raises :class:`BundleError` naming the problem."""
    path = version_dir / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{version_dir} is not a complete bundle: {MANIFEST_FILE} is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not readable JSON: {exc}") from exc
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise BundleError(f"{path} does not follow the bundle contract: {problems}") from exc


def write_manifest(version_dir: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` (flushed and fsynced: its presence means 'complete')."""
    path = version_dir / MANIFEST_FILE
    data = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False)
    with path.open("w", encoding="utf-8") as handle:
        handle.write(data + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return path


def verify_checksums(version_dir: Path, manifest: Manifest) -> None:
    """Raise :class:`BundleError` unless the files on disk are exactly those listed.

    Runs before anything is unpickled or loaded: joblib files execute code when loaded,
    so a bundle is trusted only when every file matches its manifest and none was added.
    """
    actual = hash_files(version_dir)
    missing = sorted(set(manifest.files) - set(actual))
    extra = sorted(set(actual) - set(manifest.files))
    changed = sorted(p for p in manifest.files.keys() & actual.keys()
                     if manifest.files[p] != actual[p])
    problems = []
    if missing:
        problems.append(f"missing {missing[:5]}")
    if extra:
        problems.append(f"not listed in the manifest {extra[:5]}")
    if changed:
        problems.append(f"checksum mismatch {changed[:5]}")
    if problems:
        raise BundleError(f"{version_dir} failed verification: " + "; ".join(problems))


def read_verified(version_dir: Path, manifest: Manifest, relative: str) -> bytes:
    """The bytes of one listed file, refused unless they still match the manifest's SHA-256.

    For files served long after the load-time check (exemplars): the directory may have
    been changed since, and changed bytes must never reach a caller.
    """
    expected = manifest.files.get(relative)
    if expected is None:
        raise BundleError(f"{relative!r} is not a file of {manifest.name} version "
                          f"{manifest.version}")
    path = version_dir / relative
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path} could not be read: {exc.strerror or exc}") from exc
    if hashlib.sha256(data).hexdigest() != expected:
        raise BundleError(
            f"{path} no longer matches the SHA-256 in its manifest (changed on disk after "
            "the bundle was written)"
        )
    return data


def load_centroids(version_dir: Path, manifest: Manifest, *, verify: bool = True) -> np.ndarray:
    """Return the float32 [K, D] centroids, after checking the bundle's checksums."""
    from service import centroid_file  # local: only loaders pay for joblib

    if verify:
        verify_checksums(version_dir, manifest)
    try:
        payload = centroid_file.load(version_dir / CENTROIDS_FILE)
    except centroid_file.RefusedPickle as exc:
        raise BundleError(f"{CENTROIDS_FILE} was refused, nothing in it was run: {exc}") from exc
    except Exception as exc:  # joblib raises many types for a bad pickle
        raise BundleError(f"{CENTROIDS_FILE} could not be loaded: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CENTROIDS_FORMAT:
        raise BundleError(f"{CENTROIDS_FILE} is not a format-{CENTROIDS_FORMAT} centroid file")
    centroids = np.asarray(payload.get("centroids"))
    expected = (manifest.n_clusters, manifest.latent_dim)
    if centroids.shape != expected or centroids.dtype != np.float32:
        raise BundleError(
            f"{CENTROIDS_FILE} holds {centroids.dtype} {centroids.shape}, "
            f"expected float32 {expected}"
        )
    if not np.all(np.isfinite(centroids)):
        raise BundleError(f"{CENTROIDS_FILE} contains NaN or infinite values")
    return centroids


def centroid_payload(centroids: np.ndarray) -> dict[str, Any]:
    """What training writes to ``centroids.joblib`` (plain arrays: no estimator pickles)."""
    return {
        "format": CENTROIDS_FORMAT,
        "metric": "euclidean",
        "centroids": np.ascontiguousarray(centroids, dtype=np.float32),
    }


def assign(embeddings: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference assignment: nearest centroid by Euclidean distance.

    Returns (cluster ids int64 [N], distances float32 [N]). The service's runtime and the
    bundle's TF Serving SavedModel compute the same thing in their graphs; this is the
    definition all are tested against.

    The squared distance is summed over the coordinate differences. The shortcut
    ``||e||^2 - 2 e.c + ||c||^2`` (scikit-learn's) cancels: with ``||e||^2`` near 100 a
    float32 distance of 0.3 was off by up to 5e-5, and by a different amount at each batch
    size, so one image's distance depended on the requests it was batched with.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    cen = np.asarray(centroids, dtype=np.float32)
    n, k = emb.shape[0], cen.shape[0]
    ids = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    # [rows, K, D] differences at a time: about 16 MB, whatever K and D are.
    rows = max(1, (1 << 22) // max(1, k * cen.shape[1]))
    for start in range(0, n, rows):
        diff = emb[start:start + rows, None, :] - cen[None, :, :]
        squared = np.sum(diff * diff, axis=2)
        chosen = np.argmin(squared, axis=1)
        ids[start:start + rows] = chosen
        dist[start:start + rows] = np.sqrt(squared[np.arange(len(chosen)), chosen])
    return ids, dist


def list_versions(model_dir: Path) -> list[int]:
    """Versions under ``model_dir`` that are complete (manifest present), ascending.

    Temporary export directories (``.tmp-...``) and non-integer names are ignored, as
    TensorFlow Serving ignores them.
    """
    if not model_dir.is_dir():
        return []
    versions = []
    for child in model_dir.iterdir():
        is_version = child.is_dir() and child.name.isdigit() and int(child.name) > 0
        if is_version and (child / MANIFEST_FILE).is_file():
            versions.append(int(child.name))
    return sorted(versions)


def parse_version_dir(path: Path) -> tuple[str, int]:
    """Split ``.../<name>/<version>`` into (name, version) or raise :class:`BundleError`."""
    version_text, name = path.name, path.parent.name
    if not version_text.isdigit() or int(version_text) <= 0:
        raise BundleError(
            f"{path} is not a version directory: the last path part must be a positive "
            "integer, as in REPO/<name>/<version> (TensorFlow Serving's layout)"
        )
    return validate_model_name(name), int(version_text)
