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

from training.config import MODEL_KINDS

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# The best recipe measured on every dataset tried (docs/quality.md): Fashion-MNIST ACC 0.74
# against the conv autoencoder's 0.52, digits 0.78 against 0.64.
DEFAULT_MODEL = "contrastive"

DESCRIPTION = """\
Learn an embedding of images (by default the contrastive recipe), cluster it with k-means
and export a model bundle (encoder and decoder SavedModels, joblib centroids, manifest)
that aecluster's service serves. Example:

  python -m training train --dataset fashion-mnist --out models/fashion/1
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


def _clusters(text: str) -> int | tuple[int, ...] | None:
    """K, ``auto``, or several K (``10,20``): one bundle per K from one training run."""
    if text == "auto":
        return None
    values = []
    for part in text.split(","):
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an integer, 'auto', or integers such as 10,20") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"--clusters must be at least 1, got {value}")
        values.append(value)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"--clusters {text} names a K twice")
    return values[0] if len(values) == 1 else tuple(values)


def _k_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(p) for p in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range such as 2-20") from None
    return low, high


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of sizes such as 32,64,128") from None


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
_positive_int = _number(int, lambda v: v >= 1, "expected an integer >= 1")
_count = _number(int, lambda v: v >= 0, "expected an integer >= 0")
# Model options are parsed for their form only; their bounds are checked once, when the
# config is made (training.config), with the same message from Python and the command line.
_FORMS: dict[str, Callable[[str], Any]] = {
    "int": _number(int, lambda v: True, ""), "float": _number(float, lambda v: True, ""),
    "sizes": _sizes, "choice": str,
}


def _add_model_options(train: argparse.ArgumentParser, shared: Any) -> None:
    """One flag per option of :mod:`training.config`, in groups by the part it sets."""
    from training import config

    groups: dict[str, Any] = {"": shared}
    for entry in config.flags().values():
        kinds = entry.kinds
        if len(kinds) == len(config.MODEL_KINDS):
            group_name = ""
        elif kinds == ("contrastive",):
            part = entry.paths["contrastive"][0] if len(entry.paths["contrastive"]) > 1 else ""
            group_name = f"contrastive recipe{': ' + part if part else ''} (--model contrastive)"
        else:
            group_name = f"autoencoders (--model {', '.join(kinds)})"
        if group_name not in groups:
            groups[group_name] = train.add_argument_group(group_name)
        group = groups[group_name]
        defaults: dict[str, list[str]] = {}
        for kind, value in entry.defaults.items():
            shown = (",".join(map(str, value)) if isinstance(value, tuple)
                     else "auto" if value is None else str(value))
            defaults.setdefault(shown, []).append(kind)
        if len(defaults) == 1:
            default_text = f"default: {next(iter(defaults))}"
        else:
            default_text = "default: " + "; ".join(
                f"{value} for {', '.join(kinds)}" for value, kinds in defaults.items())
        help_text = f"{entry.help} ({default_text})".replace("%", "%%")
        form = config.annotation_kind(entry.annotation)
        if form == "bool":
            group.add_argument(entry.flag, dest=entry.dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(entry.flag, dest=entry.dest, type=_FORMS[form],
                               choices=config.choices(entry.annotation) if form == "choice"
                               else None,
                               metavar=entry.metavar, default=argparse.SUPPRESS, help=help_text)


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options given on the command line (or by a preset), by destination."""
    from training import config

    return {dest: getattr(args, dest) for dest in config.flags() if hasattr(args, dest)}


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
    model.add_argument("--model", choices=list(MODEL_KINDS), default=DEFAULT_MODEL,
                       help="contrastive: the clustering recipe - augmentation-invariant conv "
                            "backbone, neighbour graph, head, decoder on the embedding (the "
                            "best measured, docs/quality.md); the seed autoencoders: dense "
                            "(fully connected), conv (strided convolutions), vae (variational; "
                            "the served embedding is the mean)")
    _add_model_options(train, model)
    run = train.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of the split, shuffling, initialisation and k-means")
    run.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                     help="write TensorBoard logs here")
    run.add_argument("--device", default="auto",
                     help="auto (all GPUs if any, else CPU), cpu, gpu, or gpu:0,1; with more "
                          "than one GPU training uses tf.distribute.MirroredStrategy")
    run.add_argument("--no-memory-growth", action="store_true",
                     help="let TensorFlow reserve all GPU memory up front")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic TensorFlow kernels: the same seed, data and hardware "
                          "give the same bundle bit for bit (slower, most on GPUs)")
    clus = train.add_argument_group("clustering")
    clus.add_argument("--clusters", type=_clusters, default=10, metavar="K|auto|K1,K2",
                      help="number of k-means clusters, or auto to choose K by silhouette over "
                           "--k-range (elbow and silhouette curves saved in the bundle's "
                           "report/); several, e.g. 10,20, cluster one training run's "
                           "embedding once per K and write a model per K beside --out: "
                           "REPO/NAME-k10/VERSION, REPO/NAME-k20/VERSION")
    clus.add_argument("--k-range", type=_k_range, default=(2, 20), metavar="LOW-HIGH",
                      help="K values tried by --clusters auto")
    clus.add_argument("--minibatch-threshold", type=_positive_int, default=100_000,
                      help="use mini-batch k-means above this many embeddings")
    clus.add_argument("--kmeans-restarts", type=_positive_int, default=40, metavar="N",
                      help="k-means runs from different seeded starts; the one with the "
                           "lowest inertia is kept")
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
    from training.config import model_config
    from training.job import TrainJob, run_training

    job = TrainJob(
        dataset=args.dataset,
        out=args.out,
        data=_data_options(args),
        model=model_config(args.model, model_options(args)),
        clusters=args.clusters,
        k_range=args.k_range,
        minibatch_threshold=args.minibatch_threshold,
        kmeans_restarts=args.kmeans_restarts,
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
    summaries = [{
        "bundle": str(out),
        "model": manifest.name,
        "version": manifest.version,
        "n_clusters": manifest.n_clusters,
        "seconds": manifest.training.seconds,
        "final_losses": manifest.training.final_losses,
        "evaluation": manifest.evaluation,
        "signed": args.signing_key is not None,
    } for _, out, manifest in result.bundles]
    # One K: the bundle's summary, as always; several: one entry per bundle.
    print(json.dumps(summaries[0] if len(summaries) == 1 else {"bundles": summaries}, indent=2))
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
