"""The ``contrastive`` recipe: augmentation-invariant backbone + neighbourhood head + decoder.

Three stages, each logged with its progress:

1. a conv backbone learns augmentation-invariant features (SimCLR's NT-Xent loss);
2. the fuzzy k-nearest-neighbour graph of those features (cosine) trains a small MLP
   head to a ``latent_dim`` embedding in which neighbours stay close (parametric UMAP) or,
   with ``graph_communities``, a softmax head learns the graph's Louvain communities
   (:mod:`training.recipes.communities`);
3. a conv decoder learns to reconstruct images from the frozen embedding (MSE), so the
   bundle still answers reconstructions.

The exported encoder is one network, images -> backbone -> unit norm -> head (with
``joint_embedding``, joined with the backbone -> projector -> unit norm branch), so the
service embeds and assigns new images exactly as during training. No label is read.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training import knn_graph
from training.config import AutoencoderConfig, ContrastiveConfig
from training.data import LoadedData, batches, to_numpy
from training.errors import ConfigError
from training.interrupt import StopOnInterrupt, stoppable
from training.loop import EpochLogger, fit_model
from training.models import build_networks
from training.models.contrastive import build_contrastive
from training.models.gradients import OrientationHistograms
from training.models.umap_head import UmapHeadConfig, build_head, fit_head
from training.models.whitening import PartialWhitening
from training.recipes import FittedNetworks, choices, communities

logger = logging.getLogger(__name__)

_MIN_STEPS = 1000


def check_contrastive(config: ContrastiveConfig, data: LoadedData) -> None:
    """Fail before fitting when ``data`` cannot train ``config``."""
    if data.train.size <= config.graph.neighbors:
        raise ConfigError(f"the contrastive recipe needs more than {config.graph.neighbors} "
                          f"training images (--neighbors), got {data.train.size}")
    graph_points = min(data.train.size, config.graph.max_points)
    if config.graph.communities > graph_points:
        raise ConfigError(f"{config.graph.communities} graph communities need at least as "
                          f"many training images; the graph has {graph_points}")


def fit_contrastive(config: ContrastiveConfig, data: LoadedData, *,
                    strategy: tf.distribute.Strategy, seed: int,
                    tensorboard_dir: Path | None = None) -> FittedNetworks:
    """Run the three stages on ``data.train`` (``data.heldout`` is not used in fitting)."""
    check_contrastive(config, data)
    shape = (data.height, data.width, data.channels)
    backbone_config, graph_config = config.backbone, config.graph
    batch_size = backbone_config.batch_size
    # A last batch of one image has no negatives: drop it. The filter hides the number of
    # batches from Keras, which would then warn that the data ran out; restate it.
    n_batches = math.ceil(data.train.size / batch_size) - (data.train.size % batch_size == 1)

    # What the options leave to the data, decided on the training images alone.
    images, _ = to_numpy(data.train)
    decided: dict[str, Any] = {}
    epochs = backbone_config.epochs
    if epochs is None:
        epochs = decided["epochs"] = choices.backbone_epochs(n_batches)
    flip = backbone_config.view_flip
    if flip is None:
        mirror = choices.mirror_check(images, seed=seed)
        flip = decided["view_flip"] = mirror.flip
        decided["mirror_ratio"] = mirror.ratio
        logger.info("views %s mirrored: mirror images sit %.2f times as far from the "
                    "training images as they are from each other (limit %.2f, %d sampled)",
                    "are" if flip else "are not", mirror.ratio, choices.MIRROR_RATIO_LIMIT,
                    mirror.sample)

    invert = backbone_config.invert
    if invert is None:
        background = choices.background_check(images, seed=seed)
        invert = decided["invert"] = background.invert
        decided["light_border_share"] = background.light_share
        logger.info("images are %sinverted: %.2f of their border is light (limit %.2f, %d "
                    "sampled)", "" if invert else "not ", background.light_share,
                    choices.LIGHT_BORDER_SHARE, background.sample)
    given = images  # as callers will send them: what the exported encoder takes
    if invert:
        # Everything below fits on 1 - x; the exported networks invert on the way in and out.
        images = 1.0 - images

    # Stage 1: augmentation-invariant backbone.
    with strategy.scope():
        contrastive = build_contrastive(
            shape, filters=backbone_config.filters, feature_dim=backbone_config.feature_dim,
            temperature=backbone_config.temperature, min_crop=backbone_config.min_crop,
            flip=flip, relight=backbone_config.view_relight,
            learning_rate=config.learning_rate, seed=seed)
    train = (batches(data.train, batch_size, shuffle=True, seed=seed,
                     augment_flip=config.augment_flip)
             .filter(lambda x, y: tf.shape(x)[0] >= 2)
             .apply(tf.data.experimental.assert_cardinality(n_batches)))
    if invert:
        train = train.map(lambda x, y: (1.0 - x, y))
    history = fit_model(contrastive, train, None,
                        epochs=epochs, label="contrastive", image_shape=shape,
                        learning_rate=config.learning_rate, tensorboard_dir=tensorboard_dir)
    backbone = contrastive.backbone

    # Stage 2: the neighbourhood head on the unit-normalised backbone features (joined, with
    # hog_weight, by the pixels' orientation histograms; each part partially whitened with
    # graph_whitening). The same layers feed the exported encoder, so served images get
    # exactly the features the graph was built on.
    unit_norm = keras.layers.UnitNormalization(name="features_unit_norm")
    histograms = OrientationHistograms(name="orientation_histograms")
    hog_scale = keras.layers.Rescaling(graph_config.hog_weight, name="hog_weight")
    joined = keras.layers.Concatenate(name="graph_features")
    whiten = ((PartialWhitening(graph_config.whitening, name="features_whitening"),
               PartialWhitening(graph_config.whitening, name="hog_whitening"))
              if graph_config.whitening else None)

    def graph_parts(images_in: tf.Tensor, backbone_out: tf.Tensor) -> list[tf.Tensor]:
        """The unit backbone features and, with hog_weight, the unit histograms."""
        parts = [unit_norm(backbone_out)]
        return [*parts, histograms(images_in)] if graph_config.hog_weight else parts

    def graph_features(images_in: tf.Tensor, backbone_out: tf.Tensor) -> tf.Tensor:
        parts = graph_parts(images_in, backbone_out)
        if whiten is not None:
            parts = [layer(part) for layer, part in zip(whiten, parts, strict=False)]
        if not graph_config.hog_weight:
            return parts[0]
        return joined([parts[0], hog_scale(parts[1])])

    feature_in = keras.Input(shape)
    started = time.perf_counter()
    if whiten is not None:
        raw = keras.Model(feature_in, graph_parts(feature_in, backbone(feature_in)),
                          name="raw_features").predict(images, batch_size=1024, verbose=0)
        for layer, part in zip(whiten, raw if isinstance(raw, list) else [raw], strict=False):
            layer.adapt(part)
        logger.info("graph features partially whitened (eigenvalue ** -%g per part), fitted on "
                    "%d training images", graph_config.whitening, len(images))
    normalised = keras.Model(feature_in, graph_features(feature_in, backbone(feature_in)),
                             name="features")
    features = normalised.predict(images, batch_size=1024, verbose=0)
    logger.info("features of %d training images in %.1f s", len(features),
                time.perf_counter() - started)
    rng = np.random.default_rng(seed)
    sample = (np.sort(rng.choice(len(features), graph_config.max_points, replace=False))
              if len(features) > graph_config.max_points else np.arange(len(features)))
    distances, indices = knn_graph.nearest_neighbors(features[sample], graph_config.neighbors)
    partition: dict[str, Any] | None = None
    if graph_config.communities:
        head, history["community_loss"], partition = _fit_community_head(
            features[sample], indices, config, seed=seed)
    else:
        graph = knn_graph.fuzzy_graph(distances, indices)
        logger.info("neighbour graph: %d points, %d edges", graph.n, graph.n_edges)
        keras.utils.set_random_seed(seed)
        head = build_head(features.shape[1], config.head.latent_dim, config.head.hidden)
        history["head_loss"] = fit_head(head, features[sample], graph, UmapHeadConfig(
            n_neighbors=graph_config.neighbors, min_dist=config.head.min_dist,
            epochs=config.head.epochs, hidden=config.head.hidden,
            learning_rate=config.learning_rate, max_points=graph_config.max_points), seed=seed)

    inputs = keras.Input(shape, name="images")
    seen = _inversion("invert_images")(inputs) if invert else inputs
    backbone_out = backbone(seen)
    embedding = head(graph_features(seen, backbone_out))
    if config.head.joint_embedding and not graph_config.communities:
        embedding = _joint(backbone_out, embedding, contrastive.projector,
                           head.predict(features[sample], batch_size=4096, verbose=0))
    encoder = keras.Model(inputs, keras.layers.Identity(name="embedding")(embedding),
                          name="encoder")

    # Stage 3: a decoder from the frozen embedding back to images.
    decoder = build_networks(AutoencoderConfig(kind="conv",
                                               latent_dim=int(encoder.output_shape[-1]),
                                               conv_filters=config.decoder.filters),
                             shape).decoder
    z = encoder.predict(given, batch_size=1024, verbose=0)
    history["decoder_loss"] = _fit_decoder(decoder, z, images, config, seed=seed)
    if invert:
        latent = keras.Input(decoder.input_shape[1:], name="embedding")
        decoder = keras.Model(latent, _inversion("invert_reconstruction")(decoder(latent)),
                              name="decoder")
    return FittedNetworks(encoder=encoder, decoder=decoder, history=history,
                          communities=partition, decided=decided)


def _inversion(name: str) -> keras.layers.Layer:
    """1 - x, as a layer of the exported networks (Keras' own, so the bundle loads anywhere)."""
    return keras.layers.Rescaling(-1.0, offset=1.0, name=name)


def _fit_community_head(features: np.ndarray, indices: np.ndarray, config: ContrastiveConfig,
                        *, seed: int) -> tuple[keras.Model, list[float], dict[str, Any]]:
    """A softmax head that predicts each image's Louvain community from its features.

    Returns the head, its losses and the partition's summary (the bundle's report).

    The communities follow the neighbour graph where k-means' straight boundaries would
    cut across it; the head carries them to new images, and its probabilities are the
    embedding, so k-means on them (the bundle's centroids, nearest-centroid serving) finds
    the communities again.
    """
    count, coarse_count = config.graph.communities, config.graph.coarse_communities
    adjacency = communities.knn_adjacency(indices)
    consensus: float | None = None

    def search(graph: communities.sp.csr_matrix, search_seed: int) -> communities.Partition:
        """The whole partition step for one seed: Louvain at the count, or coarse and split."""
        if not coarse_count:
            return communities.louvain_communities(graph, count, seed=search_seed)
        coarse = communities.louvain_communities(graph, coarse_count, seed=search_seed)
        return communities.split_communities(graph, features, coarse, count, seed=search_seed)

    if config.graph.community_searches > 1:
        partition, consensus = communities.consensus_partition(
            search, adjacency, config.graph.community_searches, seed=seed)
    else:
        partition = search(adjacency, seed)
    keras.utils.set_random_seed(seed)
    head = keras.Sequential(
        [keras.Input((features.shape[1],)),
         *[keras.layers.Dense(units, activation="relu") for units in config.head.hidden],
         keras.layers.Dense(count, activation="softmax", name="community_probabilities")],
        name="community_head")
    losses = _fit_arrays(head, features, partition.labels, loss="sparse_categorical_crossentropy",
                         min_epochs=config.head.epochs, label="community head", config=config,
                         seed=seed)
    agreement = float(np.mean(head.predict(features, batch_size=4096, verbose=0).argmax(axis=1)
                              == partition.labels))
    logger.info("community head: predicts the community of %.1f %% of the training images",
                100 * agreement)
    summary = {**partition.summary(), "searches": config.graph.community_searches,
               "consensus_agreement": None if consensus is None else round(consensus, 6),
               "graph_points": len(features), "neighbors": int(indices.shape[1]),
               "head_agreement": round(agreement, 6)}
    return head, losses, summary


def _joint(backbone_out: tf.Tensor, head_output: tf.Tensor, projector: keras.Model,
           head_train: np.ndarray) -> tf.Tensor:
    """The head's output joined with the unit-length projector output.

    The head's neighbourhoods keep fine structure; NT-Xent's projector, trained only to tell
    images apart up to augmentation, groups more coarsely, and k-means on the two joined
    finds groups closer to the classes than on either alone. The head's output is divided
    by its total spread on the training images (the root of its summed variances), so that
    it weighs in k-means' distances about as much as the unit-length projector output.
    """
    spread = float(np.sqrt(np.sum(np.var(head_train, axis=0))))
    if not math.isfinite(spread) or spread <= 0:
        raise ConfigError(f"the head's embedding has no spread ({spread}); it cannot be "
                          "joined with the projector output")
    logger.info("joint embedding: head output / %.4f joined with the unit-length projector "
                "output", spread)
    projected = keras.layers.UnitNormalization(name="projection_unit_norm")(
        projector(backbone_out))
    scaled = keras.layers.Rescaling(1.0 / spread, name="head_rescale")(head_output)
    return keras.layers.Concatenate(name="joint_embedding")([scaled, projected])


def _fit_decoder(decoder: keras.Model, z: np.ndarray, images: np.ndarray,
                 config: ContrastiveConfig,
                 *, seed: int) -> list[float]:
    trainer = keras.Sequential([keras.Input((z.shape[1],)), decoder], name="decoder_trainer")
    return _fit_arrays(trainer, z, images, loss="mse", min_epochs=config.decoder.epochs,
                       label="decoder", config=config, seed=seed)


def _fit_arrays(model: keras.Model, inputs: np.ndarray, targets: np.ndarray, *, loss: str,
                min_epochs: int, label: str, config: ContrastiveConfig,
                seed: int) -> list[float]:
    """Fit ``model`` on in-memory arrays with Adam; the per-epoch losses, all finite."""
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss)
    batch = 256
    dataset = (tf.data.Dataset.from_tensor_slices((inputs, targets))
               .shuffle(min(len(inputs), 65_536), seed=seed, reshuffle_each_iteration=True)
               .batch(batch).prefetch(2))
    # Small datasets give few steps per epoch: train at least _MIN_STEPS steps.
    epochs = max(min_epochs, math.ceil(_MIN_STEPS / math.ceil(len(inputs) / batch)))
    with stoppable():
        result = model.fit(dataset, epochs=epochs, verbose=0, shuffle=False,
                           callbacks=[EpochLogger(label, epochs, every=max(1, epochs // 10)),
                                      StopOnInterrupt()])
    losses = [float(v) for v in result.history["loss"]]
    if not all(math.isfinite(v) for v in losses):
        raise ConfigError(f"the {label} diverged (loss {losses[-1]}); lower --learning-rate")
    return losses
