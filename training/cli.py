"""Command line: ``python -m training {train,evaluate,to-tfrecord,report,sign}`` (also
``aecluster-train``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Train an autoencoder on images, cluster its embeddings with k-means and export a model
bundle (encoder and decoder SavedModels, joblib centroids, manifest) that aecluster's
service serves. Example:

  python -m training train --dataset fashion-mnist --model conv --latent 10 \\
      --clusters 20 --epochs 10 --out models/fashion/1
  python -m training evaluate --bundle models/fashion/1 --dataset fashion-mnist
  python -m training sign --bundle models/fashion/1 --signing-key signing-key.pem
"""


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("\u00d7", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 28 or 32x48") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1 or max(values) > 4096:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 28 or 32x48 (1..4096)")
    return values[0], values[1]


def _clusters(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor 'auto'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--clusters must be at least 1, got {value}")
    return value


def _k_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(p) for p in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range such as 2-20") from None
    return low, high


def _filters(text: str) -> tuple[int, ...]:
    try:
        filters = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of filter counts such as 32,64,128"
        ) from None
    if any(f < 1 for f in filters):
        raise argparse.ArgumentTypeError(f"every filter count must be >= 1, got {text!r}")
    return filters


def _number(
    kind: type[int] | type[float], valid: Callable[[float], bool], rule: str
) -> Callable[[str], Any]:
    """An argparse type: parse ``kind`` and check it; ``rule`` says what was expected."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {value}")
        return value

    return parse


_fraction = _number(float, lambda v: 0.0 <= v < 1.0, "--val-fraction must be in [0, 1)")
_non_negative = _number(float, lambda v: v >= 0, "expected a value >= 0")
_positive_int = _number(int, lambda v: v >= 1, "expected an integer >= 1")
_count = _number(int, lambda v: v >= 0, "expected an integer >= 0")
_graph_communities = _number(int, lambda v: v == 0 or v >= 2, "expected 0 (off) or an integer >= 2")


def _add_data_options(parser: argparse.ArgumentParser, *, for_training: bool) -> None:
    from training.data import SOURCE_HELP

    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="digits", metavar="SPEC",
                       help=f"where the images come from (default: digits). {SOURCE_HELP}")
    group.add_argument("--data-dir", type=Path, default=None,
                       help="folder of the fashion-mnist IDX files "
                            "(default: /usr/share/datasets/fashion-mnist)")
    group.add_argument("--labels", type=Path, default=None, metavar="CSV",
                       help="images:DIR only: CSV of 'path,label' lines giving the labels")
    group.add_argument("--strict", action="store_true",
                       help="images:DIR only: stop at a corrupt or non-image file instead of "
                            "skipping it with a counted warning")
    if for_training:
        group.add_argument("--image-size", type=_image_size, default=None, metavar="HxW",
                           help="resize every image to this size, e.g. 28 or 64x48 "
                                "(default: the source's own size)")
        group.add_argument("--color", choices=["gray", "rgb", "red"], default=None,
                           help="colour mode: gray (luminance), rgb, or red (keep only the red "
                                "channel, as for satellite chips); default: the source's own")
        group.add_argument("--val-fraction", type=_fraction, default=0.1,
                           help="held-out share for sources without their own test split "
                                "(default: 0.1)")


# Named recipes for `train --preset NAME`: each sets these options' defaults, so any option
# given on the command line still wins. Keys are the argparse destinations.
PRESETS: dict[str, dict[str, Any]] = {
    # The recommended recipe for about 20 groups on Fashion-MNIST (docs/quality.md: the
    # contrastive-crop1-relight-hog-graph20-e30-split10-whiten25-consensus8
    # row): whole-image views with a second light change, 30 backbone epochs, the pixels'
    # edge-direction histograms beside the features, both parts partially whitened, Louvain
    # at 10 communities with the most spread split in two until 20, and that partition step
    # rerun on the consensus of 8 whole searches. The first recipe at majority >= 0.80 on
    # each of the protocol's three seeds (docs/quality.md).
    "contrastive-graph20-consensus": {"model": "contrastive", "min_crop": 1.0,
                                      "view_relight": True, "graph_communities": 20,
                                      "coarse_communities": 10, "hog_weight": 0.5,
                                      "graph_whitening": 0.25, "community_searches": 8,
                                      "epochs": 30, "clusters": 20},
}


def preset_options(name: str) -> str:
    """The command-line options a preset stands for, e.g. ``--model contrastive ...``."""
    words = []
    for key, value in PRESETS[name].items():
        option = "--" + key.replace("_", "-")
        words.append(option if value is True else f"{option} {value}")
    return " ".join(words)


def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """The parser of `python -m training` and its sub-commands.

    With ``preset`` (a key of :data:`PRESETS`), ``train``'s defaults are that recipe's.
    """
    parser = argparse.ArgumentParser(
        prog="python -m training", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="progress is logged at INFO on stderr (default: INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train, cluster, evaluate and export a bundle",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_options(train, for_training=True)
    model = train.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="a named recipe whose settings become the defaults (options given "
                            "here still win): " + "; ".join(
                                f"{name} = {preset_options(name)}" for name in sorted(PRESETS)))
    model.add_argument("--model", choices=["dense", "conv", "vae", "contrastive"], default="conv",
                       help="dense: fully connected; conv: strided convolutions; "
                            "vae: variational (the served embedding is the mean); contrastive: "
                            "the clustering recipe - augmentation-invariant conv backbone, "
                            "neighbourhood (parametric UMAP) head, decoder on the embedding")
    model.add_argument("--latent", type=_positive_int, default=10,
                       help="size of the bottleneck embedding")
    model.add_argument("--loss", choices=["mse", "bce", "perceptual"], default="mse",
                       help="reconstruction loss; perceptual first trains a small classifier on "
                            "the labels (needs labels; recorded in the manifest)")
    model.add_argument("--kl-weight", type=_non_negative, default=1.0,
                       help="weight of the KL term (vae only)")
    model.add_argument("--denoise", type=_non_negative, default=0.0, metavar="SIGMA",
                       help="add Gaussian noise of this standard deviation to the inputs only")
    model.add_argument("--augment-flip", action="store_true",
                       help="random horizontal flips of training images")
    fit = train.add_argument_group("fitting")
    fit.add_argument("--epochs", type=int, default=None,
                     help="autoencoder epochs (default 10), or the contrastive backbone's "
                          "(default 15)")
    fit.add_argument("--batch-size", type=_positive_int, default=None,
                     help="batch size (default 64; contrastive: 256, each image's negatives "
                          "are the rest of its batch)")
    fit.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    fit.add_argument("--classifier-epochs", type=_positive_int, default=3,
                     help="epochs of the feature classifier (perceptual loss only)")
    fit.add_argument("--seed", type=int, default=0,
                     help="seed of the split, shuffling, initialisation and k-means")
    fit.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                     help="write TensorBoard logs here")
    fit.add_argument("--device", default="auto",
                     help="auto (all GPUs if any, else CPU), cpu, gpu, or gpu:0,1; with more "
                          "than one GPU training uses tf.distribute.MirroredStrategy")
    fit.add_argument("--no-memory-growth", action="store_true",
                     help="let TensorFlow reserve all GPU memory up front")
    fit.add_argument("--deterministic", action="store_true",
                     help="deterministic TensorFlow kernels: the same seed, data and hardware "
                          "give the same bundle bit for bit (slower, most on GPUs)")
    rec = train.add_argument_group("contrastive recipe (--model contrastive)")
    rec.add_argument("--temperature", type=_number(float, lambda v: v > 0, "expected > 0"),
                     default=0.5, help="NT-Xent temperature")
    rec.add_argument("--min-crop", type=_number(float, lambda v: 0 < v <= 1, "expected in (0, 1]"),
                     default=0.4, help="smallest share of the image area a random crop keeps")
    rec.add_argument("--no-view-flip", dest="view_flip", action="store_false",
                     help="never mirror the views (for images whose mirror is something else: "
                          "digits, text, oriented scans)")
    rec.add_argument("--view-relight", action="store_true",
                     help="a second, milder brightness/contrast change on each view (wider "
                          "light invariance)")
    rec.add_argument("--joint-embedding", action=argparse.BooleanOptionalAction, default=True,
                     help="embed as the head's output joined with the unit-length "
                          "projector output (latent + 128 numbers); "
                          "--no-joint-embedding: the head's latent numbers alone")
    rec.add_argument("--graph-communities", type=_graph_communities, default=0, metavar="N",
                     help="embed as the probabilities of N Louvain communities of the features' "
                          "neighbour graph, learnt by a softmax head (0: off, the default); "
                          "better groups at --clusters near N (docs/quality.md)")
    rec.add_argument("--community-searches", type=_positive_int, default=1, metavar="S",
                     help="run the --graph-communities partition step (with "
                          "--coarse-communities, the coarse search and all its splits) S times "
                          "from different seeds, reweight the neighbour graph's edges by how "
                          "often those searches keep them inside a community, and run the step "
                          "once more on that graph (1: one search, no consensus; a search "
                          "takes about 10 s on 60,000 images; docs/quality.md)")
    rec.add_argument("--coarse-communities", type=_graph_communities, default=0, metavar="C",
                     help="find C Louvain communities first, then split the most spread "
                          "(largest within-community sum of squared distances) in two until "
                          "there are --graph-communities (0: off, the default; docs/quality.md)")
    rec.add_argument("--hog-weight", type=_number(float, lambda v: 0 <= v < float("inf"),
                                                  "expected a number >= 0"),
                     default=0.0, metavar="W",
                     help="join W times the pixels' edge-direction histograms (HOG-like, 4x4 "
                          "cells, 9 bins, computed in the encoder) to the backbone features "
                          "the neighbour graph and head see (0: off, the default)")
    rec.add_argument("--graph-whitening", type=_number(float, lambda v: 0 <= v <= 0.5,
                                                       "expected a number in [0, 0.5]"),
                     default=0.0, metavar="P",
                     help="partially whiten the backbone features and the histograms the "
                          "neighbour graph and head see: principal axes scaled by "
                          "eigenvalue**-P, fitted on the training images, a fixed layer of "
                          "the encoder (0: off, the default; 0.5: full whitening; docs/quality.md)")
    rec.add_argument("--backbone-filters", type=_filters, default=(32, 64, 128),
                     metavar="F1,F2,...",
                     help="filters of the backbone's 3x3 stride-2 convolutions, one level each "
                          "(default 32,64,128; 64,128,256 costs about 2.6 times as much per "
                          "epoch)")
    rec.add_argument("--neighbors", type=_positive_int, default=15,
                     help="neighbours per image in the graph the head preserves")
    rec.add_argument("--head-epochs", type=_positive_int, default=5,
                     help="epochs of the neighbourhood head")
    rec.add_argument("--decoder-epochs", type=_positive_int, default=5,
                     help="epochs of the decoder trained on the frozen embedding")
    clus = train.add_argument_group("clustering")
    clus.add_argument("--clusters", type=_clusters, default=10, metavar="K|auto",
                      help="number of k-means clusters, or auto to choose K by silhouette over "
                           "--k-range (elbow and silhouette curves saved in the bundle's report/)")
    clus.add_argument("--k-range", type=_k_range, default=(2, 20), metavar="LOW-HIGH",
                      help="K values tried by --clusters auto")
    clus.add_argument("--minibatch-threshold", type=_positive_int, default=100_000,
                      help="use mini-batch k-means above this many embeddings")
    out = train.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, metavar="REPO/NAME/VERSION",
                     help="version directory to create, e.g. models/fashion/1")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an existing version at --out")
    out.add_argument("--exemplars", type=_count, default=8, metavar="N",
                     help="store the N training images nearest to each centroid in the bundle "
                          "as PNG thumbnails (the service shows them); 0: none")
    out.add_argument("--signing-key", type=Path, default=None, metavar="PEM",
                     help="sign the version with this elliptic-curve private key (OpenSSF "
                          "model_signing, written to model.sig inside the atomic export); "
                          "services with AEC_TRUSTED_KEYS load only signed versions. The key "
                          "is checked before training starts (docs/security.md)")

    sig = sub.add_parser("sign",
                         help="sign an existing bundle version (model.sig), e.g. one trained "
                              "before signing or to re-sign with a new key",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sig.add_argument("--bundle", type=Path, required=True, metavar="REPO/NAME/VERSION",
                     help="bundle version directory; its files must match its manifest")
    sig.add_argument("--signing-key", type=Path, required=True, metavar="PEM",
                     help="elliptic-curve private key (P-256, P-384 or P-521) in PEM form")

    ev = sub.add_parser("evaluate", help="score a bundle on a labelled split; prints JSON",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ev.add_argument("--bundle", type=Path, required=True, metavar="REPO/NAME/VERSION",
                    help="bundle version directory")
    _add_data_options(ev, for_training=False)
    ev.add_argument("--split", choices=["heldout", "train", "all"], default="heldout",
                    help="which split: heldout is the source's test split, or the same "
                         "--val-fraction split the bundle was trained with")
    ev.add_argument("--batch-size", type=_positive_int, default=256, help="batch size")
    ev.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the scores to this file")

    tfr = sub.add_parser("to-tfrecord",
                         help="write any dataset as TFRecord files of tf.train.Example",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_options(tfr, for_training=True)
    tfr.add_argument("--out", type=Path, required=True, metavar="FILE",
                     help="TFRecord file to write")
    tfr.add_argument("--train-only", action="store_true",
                     help="leave out the held-out split")

    rep = sub.add_parser("report",
                         help="write a visual report (report.html) of a bundle on a dataset, "
                              "and optionally TensorBoard projector files",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    rep.add_argument("--bundle", type=Path, required=True, metavar="REPO/NAME/VERSION",
                     help="bundle version directory")
    _add_data_options(rep, for_training=False)
    rep.add_argument("--out", type=Path, required=True, metavar="DIR",
                     help="folder for report.html (self-contained) and its figures/")
    rep.add_argument("--split", choices=["heldout", "train", "all"], default="heldout",
                     help="which split the images come from, as for evaluate")
    rep.add_argument("--max-images", type=_positive_int, default=5000,
                     help="seeded sample of the split that every panel is drawn from")
    rep.add_argument("--map-points", type=_positive_int, default=3000,
                     help="at most this many points in the t-SNE map (the slow step)")
    rep.add_argument("--projector", type=Path, default=None, metavar="DIR",
                     help="also write TensorBoard projector files (tensors.tsv, metadata.tsv, "
                          "sprite.png, projector_config.pbtxt) here: tensorboard --logdir DIR")
    rep.add_argument("--seed", type=int, default=0, help="seed of the sample and the maps")
    rep.add_argument("--batch-size", type=_positive_int, default=256, help="batch size")
    if preset is not None:
        train.set_defaults(**PRESETS[preset])
    return parser


def _data_options(args: argparse.Namespace) -> Any:
    from training.data import DataOptions

    return DataOptions(
        data_dir=args.data_dir,
        image_size=getattr(args, "image_size", None),
        color=getattr(args, "color", None),
        labels_file=args.labels,
        val_fraction=getattr(args, "val_fraction", 0.1),
        seed=getattr(args, "seed", 0),
        strict=args.strict,
    )


def _train(args: argparse.Namespace) -> int:
    from training.models import ModelConfig
    from training.job import TrainJob, run_training

    job = TrainJob(
        dataset=args.dataset,
        out=args.out,
        data=_data_options(args),
        model=ModelConfig(kind=args.model, latent_dim=args.latent, loss=args.loss,
                          kl_weight=args.kl_weight, denoise_sigma=args.denoise,
                          learning_rate=args.learning_rate,
                          temperature=args.temperature,
                          min_crop=args.min_crop, view_flip=args.view_flip,
                          view_relight=args.view_relight,
                          joint_embedding=args.joint_embedding,
                          graph_communities=args.graph_communities,
                          community_searches=args.community_searches,
                          coarse_communities=args.coarse_communities,
                          hog_weight=args.hog_weight,
                          graph_whitening=args.graph_whitening,
                          backbone_filters=args.backbone_filters,
                          head_neighbors=args.neighbors, head_epochs=args.head_epochs,
                          decoder_epochs=args.decoder_epochs, seed=args.seed),
        epochs=args.epochs,
        batch_size=args.batch_size,
        clusters=args.clusters,
        k_range=args.k_range,
        augment_flip=args.augment_flip,
        classifier_epochs=args.classifier_epochs,
        minibatch_threshold=args.minibatch_threshold,
        exemplars=args.exemplars,
        overwrite=args.overwrite,
        tensorboard_dir=args.tensorboard,
        device=args.device,
        memory_growth=not args.no_memory_growth,
        deterministic=args.deterministic,
        seed=args.seed,
        signing_key=args.signing_key,
    )
    result = run_training(job)
    manifest = result.manifest
    summary = {
        "bundle": str(result.out),
        "model": manifest.name,
        "version": manifest.version,
        "n_clusters": manifest.n_clusters,
        "seconds": manifest.training.seconds,
        "final_losses": manifest.training.final_losses,
        "evaluation": manifest.evaluation,
        "signed": args.signing_key is not None,
    }
    print(json.dumps(summary, indent=2))
    return 0


def _sign(args: argparse.Namespace) -> int:
    from training.signing import Signer, sign_existing

    started = time.monotonic()
    signer = Signer(args.signing_key)
    signature = sign_existing(args.bundle, signer)
    print(json.dumps({"bundle": str(args.bundle), "signature": str(signature),
                      "key": str(args.signing_key),
                      "seconds": round(time.monotonic() - started, 3)}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_bundle

    scores = evaluate_bundle(args.bundle, args.dataset, split=args.split,
                             options=_data_options(args), batch_size=args.batch_size)
    text = json.dumps(scores, indent=2)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.json)
    print(text)
    return 0


def _to_tfrecord(args: argparse.Namespace) -> int:
    from training.data import load_dataset, write_tfrecord

    data = load_dataset(args.dataset, _data_options(args))
    count = write_tfrecord(data, args.out, include_heldout=not args.train_only)
    print(json.dumps({"out": str(args.out), "records": count, "source": data.source}))
    return 0


def _report(args: argparse.Namespace) -> int:
    from training.report import ReportOptions, build_report

    options = ReportOptions(split=args.split, max_images=args.max_images, seed=args.seed,
                            batch_size=args.batch_size, map_points=args.map_points,
                            projector_dir=args.projector, data=_data_options(args))
    result = build_report(args.bundle, args.dataset, args.out, options)
    summary = {
        "report": str(result.html),
        "bytes": result.html.stat().st_size,
        "figures": len(result.figures),
        "images": result.n_images,
        "seconds": result.seconds,
        "omitted": result.omitted,
        "projector": str(result.projector.directory) if result.projector else None,
    }
    print(json.dumps(summary, indent=2))
    return 0


def missing_training_packages(distribution: str = "aecluster") -> list[str]:
    """The packages of the ``train`` extra (pyproject.toml) that are not installed: what a
    serve-only install (``pip install aecluster``) lacks. Empty when the project is not
    installed at all (run from a source tree: nothing to compare against)."""
    from packaging.requirements import Requirement

    try:
        declared = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return []
    missing = []
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is None or not requirement.marker.evaluate({"extra": "train"}):
            continue
        if requirement.marker.evaluate({"extra": ""}):
            continue  # a core dependency, not the extra's
        try:
            metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(requirement.name)
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        # Parse again with the preset's settings as defaults: explicit options still win.
        args = build_parser(args.preset).parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # TensorFlow's Python logger repeats SavedModel chatter ("Assets written to") at INFO.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    if getattr(args, "preset", None):
        logging.getLogger(__name__).info(
            "preset %s: %s", args.preset,
            ", ".join(f"{key}={getattr(args, key)}" for key in PRESETS[args.preset]))
    missing = missing_training_packages()
    if missing:  # before the first import of one: a sentence, not an ImportError traceback
        print(f"error: training needs the `train` extra, and {', '.join(missing)} "
              "is not installed: pip install 'aecluster[train]' (the serving image has no "
              "training; use the training image, Dockerfile target `train`)", file=sys.stderr)
        return EXIT_USAGE
    from service.bundle import BundleError
    from training import interrupt
    from training.errors import TrainingError

    interrupt.install()  # Ctrl-C during a fit stops after the current step
    handlers = {"train": _train, "evaluate": _evaluate, "to-tfrecord": _to_tfrecord,
                "report": _report, "sign": _sign}
    try:
        return handlers[args.command](args)
    except (TrainingError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: no bundle was written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
