"""Write a model bundle atomically (see ``service/bundle.py`` for the contract).

Everything goes into a hidden temporary directory beside the target; the manifest is
written last inside it, and one ``rename`` makes the version appear. A reader polling the
repository (the service's hot reload) therefore never sees half a version, and an
interrupted export (Ctrl-C, crash, full disk) leaves only a temporary directory that is
removed on the way out. With a signing key the signature (``model.sig``) is written after
the manifest, still inside the temporary directory: a signed version appears signed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import keras
import numpy as np
import tensorflow as tf

from service import bundle
from training import exemplars as exemplar_files
from training import tfserving
from training.errors import ExportError
from training.signing import Signer

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"


@dataclass
class BundleContents:
    """What training hands to :func:`export_bundle` besides the Keras models."""

    input: bundle.InputSpec
    centroids: np.ndarray
    cluster_stats: list[dict[str, Any]]
    training: bundle.TrainingInfo
    class_names: list[str] | None = None
    label_map: dict[int, str] | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    # Callables that write files into the report/ directory they are given: plots are
    # drawn straight into the temporary directory, never into a live version.
    report_writers: Sequence[Callable[[Path], object]] = ()
    # Cluster -> training images (float32 [H, W, C] in [0, 1]) nearest to its centroid,
    # nearest first; stored as exemplars/<cluster>/<i>.png. None: no exemplars.
    exemplars: Mapping[int, Sequence[np.ndarray]] | None = None


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour the bundle depends on."""
    import platform

    import scipy
    import sklearn

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "scipy": scipy.__version__,
        "joblib": joblib.__version__,
    }


def check_target(out_dir: Path, *, overwrite: bool) -> tuple[str, int]:
    """Validate the target ``REPO/<name>/<version>`` before any expensive work starts."""
    try:
        name, version = bundle.parse_version_dir(out_dir)
    except bundle.BundleError as exc:
        raise ExportError(str(exc)) from exc
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not overwrite:
            raise ExportError(
                f"{out_dir} already holds a version; pass --overwrite to replace it, "
                f"or export to {out_dir.parent / str(version + 1)}"
            )
    return name, version


def save_signature_model(
    model: keras.Model,
    path: Path,
    *,
    input_name: str,
    output_name: str,
    input_shape: tuple[int, ...],
) -> None:
    """Save ``model`` as a SavedModel whose ``serving_default`` maps input_name -> output_name."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(tensor: tf.Tensor) -> dict[str, tf.Tensor]:
        return {output_name: model(tensor, training=False)}

    archive.add_endpoint(
        name=bundle.SIGNATURE,
        fn=serve,
        input_signature=[tf.TensorSpec([None, *input_shape], tf.float32, name=input_name)],
    )
    archive.write_out(str(path), verbose=False)


def export_bundle(
    out_dir: Path,
    *,
    encoder: keras.Model,
    decoder: keras.Model,
    contents: BundleContents,
    overwrite: bool = False,
    signer: Signer | None = None,
) -> bundle.Manifest:
    """Export encoder, decoder, centroids, report files, exemplars and manifest to ``out_dir``,
    and the signature over all of them when a ``signer`` is given."""
    name, version = check_target(out_dir, overwrite=overwrite)
    spec = contents.input
    centroids = np.asarray(contents.centroids, dtype=np.float32)
    latent_dim = int(centroids.shape[1])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        logger.info("export: writing %s (temporary %s)", out_dir, tmp.name)
        save_signature_model(
            encoder, tmp / bundle.ENCODER_DIR, input_name=bundle.ENCODER_INPUT,
            output_name=bundle.ENCODER_OUTPUT, input_shape=(spec.height, spec.width, spec.channels),
        )
        save_signature_model(
            decoder, tmp / bundle.DECODER_DIR, input_name=bundle.DECODER_INPUT,
            output_name=bundle.DECODER_OUTPUT, input_shape=(latent_dim,),
        )
        joblib.dump(bundle.centroid_payload(centroids), tmp / bundle.CENTROIDS_FILE)
        # At the root, where tensorflow/serving looks; from the same arrays as the joblib
        # file and the manifest, and checksummed and signed with them below.
        started = time.perf_counter()
        tfserving.write_tfserving_model(
            tmp, encoder=encoder, decoder=decoder, spec=spec, centroids=centroids,
            thresholds=tfserving.thresholds_of(contents.cluster_stats),
        )
        logger.info("export: TF Serving SavedModel written in %.1fs",
                    time.perf_counter() - started)
        if contents.report_writers:
            report_dir = tmp / bundle.REPORT_DIR
            report_dir.mkdir()
            for write in contents.report_writers:
                write(report_dir)
        exemplars = None
        if contents.exemplars is not None:
            exemplars = exemplar_files.write(tmp, contents.exemplars)
            logger.info("export: %d exemplar thumbnails for %d clusters",
                        sum(len(v) for v in exemplars.values()), len(exemplars))
        manifest = bundle.Manifest(
            name=name,
            version=version,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            input=spec,
            latent_dim=latent_dim,
            n_clusters=int(centroids.shape[0]),
            cluster_stats=[bundle.ClusterStats(**s) for s in contents.cluster_stats],
            class_names=contents.class_names,
            label_map=(
                {str(k): v for k, v in sorted(contents.label_map.items())}
                if contents.label_map is not None else None
            ),
            training=contents.training,
            evaluation=contents.evaluation,
            library_versions=library_versions(),
            files=bundle.hash_files(tmp),
            exemplars=exemplars,
        )
        bundle.write_manifest(tmp, manifest)  # its presence marks the version complete
        if signer is not None:
            signer.sign(tmp)  # over every file, the manifest included: so after it
        _swap_into_place(tmp, out_dir)
    except BaseException:
        # KeyboardInterrupt included: nothing half-written may stay behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("export: %s complete (%d files%s)", out_dir, len(manifest.files) + 1,
                ", signed" if signer is not None else "")
    return manifest


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing version is moved aside first, then removed."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = out_dir.parent / f"{TEMP_PREFIX}old-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
