"""The options of each model kind, declared once: type, default, bounds and help live here.

``python -m training train`` generates its model flags from these classes (as the service
generates its flags from :class:`service.settings.Settings`), :mod:`bench.quality` builds
its rows through :func:`model_config`, and every check of a value happens when a config is
made. A bad value raises :class:`~training.errors.ConfigError` naming the flag.

- :class:`AutoencoderConfig`: the seed autoencoders (``dense``, ``conv``, ``vae``).
- :class:`ContrastiveConfig`: the clustering recipe, in four parts: the augmentation-invariant
  backbone, the neighbour graph of its features, the head that embeds them, and the decoder
  trained on the frozen embedding.

This module imports no TensorFlow, so ``train --help`` stays fast.
"""

from __future__ import annotations

import numbers
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from training.errors import ConfigError

ModelKind = Literal["dense", "conv", "vae", "contrastive"]
AutoencoderKind = Literal["dense", "conv", "vae"]
LossKind = Literal["mse", "bce", "perceptual"]
MODEL_KINDS: tuple[str, ...] = typing.get_args(ModelKind)


def _integer(value: object) -> object:
    # Strict validation refuses "3" and True; numpy integers from a caller's arrays are fine.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _real(value: object) -> object:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def _sequence(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value  # JSON and YAML give lists


Int = Annotated[int, BeforeValidator(_integer)]
Float = Annotated[float, BeforeValidator(_real)]
Sizes = Annotated[tuple[Annotated[Int, Field(ge=1)], ...], BeforeValidator(_sequence)]


def option(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None,
           **bounds: Any) -> Any:
    """A field that is also a ``train`` flag: ``--<name>`` unless ``flag`` says otherwise."""
    extra = {"flag": flag, "metavar": metavar}
    if isinstance(default, float):
        bounds["allow_inf_nan"] = False
    return Field(default=default, description=help,
                 json_schema_extra={k: v for k, v in extra.items() if v is not None}, **bounds)


def _zero_or_two_up(value: int) -> int:
    if value == 1:
        raise ValueError("must be 0 (off) or an integer >= 2")
    return value


Communities = Annotated[Int, Field(ge=0), AfterValidator(_zero_or_two_up)]


class Options(BaseModel):
    """A frozen set of options; a bad value raises :class:`ConfigError`, naming its flag."""

    # Strict: a string, or true/false where a number belongs, is a mistake to report, not
    # a value to convert.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(describe(exc, type(self))) from None


class AutoencoderConfig(Options):
    """A seed autoencoder: ``dense`` (fully connected), ``conv`` (strided convolutions) or
    ``vae`` (variational; the served embedding is the posterior mean)."""

    kind: AutoencoderKind = "conv"
    latent_dim: Int = option(10, "size of the bottleneck embedding", flag="--latent", ge=1)
    loss: LossKind = option("mse", "reconstruction loss; perceptual first trains a small "
                            "classifier on the labels (needs labels; recorded in the manifest)")
    kl_weight: Float = option(1.0, "weight of the KL term (vae only); the reconstruction term "
                              "is summed per image, so small images may want less", ge=0)
    denoise_sigma: Float = option(0.0, "add Gaussian noise of this standard deviation to the "
                                  "inputs only (targets stay clean)", flag="--denoise",
                                  metavar="SIGMA", ge=0, le=1)
    dense_units: Sizes = option((128, 64), "hidden layers of the dense encoder (mirrored in "
                                "its decoder)", metavar="U1,U2,...")
    conv_filters: Sizes = option((32, 32, 32), "filters of the conv/vae encoder's 3x3 "
                                 "stride-2 convolutions; only as many are used as keep the "
                                 "feature map at least 2x2", metavar="F1,F2,...", min_length=1)
    epochs: Int = option(10, "training epochs", ge=0)
    batch_size: Int = option(64, "batch size", ge=1)
    learning_rate: Float = option(1e-3, "Adam learning rate", gt=0)
    augment_flip: bool = option(False, "random horizontal flips of training images")
    classifier_epochs: Int = option(3, "epochs of the feature classifier (perceptual loss only)",
                                    ge=1)


class BackboneConfig(Options):
    """The conv backbone, trained so that two random views of an image agree (NT-Xent)."""

    filters: Sizes = option((32, 64, 128), "filters of the backbone's 3x3 stride-2 "
                            "convolutions, one level each (64,128,256 costs about 2.6 times "
                            "as much per epoch)", flag="--backbone-filters",
                            metavar="F1,F2,...", min_length=1)
    feature_dim: Int = option(256, "size of the backbone's feature vector", ge=1)
    temperature: Float = option(0.5, "NT-Xent temperature", gt=0)
    min_crop: Float = option(0.4, "smallest share of the image area a random crop keeps",
                             gt=0, le=1)
    view_flip: bool | None = option(None, "mirror the views at random; auto: when mirror "
                                    "images look like training images (garments, scenes), not "
                                    "where a mirror is something else (digits, text)")
    invert: bool | None = option(None, "train on inverted images (1 - x), and serve them "
                                 "inverted the same way; auto: when the images' border is "
                                 "light (dark things on a light background)")
    view_relight: bool = option(False, "a second, milder brightness/contrast change on each "
                                "view (wider light invariance)")
    epochs: Int | None = option(None, "backbone epochs; auto: 15, or as many as make 1,000 "
                                "steps on a small dataset", ge=0)
    batch_size: Int = option(256, "batch size; each image's negatives are the rest of its "
                             "batch", ge=2)


class GraphConfig(Options):
    """The k-nearest-neighbour graph of the backbone's features, and its communities."""

    neighbors: Int = option(15, "neighbours per image in the graph the head preserves", ge=1)
    max_points: Int = option(70_000, "build the graph on a seeded sample of at most this many "
                             "training images", flag="--graph-max-points", ge=1)
    hog_weight: Float = option(0.0, "join W times the pixels' edge-direction histograms (4x4 "
                               "cells, 9 bins, computed in the encoder) to the features the "
                               "graph and head see (0: off)", metavar="W", ge=0)
    whitening: Float = option(0.0, "partially whiten the features and histograms the graph "
                              "and head see: principal axes scaled by eigenvalue**-P, fitted on "
                              "the training images (0: off; 0.5: full whitening)",
                              flag="--graph-whitening", metavar="P", ge=0, le=0.5)
    communities: Communities = option(0, "embed as the probabilities of N Louvain communities "
                                      "of the graph, learnt by a softmax head (0: off); better "
                                      "groups at --clusters near N", flag="--graph-communities",
                                      metavar="N")
    coarse_communities: Communities = option(0, "find C Louvain communities first, then split "
                                             "the most spread in two until there are "
                                             "--graph-communities (0: off)", metavar="C")
    community_searches: Int = option(1, "run the partition step S times from different seeds "
                                     "and once more on the graph reweighted by how often they "
                                     "agree (1: one search; about 10 s each on 60,000 images)",
                                     metavar="S", ge=1)

    @model_validator(mode="after")
    def _coarse_below_count(self) -> GraphConfig:
        if self.coarse_communities and not self.coarse_communities < self.communities:
            raise ValueError(f"--coarse-communities ({self.coarse_communities}) must be fewer "
                             f"than --graph-communities ({self.communities}), which they are "
                             "split into")
        return self


class HeadConfig(Options):
    """The head from graph features to the embedding (parametric UMAP, or with
    ``--graph-communities`` a softmax over the communities)."""

    latent_dim: Int = option(10, "size of the head's embedding", flag="--latent", ge=1)
    epochs: Int = option(5, "epochs of the head", flag="--head-epochs", ge=1)
    hidden: Sizes = option((256, 256), "hidden layers of the head", flag="--head-hidden",
                           metavar="U1,U2,...")
    min_dist: Float = option(0.0, "UMAP's min_dist: 0 lets neighbours collapse onto each "
                             "other, which suits clustering", flag="--head-min-dist", ge=0, lt=1)
    joint_embedding: bool = option(True, "embed as the head's output joined with the "
                                   "unit-length projector output (latent + 128 numbers); "
                                   "--no-joint-embedding: the head's output alone")


class DecoderConfig(Options):
    """The conv decoder, trained on the frozen embedding so bundles answer reconstructions."""

    epochs: Int = option(5, "epochs of the decoder", flag="--decoder-epochs", ge=1)
    filters: Sizes = option((32, 32, 32), "filters of the decoder's 3x3 stride-2 transposed "
                            "convolutions, mirrored from a conv encoder's",
                            flag="--decoder-filters", metavar="F1,F2,...", min_length=1)


class ContrastiveConfig(Options):
    """The clustering recipe: backbone, neighbour graph, head and decoder."""

    kind: Literal["contrastive"] = "contrastive"
    learning_rate: Float = option(1e-3, "Adam learning rate of every stage", gt=0)
    augment_flip: bool = option(False, "random horizontal flips of training images")
    backbone: BackboneConfig = BackboneConfig()
    graph: GraphConfig = GraphConfig()
    head: HeadConfig = HeadConfig()
    decoder: DecoderConfig = DecoderConfig()

    @property
    def epochs(self) -> int | None:
        """The backbone's epochs; None: decided from the training images."""
        return self.backbone.epochs

    @property
    def batch_size(self) -> int:
        return self.backbone.batch_size

    @property
    def latent_dim(self) -> int:
        return self.head.latent_dim


ModelConfig = AutoencoderConfig | ContrastiveConfig
CONFIG_CLASSES: dict[str, type[Options]] = {
    **{kind: AutoencoderConfig for kind in typing.get_args(AutoencoderKind)},
    "contrastive": ContrastiveConfig,
}


@dataclass(frozen=True)
class Flag:
    """One ``train`` flag and the config fields it sets, per model kind."""

    flag: str
    dest: str
    annotation: Any
    metavar: str | None
    paths: dict[str, tuple[str, ...]]  # model kind -> field path in its config
    defaults: dict[str, Any]  # model kind -> default
    helps: dict[str, str]  # model kind -> what the option does there

    @property
    def help(self) -> str:
        """What the option does, per group of kinds where that differs."""
        texts: dict[str, list[str]] = {}
        for kind, text in self.helps.items():
            texts.setdefault(text, []).append(kind)
        if len(texts) == 1:
            return next(iter(texts))
        return "; ".join(f"{', '.join(kinds)}: {text}" for text, kinds in texts.items())

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.paths)


def _fields(cls: type[Options], prefix: tuple[str, ...] = ()
            ) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """(path, FieldInfo, default) of every leaf option of ``cls``; parts are walked into."""
    for name, info in cls.model_fields.items():
        if name == "kind":
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Options):
            yield from _fields(annotation, (*prefix, name))
        else:
            yield (*prefix, name), info, info.default


def flags() -> dict[str, Flag]:
    """Every model flag, keyed by its argparse destination, in declaration order."""
    found: dict[str, Flag] = {}
    for kind, cls in CONFIG_CLASSES.items():
        for path, info, default in _fields(cls):
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            flag = str(extra.get("flag") or "--" + path[-1].replace("_", "-"))
            dest = flag[2:].replace("-", "_")
            entry = found.get(dest)
            if entry is None:
                entry = found[dest] = Flag(flag, dest, info.annotation,
                                           typing.cast(str | None, extra.get("metavar")),
                                           {}, {}, {})
            entry.paths[kind] = path
            entry.defaults[kind] = default
            entry.helps[kind] = info.description or ""
    return found


def model_config(kind: str, options: Mapping[str, Any] | None = None) -> ModelConfig:
    """The config of model ``kind`` with ``options`` (keyed by flag destination, e.g.
    ``min_crop`` or ``graph_communities``) over its defaults.

    An option the kind does not have is an error that says which kinds have it.
    """
    if kind not in CONFIG_CLASSES:
        raise ConfigError(f"unknown model kind {kind!r}: choose {', '.join(MODEL_KINDS)}")
    table = flags()
    values: dict[str, Any] = {"kind": kind}
    for dest, value in (options or {}).items():
        entry = table.get(dest)
        if entry is None:
            raise ConfigError(f"unknown option {dest!r}")
        if kind not in entry.paths:
            raise ConfigError(f"{entry.flag} does not apply to --model {kind}; it is an option "
                              f"of --model {', '.join(entry.kinds)}")
        *parts, leaf = entry.paths[kind]
        target = values
        for part in parts:
            target = target.setdefault(part, {})
        target[leaf] = value
    return typing.cast(ModelConfig, CONFIG_CLASSES[kind](**values))


def flat(config: ModelConfig) -> dict[str, Any]:
    """The config as ``{flag destination: value}``, in declaration order (the manifest's
    record of a run's options)."""
    data = config.model_dump(mode="json")
    record: dict[str, Any] = {"kind": config.kind}
    for dest, entry in flags().items():
        path = entry.paths.get(config.kind)
        if path is None:
            continue
        value: Any = data
        for part in path:
            value = value[part]
        record[dest] = value
    return record


def describe(exc: ValidationError, cls: type[Options]) -> str:
    """One sentence per problem, naming the flag (and the field path where it is nested)."""
    by_path = {path: entry.flag for entry in flags().values() for path in entry.paths.values()}
    problems = []
    for error in exc.errors():
        path = tuple(str(p) for p in error["loc"] if not isinstance(p, int))
        flag = by_path.get(_relative(path, cls))
        where = f"{flag} ({'.'.join(path)})" if flag and len(path) > 1 else flag or ".".join(path)
        message = str(error["msg"]).removeprefix("Value error, ")
        value = error.get("input")
        shown = "" if isinstance(value, dict) or value is None else f", got {value!r}"
        problems.append(f"{where}: {message}{shown}" if where else f"{message}{shown}")
    return "; ".join(problems)


def _relative(path: tuple[str, ...], cls: type[Options]) -> tuple[str, ...]:
    # A part's own errors carry paths relative to it; find the part's place in a recipe.
    for recipe in (AutoencoderConfig, ContrastiveConfig):
        if cls is recipe:
            return path
        for name, info in recipe.model_fields.items():
            if info.annotation is cls:
                return (name, *path)
    return path


def annotation_kind(annotation: Any) -> str:
    """How a flag's value is written: ``bool``, ``int``, ``float``, ``sizes`` or ``choice``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return annotation_kind(typing.get_args(annotation)[0])
    if origin is Literal:
        return "choice"
    if origin is tuple:
        return "sizes"
    if origin in (typing.Union, types.UnionType):
        # X | None: None is "auto", what a flag left out means; the flag gives an X.
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return annotation_kind(args[0])
        raise TypeError(f"no flag form for {annotation!r}")
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    raise TypeError(f"no flag form for {annotation!r}")


def choices(annotation: Any) -> tuple[str, ...]:
    return tuple(str(c) for c in typing.get_args(annotation))

