"""The training job: data -> recipe -> embeddings -> k-means -> evaluation -> bundle."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from service import bundle
from training import clustering, exemplars, export, metrics
from training.charts import plot_history
from training.config import AutoencoderConfig, ModelConfig, flat
from training.data import DataOptions, LoadedData, batches, load_dataset
from training.devices import configure_determinism, configure_devices, is_chief, select_strategy
from training.embed import Embedded, embed, keras_fn
from training.errors import ConfigError
from training.recipes import FittedNetworks
from training.recipes.autoencoder import check_autoencoder, fit_autoencoder_recipe
from training.recipes.contrastive import check_contrastive, fit_contrastive
from training.signing import Signer

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class TrainJob:
    """Everything one training run needs; built by the CLI, usable from Python."""

    dataset: str
    out: Path
    data: DataOptions
    model: ModelConfig  # the recipe and its options (training.config)
    # None: choose K by silhouette over k_range; several: one bundle per K from one training
    # run, each at REPO/NAME-k<K>/VERSION for out=REPO/NAME/VERSION (see outputs()).
    clusters: int | tuple[int, ...] | None = 10
    k_range: tuple[int, int] = (2, 20)
    minibatch_threshold: int = 100_000
    # k-means restarts (the lowest inertia is kept): at K = 10 on Fashion-MNIST 10 restarts
    # land on a partition 0.01 ACC worse on average than 40 do (docs/quality.md).
    kmeans_restarts: int = 40
    exemplars: int = 8  # thumbnails per cluster stored in the bundle; 0: none
    overwrite: bool = False
    tensorboard_dir: Path | None = None
    device: str = "auto"
    memory_growth: bool = True
    deterministic: bool = False  # deterministic TensorFlow kernels (process-wide; slower)
    seed: int = 0
    signing_key: Path | None = None  # EC private key (PEM): the version is signed (model.sig)

    def outputs(self) -> list[tuple[int | None, Path]]:
        """(K, version directory) of every bundle the job writes: ``out`` for one K; for
        several, a model per K beside it, ``NAME-k<K>``, so callers pick K by model name and
        each stays a complete bundle of the usual contract."""
        if not isinstance(self.clusters, tuple):
            return [(self.clusters, self.out)]
        return [(k, self.out.parent.parent / f"{self.out.parent.name}-k{k}" / self.out.name)
                for k in self.clusters]

    def hyperparameters(self) -> dict[str, Any]:
        """The settings recorded in the manifest, by option name (``train --<name>``), the
        model kind's own options first (paths left out: they are not portable)."""
        return {
            **flat(self.model),
            "clusters": (list(self.clusters) if isinstance(self.clusters, tuple)
                         else self.clusters if self.clusters is not None else "auto"),
            "k_range": list(self.k_range),
            "minibatch_threshold": self.minibatch_threshold,
            "kmeans_restarts": self.kmeans_restarts,
            "exemplars": self.exemplars,
            "val_fraction": self.data.val_fraction,
            "image_size": list(self.data.image_size) if self.data.image_size else None,
            "color": self.data.color,
            "deterministic": self.deterministic,
            "seed": self.seed,
        }


@dataclass
class TrainResult:
    """The exported manifest plus the in-memory objects it was made from (for tests/notebooks)."""

    manifest: bundle.Manifest
    out: Path
    history: dict[str, list[float]]
    model: Any
    kmeans: clustering.KMeansResult
    data: LoadedData
    # Every bundle written, (K, version directory, manifest); the first is the one above.
    bundles: list[tuple[int, Path, bundle.Manifest]] = field(default_factory=list)


def _check_job(job: TrainJob, data: LoadedData) -> None:
    if job.exemplars < 0:
        raise ConfigError(f"--exemplars must be >= 0 (0: none), got {job.exemplars}")
    for k, _ in job.outputs():
        if k is not None and not 1 <= k <= data.train.size:
            raise ConfigError(
                f"--clusters {k} is not possible with {data.train.size} training images: "
                f"choose 1..{data.train.size}"
            )
    low, high = job.k_range
    if job.clusters is None and not 2 <= low <= high:
        raise ConfigError(f"--k-range {low}-{high} must satisfy 2 <= low <= high")
    if job.clusters is None and high > data.train.size:
        raise ConfigError(f"--k-range goes up to {high} but there are {data.train.size} images")
    if isinstance(job.model, AutoencoderConfig):
        check_autoencoder(job.model, data)
    else:
        check_contrastive(job.model, data)


def run_training(job: TrainJob) -> TrainResult:
    """Train, cluster, evaluate and export; returns the written manifest."""
    started = time.monotonic()
    chief = is_chief()
    signer = None
    if chief:
        for _, out in job.outputs():  # fail before hours of training
            export.check_target(out, overwrite=job.overwrite)
        if job.signing_key is not None:
            signer = Signer(job.signing_key)  # a bad key fails here too, not after fitting
    devices = configure_devices(job.device, memory_growth=job.memory_growth)
    if job.deterministic:
        configure_determinism(job.seed)
    else:
        # Seed before any dataset or model exists. A tf.data shuffle built before the seed
        # is set draws its randomness from the process's history, so a second run in the
        # same process (a notebook, the quality bench) trained differently from the first.
        keras.utils.set_random_seed(job.seed)
    strategy = select_strategy(devices)
    logger.info("devices: %s; strategy: %s", ", ".join(devices), type(strategy).__name__)

    data = load_dataset(job.dataset, job.data)
    _check_job(job, data)
    shape = (data.height, data.width, data.channels)
    logger.info(
        "data: %s, %d train / %d held-out (%s), %dx%dx%d, %s",
        data.source, data.train.size, data.heldout.size if data.heldout else 0,
        data.heldout_kind, *shape, "labelled" if data.class_names else "unlabelled",
    )

    batch_size = job.model.batch_size
    heldout_batches = (
        batches(data.heldout, batch_size, shuffle=False, seed=job.seed)
        if data.heldout is not None else None
    )

    model: FittedNetworks
    if isinstance(job.model, AutoencoderConfig):
        model = fit_autoencoder_recipe(job.model, data, strategy=strategy, seed=job.seed,
                                       tensorboard_dir=job.tensorboard_dir)
    else:
        model = fit_contrastive(job.model, data, strategy=strategy, seed=job.seed,
                                tensorboard_dir=job.tensorboard_dir)
    history = model.history

    # Embeddings of the training images, in a fixed order and without augmentation.
    plain_train = batches(data.train, batch_size * 4, shuffle=False, seed=job.seed)
    encode, decode = keras_fn(model.encoder), keras_fn(model.decoder)
    train_emb = embed(encode, plain_train, total=data.train.size, decode=decode,
                      what="embedding train")
    # Once for every K: the scores of each bundle read the same held-out embeddings.
    held_emb = (embed(encode, heldout_batches, total=data.heldout.size, decode=decode,
                      what="embedding held-out")
                if heldout_batches is not None and data.heldout is not None else None)

    written: list[tuple[int, Path, bundle.Manifest]] = []
    first: clustering.KMeansResult | None = None
    for k, out in job.outputs():
        manifest, result = _cluster_and_export(
            job, k, out, data=data, model=model, train_emb=train_emb, held_emb=held_emb,
            signer=signer, chief=chief, started=started)
        written.append((manifest.n_clusters, out, manifest))
        first = first or result
    assert first is not None
    return TrainResult(manifest=written[0][2], out=written[0][1], history=history, model=model,
                       kmeans=first, data=data, bundles=written)


def _cluster_and_export(job: TrainJob, n_clusters: int | None, out: Path, *, data: LoadedData,
                        model: FittedNetworks, train_emb: Embedded,
                        held_emb: Embedded | None, signer: Signer | None,
                        chief: bool, started: float,
                        ) -> tuple[bundle.Manifest, clustering.KMeansResult]:
    """k-means at ``n_clusters`` (None: chosen by silhouette) on the training embeddings,
    evaluated and exported with the trained networks as the version at ``out``."""
    history = model.history
    report_writers: list[Callable[[Path], object]] = []
    if n_clusters is None:
        low, high = job.k_range
        selection = clustering.select_k(train_emb.embeddings, list(range(low, high + 1)),
                                        seed=job.seed)
        n_clusters = selection.chosen_k
        logger.info("k-means: chose K=%d by silhouette (elbow at K=%d)",
                    selection.chosen_k, selection.elbow_k)
        report_writers.append(lambda d: clustering.save_k_selection(selection, d))

    result = clustering.fit_kmeans(train_emb.embeddings, n_clusters, seed=job.seed,
                                   n_init=job.kmeans_restarts,
                                   minibatch_threshold=job.minibatch_threshold)
    train_ids, train_dist = bundle.assign(train_emb.embeddings, result.centroids)
    stats = clustering.distance_stats(train_dist, train_ids, n_clusters)
    # Embeddings are in data.train.dataset order, so their indices address the images.
    nearest_images = (
        exemplars.collect(data.train, train_ids, train_dist, n_clusters, job.exemplars)
        if job.exemplars > 0 else None
    )

    class_names = data.class_names
    label_map: dict[int, str] | None = None
    if class_names is not None and train_emb.has_labels:
        label_map = {
            c: class_names[lab]
            for c, lab in clustering.majority_label_map(train_ids, train_emb.labels,
                                                        n_clusters).items()
        }

    scores = _evaluate(data, held_emb, train_emb, train_ids, result.centroids, seed=job.seed)
    final_losses = {k: float(v[-1]) for k, v in history.items() if v}
    trained_epochs = model.decided.get("epochs", job.model.epochs)
    assert isinstance(trained_epochs, int)  # a recipe decides the epochs it was left
    info = bundle.TrainingInfo(
        data_source=data.source,
        model_kind=job.model.kind,
        loss=getattr(job.model, "loss", "mse"),  # the contrastive decoder's loss is mse
        labels_used=getattr(job.model, "loss", None) == "perceptual",
        hyperparameters={**job.hyperparameters(), **model.decided,
                         "clusters_chosen": n_clusters,
                         "kmeans_algorithm": result.algorithm},
        epochs=trained_epochs,
        final_losses=final_losses,
        n_train=data.train.size,
        n_heldout=data.heldout.size if data.heldout is not None else 0,
        heldout_kind=data.heldout_kind,
        seconds=round(time.monotonic() - started, 2),
    )
    report_writers.append(lambda d: _write_json(d / "history.json", history))
    report_writers.append(lambda d: _write_json(d / "evaluation.json", scores))
    partition = model.communities
    if partition is not None:
        report_writers.append(lambda d: _write_json(d / "communities.json", partition))
    if history.get("loss"):
        report_writers.append(lambda d: plot_history(history, d / "training_curves.png"))
    contents = export.BundleContents(
        input=bundle.InputSpec(height=data.height, width=data.width,
                               channels=3 if data.color_mode == "rgb" else 1,
                               color_mode=data.color_mode),
        centroids=result.centroids,
        cluster_stats=stats,
        training=info,
        class_names=class_names,
        label_map=label_map,
        evaluation=scores,
        report_writers=report_writers,
        exemplars=nearest_images,
    )
    if chief:
        manifest = export.export_bundle(out, encoder=model.encoder, decoder=model.decoder,
                                        contents=contents, overwrite=job.overwrite,
                                        signer=signer)
    else:
        # Multi-worker runs: every worker saves (variables may be read collectively), but
        # only the chief's copy lands in the repository; the others write to scratch.
        scratch = Path(tempfile.mkdtemp(prefix="aecluster-worker-"))
        try:
            manifest = export.export_bundle(scratch / out.parent.name / out.name,
                                            encoder=model.encoder, decoder=model.decoder,
                                            contents=contents)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return manifest, result




def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _evaluate(
    data: LoadedData,
    held_emb: Embedded | None,
    train_emb: Embedded,
    train_ids: np.ndarray,
    centroids: np.ndarray,
    *,
    seed: int,
) -> dict[str, Any]:
    """Scores on the held-out split, or on the training split when there is none."""
    if held_emb is not None:
        held = held_emb
        ids, _ = bundle.assign(held.embeddings, centroids)
        split: str = data.heldout_kind
    else:
        held, ids, split = train_emb, train_ids, "train"
    labels = held.labels if held.has_labels else None
    scores: dict[str, Any] = {"split": split}
    scores.update(metrics.clustering_scores(labels, ids, held.embeddings, seed=seed))
    scores["reconstruction_mse"] = held.reconstruction_mse
    scores["reconstruction_psnr"] = held.reconstruction_psnr
    return scores
