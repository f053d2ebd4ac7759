"""Files for TensorBoard's embedding projector, written without TensorBoard.

``tensorboard --logdir DIR`` finds ``DIR/projector_config.pbtxt`` (a text-format
``tensorboard.projector.ProjectorConfig``) even without event files, and with a
``tensor_path`` it needs no checkpoint: it reads the vectors from the TSV. Relative paths in
the config are resolved against the config's directory, so the folder can be moved.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.errors import ConfigError
from training.report import tiles

logger = logging.getLogger(__name__)

CONFIG_FILE = "projector_config.pbtxt"
TENSORS_FILE = "tensors.tsv"
METADATA_FILE = "metadata.tsv"
SPRITE_FILE = "sprite.png"
# WebGL textures larger than this fail on many GPUs; the projector loads the sprite as one.
MAX_SPRITE_PX = 8192


@dataclass(frozen=True)
class ProjectorFiles:
    """What :func:`write_projector` wrote."""

    directory: Path
    config: Path
    tensors: Path
    metadata: Path
    sprite: Path
    n: int
    dim: int
    thumb: tuple[int, int]  # (width, height) of one sprite cell, as in single_image_dim
    columns: int  # sprite cells per row and per column: ceil(sqrt(n))


def sprite_cell(n: int, height: int, width: int, target: int = 28) -> tuple[int, int]:
    """(width, height) of one thumbnail: small images upscaled to ``target`` pixels, all of
    them shrunk if the square sprite would exceed :data:`MAX_SPRITE_PX`."""
    factor = tiles.upscale_factor(height, width, target)
    w, h = width * factor, height * factor
    columns = math.ceil(math.sqrt(n))
    if columns * max(w, h) > MAX_SPRITE_PX:
        scale = MAX_SPRITE_PX / (columns * max(w, h))
        w, h = max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
    return w, h


def _clean(value: str) -> str:
    # Tabs and newlines would split the TSV's cells and rows.
    return " ".join(str(value).split()) or "-"


def _write_sprite(images: np.ndarray, path: Path, cell: tuple[int, int], columns: int) -> None:
    w, h = cell
    rgb = tiles.to_rgb8(images)
    sprite = np.full((columns * h, columns * w, 3), 255, dtype=np.uint8)
    for i, image in enumerate(rgb):
        thumb = Image.fromarray(image)
        if thumb.size != (w, h):
            smaller = w < image.shape[1]
            thumb = thumb.resize((w, h), Image.Resampling.BILINEAR if smaller
                                 else Image.Resampling.NEAREST)
        r, c = divmod(i, columns)
        sprite[r * h:(r + 1) * h, c * w:(c + 1) * w] = np.asarray(thumb)
    tiles.save_png(sprite, path)


def _config_text(tensor_name: str, n: int, dim: int, cell: tuple[int, int]) -> str:
    name = tensor_name.replace("\\", "\\\\").replace('"', '\\"')
    return (
        "embeddings {\n"
        f'  tensor_name: "{name}"\n'
        f'  tensor_path: "{TENSORS_FILE}"\n'
        f'  metadata_path: "{METADATA_FILE}"\n'
        f"  tensor_shape: {n}\n"
        f"  tensor_shape: {dim}\n"
        "  sprite {\n"
        f'    image_path: "{SPRITE_FILE}"\n'
        f"    single_image_dim: {cell[0]}\n"
        f"    single_image_dim: {cell[1]}\n"
        "  }\n"
        "}\n"
    )


def write_projector(
    directory: Path,
    embeddings: np.ndarray,
    images: np.ndarray,
    metadata: Mapping[str, Sequence[str]],
    *,
    tensor_name: str,
) -> ProjectorFiles:
    """Write tensors.tsv, metadata.tsv (header row + one row per point), sprite.png and
    projector_config.pbtxt into ``directory``.

    ``images`` [N, H, W, C] in [0, 1] become the sprite, row by row from the top left, in
    the order of ``embeddings`` [N, D]; ``metadata`` maps column names to N values each.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ConfigError(f"projector: embeddings must be [N, D] with N >= 1, got {emb.shape}")
    n, dim = emb.shape
    if len(images) != n:
        raise ConfigError(f"projector: {len(images)} images for {n} embeddings")
    if not metadata:
        raise ConfigError("projector: give at least one metadata column")
    for column, values in metadata.items():
        if len(values) != n:
            raise ConfigError(f"projector: metadata column {column!r} has {len(values)} values "
                              f"for {n} points")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = directory / TENSORS_FILE
    np.savetxt(tensors, emb, fmt="%.7g", delimiter="\t")
    meta = directory / METADATA_FILE
    columns_names = list(metadata)
    lines = ["\t".join(_clean(c) for c in columns_names)]
    lines += ["\t".join(_clean(metadata[c][i]) for c in columns_names) for i in range(n)]
    meta.write_text("\n".join(lines) + "\n", encoding="utf-8")
    height, width = images.shape[1:3]
    cell = sprite_cell(n, height, width)
    columns = math.ceil(math.sqrt(n))
    sprite = directory / SPRITE_FILE
    _write_sprite(images, sprite, cell, columns)
    config = directory / CONFIG_FILE
    config.write_text(_config_text(tensor_name, n, dim, cell), encoding="utf-8")
    logger.info("projector: %d embeddings of dimension %d, sprite %dx%d cells of %dx%d, in %s "
                "(view with: tensorboard --logdir %s)", n, dim, columns, columns, *cell,
                directory, directory)
    return ProjectorFiles(directory, config, tensors, meta, sprite, n, dim, cell, columns)
