"""TensorBoard projector files: the config parses as a ProjectorConfig and agrees with the
tensor, the sprite and the metadata it points to."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from PIL import Image

from training.errors import ConfigError
from training.report import ReportOptions, write_projector
from training.report.build import write_report_projector
from training.report.gather import gather
from training.report.projector import MAX_SPRITE_PX, sprite_cell

_F = descriptor_pb2.FieldDescriptorProto


def _projector_config_class() -> Any:
    """tensorboard.projector.ProjectorConfig, built from the fields of TensorBoard's
    projector_config.proto (tensorboard is not installed here), for a strict parse."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="aecluster_test_projector_config.proto", package="tensorboard.projector",
        syntax="proto3")
    sprite = proto.message_type.add(name="SpriteMetadata")
    sprite.field.add(name="image_path", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    sprite.field.add(name="single_image_dim", number=2, type=_F.TYPE_UINT32,
                     label=_F.LABEL_REPEATED)
    info = proto.message_type.add(name="EmbeddingInfo")
    for name, number in (("tensor_name", 1), ("metadata_path", 2), ("bookmarks_path", 3),
                         ("tensor_path", 6)):
        info.field.add(name=name, number=number, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    info.field.add(name="tensor_shape", number=4, type=_F.TYPE_UINT32, label=_F.LABEL_REPEATED)
    info.field.add(name="sprite", number=5, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                   type_name=".tensorboard.projector.SpriteMetadata")
    config = proto.message_type.add(name="ProjectorConfig")
    config.field.add(name="model_checkpoint_path", number=1, type=_F.TYPE_STRING,
                     label=_F.LABEL_OPTIONAL)
    config.field.add(name="embeddings", number=2, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
                     type_name=".tensorboard.projector.EmbeddingInfo")
    config.field.add(name="model_checkpoint_dir", number=3, type=_F.TYPE_STRING,
                     label=_F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorboard.projector.ProjectorConfig"))


def check_projector_dir(directory: Path) -> tuple[Any, np.ndarray, list[list[str]]]:
    """Parse the config strictly and check that every file it names agrees with it."""
    config = _projector_config_class()()
    text_format.Parse((directory / "projector_config.pbtxt").read_text(), config)
    assert len(config.embeddings) == 1
    info = config.embeddings[0]
    assert info.tensor_name
    # Relative paths: TensorBoard resolves them against the config's folder.
    tensor = np.loadtxt(directory / info.tensor_path, delimiter="\t", ndmin=2)
    assert list(info.tensor_shape) == list(tensor.shape)
    n = tensor.shape[0]
    rows = [line.split("\t") for line in
            (directory / info.metadata_path).read_text().splitlines()]
    assert len(rows) == n + 1  # a header row, then one row per point
    assert rows[0][:2] == ["cluster", "label"]
    assert all(len(row) == len(rows[0]) for row in rows)
    width, height = info.sprite.single_image_dim
    columns = math.ceil(math.sqrt(n))
    with Image.open(directory / info.sprite.image_path) as sprite:
        assert sprite.format == "PNG"
        assert sprite.size == (columns * width, columns * height)
    return info, tensor, rows


def test_write_projector_files_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, dim = 23, 5
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    images = rng.uniform(size=(n, 8, 8, 1)).astype(np.float32)
    meta = {"cluster": [str(i % 3) for i in range(n)],
            "label": ["a\tb" if i == 0 else f"class {i % 4}" for i in range(n)]}
    files = write_projector(tmp_path / "proj", emb, images, meta, tensor_name='my "model"')
    info, tensor, rows = check_projector_dir(tmp_path / "proj")
    assert info.tensor_name == 'my "model"'
    np.testing.assert_allclose(tensor, emb, rtol=1e-6)
    assert files.columns == 5 and files.thumb == (32, 32) == tuple(info.sprite.single_image_dim)
    assert rows[1] == ["0", "a b"]  # a tab inside a value must not split the cell
    # Cell i of the sprite is image i, row by row from the top left.
    with Image.open(files.sprite) as sprite:
        pixels = np.asarray(sprite.convert("L"))
    cell = pixels[32:64, 64:96]  # row 1, column 2: image 7
    expected = np.rint(images[7, :, :, 0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(cell[::4, ::4], expected)


def test_sprite_stays_within_texture_limit() -> None:
    w, h = sprite_cell(100_000, 28, 28)
    assert math.ceil(math.sqrt(100_000)) * max(w, h) <= MAX_SPRITE_PX
    assert sprite_cell(100, 28, 28) == (28, 28)
    assert sprite_cell(100, 8, 12) == (36, 24)  # (width, height), upscaled 3x to reach 28


def test_write_projector_rejects_mismatches(tmp_path: Path) -> None:
    emb = np.zeros((3, 2), dtype=np.float32)
    images = np.zeros((3, 4, 4, 1), dtype=np.float32)
    with pytest.raises(ConfigError, match="2 values for 3 points"):
        write_projector(tmp_path, emb, images, {"cluster": ["0", "1"]}, tensor_name="t")
    with pytest.raises(ConfigError, match="2 images for 3 embeddings"):
        write_projector(tmp_path, emb, images[:2], {"cluster": ["0"] * 3}, tensor_name="t")
    assert not (tmp_path / "projector_config.pbtxt").exists()


def test_projector_of_a_digits_bundle(tmp_path: Path, digits_bundle: Path) -> None:
    data = gather(digits_bundle, "digits", ReportOptions(split="heldout"))
    files = write_report_projector(data, tmp_path / "tb")
    info, tensor, rows = check_projector_dir(tmp_path / "tb")
    assert tensor.shape == (data.n, data.manifest.latent_dim) == (files.n, files.dim)
    assert rows[0] == ["cluster", "label", "cluster_label", "distance", "outlier"]
    assert [int(r[0]) for r in rows[1:]] == data.cluster_ids.tolist()
    assert {r[1] for r in rows[1:]} <= {str(d) for d in range(10)}
    assert info.tensor_name == f"digits_v1_{data.split}"
