"""Image decoding and preprocessing: parity with the training pipeline, and bad input."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from service import errors, imagecodec
from service.bundle import ColorMode, InputSpec
from service.types import ImageInput
from training.data import pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMIT = 1_000_000


def spec(height: int, width: int, mode: ColorMode) -> InputSpec:
    return InputSpec(height=height, width=width, channels=3 if mode == "rgb" else 1,
                     color_mode=mode)


def training_convert(image: np.ndarray, target: InputSpec) -> np.ndarray:
    """What training's tf.data pipeline makes of one [h, w, c] image."""
    return pipeline.convert(
        tf.constant(image),
        pipeline.Target(target.height, target.width, target.channels, target.color_mode),
    ).numpy()


def training_decode_convert(data: bytes, target: InputSpec) -> np.ndarray:
    """Training's path for an image file: tf.io.decode_image, then convert."""
    return pipeline.convert(
        pipeline.decode(tf.constant(data)),
        pipeline.Target(target.height, target.width, target.channels, target.color_mode),
    ).numpy()


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def raw_png(width: int, height: int, *, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG assembled by hand, so the header may declare anything."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def sixteen_bit_png(pixels: np.ndarray) -> bytes:
    """16-bit gray ([h, w]) or RGB ([h, w, 3]) PNG from uint16 samples."""
    height, width = pixels.shape[:2]
    color_type = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    return raw_png(width, height, bit_depth=16, color_type=color_type, idat=zlib.compress(rows))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --- to_model_input: parity with training --------------------------------------------------

TARGETS = [spec(8, 8, "gray"), spec(8, 8, "rgb"), spec(8, 8, "red"), spec(28, 20, "gray"),
           spec(16, 24, "rgb"), spec(12, 12, "red")]
SOURCE_SHAPES = [(8, 8, 1), (8, 8, 3), (8, 8, 4), (28, 20, 3), (16, 24, 1), (12, 12, 4),
                 (5, 7, 1), (31, 17, 3), (64, 48, 4), (3, 3, 3), (40, 9, 1)]


@pytest.mark.parametrize("target", TARGETS, ids=lambda s: f"{s.color_mode}{s.height}x{s.width}")
@pytest.mark.parametrize("shape", SOURCE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
def test_to_model_input_matches_training_pipeline(
    target: InputSpec, shape: tuple[int, int, int], dtype: str, rng: np.random.Generator
) -> None:
    if dtype == "uint8":
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        image.flat[0], image.flat[-1] = 0, 255  # the ends of the range too
    else:
        image = rng.random(shape).astype(dtype)
        image.flat[0], image.flat[-1] = 0.0, 1.0
    ours = imagecodec.to_model_input(image, target)
    theirs = training_convert(image, target)
    assert ours.dtype == np.float32
    assert ours.shape == (target.height, target.width, target.channels)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_two_dimensional_and_wide_integer_arrays_are_gray_0_to_255(
    rng: np.random.Generator,
) -> None:
    image = rng.integers(0, 256, (10, 6), dtype=np.uint8)
    target = spec(8, 8, "rgb")
    expected = training_convert(image[..., None], target)
    # JSON nested lists arrive as int64 or float64 arrays.
    for variant in (image, image.astype(np.int64), image[..., None].astype(np.int32)):
        np.testing.assert_allclose(imagecodec.to_model_input(variant, target), expected,
                                   rtol=0, atol=1e-5)


def test_same_size_is_not_resized_and_keeps_exact_values(rng: np.random.Generator) -> None:
    image = rng.random((8, 8, 1)).astype(np.float32)
    out = imagecodec.to_model_input(image, spec(8, 8, "gray"))
    np.testing.assert_array_equal(out, image)


def test_preserve_aspect_ratio_pads_instead_of_stretching() -> None:
    target = InputSpec(height=8, width=8, channels=1, color_mode="gray",
                       preserve_aspect_ratio=True)
    image = np.ones((4, 8), dtype=np.float32)  # twice as wide as tall
    out = imagecodec.to_model_input(image, target)
    assert out.shape == (8, 8, 1)
    np.testing.assert_array_equal(out[:2], 0.0)  # padding above and below
    np.testing.assert_array_equal(out[2:6], 1.0)
    np.testing.assert_array_equal(out[6:], 0.0)


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        (np.zeros((8,), np.uint8), "shape [8]"),
        (np.zeros((1, 8, 8, 1), np.uint8), "shape [1, 8, 8, 1]"),
        (np.zeros((8, 8, 2), np.uint8), "2 channels"),
        (np.zeros((8, 8, 5), np.float32), "5 channels"),
        (np.zeros((0, 8, 1), np.uint8), "no pixels"),
        (np.zeros((8, 0), np.float32), "no pixels"),
        (np.zeros((8, 8), bool), "dtype bool"),
        (np.array([["a"] * 8] * 8), "dtype <U1"),
        (np.zeros((8, 8), object), "dtype object"),
        (np.zeros((8, 8), np.complex64), "dtype complex64"),
        (np.full((8, 8), np.nan, np.float32), "NaN or infinite"),
        (np.full((8, 8), np.inf, np.float64), "NaN or infinite"),
        (np.full((8, 8), 1.5, np.float32), "in [0, 1], got 1.5..1.5"),
        (np.full((8, 8), -0.25, np.float32), "in [0, 1], got -0.25..-0.25"),
        (np.full((8, 8), 256, np.int64), "0..255, got 256..256"),
        (np.full((8, 8), -1, np.int16), "0..255, got -1..-1"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_to_model_input_rejects_bad_arrays(image: np.ndarray, needle: str) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        imagecodec.to_model_input(image, spec(8, 8, "gray"))
    assert needle in str(info.value)


# --- decode_image ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("mode", "fmt", "options"),
    [
        ("L", "PNG", {}),
        ("RGB", "PNG", {}),
        ("RGBA", "PNG", {}),
        ("LA", "PNG", {}),
        ("1", "PNG", {}),
        ("P", "PNG", {}),
        ("P", "PNG", {"transparency": 3}),
        ("P", "PNG", {"transparency": bytes([0, 128, 255, 10])}),  # Pillow warns on -> RGB
        ("RGB", "GIF", {}),
        ("P", "GIF", {"transparency": 2, "optimize": False}),
        ("L", "GIF", {}),
        ("RGB", "BMP", {}),
        ("L", "BMP", {}),
        ("RGB", "JPEG", {"quality": 90}),
        ("L", "JPEG", {"quality": 90}),
        ("CMYK", "JPEG", {"quality": 90}),
        ("RGB", "JPEG", {"quality": 75, "progressive": True}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_decoded_files_preprocess_exactly_like_training(
    mode: str, fmt: str, options: dict[str, object], rng: np.random.Generator
) -> None:
    source = Image.fromarray(rng.integers(0, 256, (23, 17, 3), dtype=np.uint8)).convert(mode)
    data = encode(source, fmt, **options)
    decoded = imagecodec.decode_image(data, max_pixels=LIMIT)
    assert decoded.dtype == np.uint8 and decoded.shape[:2] == (23, 17)
    assert decoded.shape[2] in (1, 3)
    for target in (spec(23, 17, "gray"), spec(23, 17, "rgb"), spec(8, 8, "gray"),
                   spec(28, 28, "red")):
        np.testing.assert_allclose(imagecodec.to_model_input(decoded, target),
                                   training_decode_convert(data, target), rtol=0, atol=1e-5)


def test_rgba_drops_alpha_and_la_keeps_gray(rng: np.random.Generator) -> None:
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    decoded = imagecodec.decode_image(encode(Image.fromarray(rgba), "PNG"), max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded, rgba[..., :3])
    la = rng.integers(0, 256, (6, 5, 2), dtype=np.uint8)
    decoded = imagecodec.decode_image(encode(Image.fromarray(la, "LA"), "PNG"),
                                      max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded, la[..., :1])


def test_palette_png_expands_to_rgb() -> None:
    palette_image = Image.new("P", (4, 3))
    palette_image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    palette_image.putdata([0, 1, 2, 0] * 3)
    decoded = imagecodec.decode_image(encode(palette_image, "PNG"), max_pixels=LIMIT)
    assert decoded.shape == (3, 4, 3)
    np.testing.assert_array_equal(decoded[0, :3], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])


@pytest.mark.parametrize("shape", [(9, 7), (9, 7, 3)], ids=["gray16", "rgb16"])
def test_sixteen_bit_png_keeps_the_high_byte_like_tensorflow(
    shape: tuple[int, ...], rng: np.random.Generator
) -> None:
    pixels = rng.integers(0, 65536, shape, dtype=np.uint16)
    pixels.flat[:3] = [0x12FF, 0xFFFF, 0x00FF]
    data = sixteen_bit_png(pixels)
    decoded = imagecodec.decode_image(data, max_pixels=LIMIT)
    expected = (pixels >> 8).astype(np.uint8).reshape(9, 7, -1)
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(decoded, pipeline.decode(tf.constant(data)).numpy())


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (6, 4), color) for color in ((200, 10, 10), (10, 200, 10))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    decoded = imagecodec.decode_image(data, max_pixels=LIMIT)
    assert decoded.shape == (4, 6, 3)
    np.testing.assert_array_equal(decoded[0, 0], [200, 10, 10])


def test_lossless_webp_decodes(rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    data = encode(Image.fromarray(rgb), "WEBP", lossless=True)
    np.testing.assert_array_equal(imagecodec.decode_image(data, max_pixels=LIMIT), rgb)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"\x00\x01garbage" * 50, "not a readable PNG/JPEG/GIF/BMP/WEBP file"),
        (b"GIF89a", "starts like a GIF file but its header could not be read"),
        (b"\x89PNG\r\n\x1a\n", "starts like a PNG file"),
        (encode(Image.new("RGB", (4, 4)), "TIFF"), "not a readable"),
        (encode(Image.new("RGB", (4, 4)), "ICO"), "not a readable"),
    ],
    ids=["empty", "random", "gif-signature-only", "png-signature-only", "tiff", "ico"],
)
def test_undecodable_bytes_are_invalid_input(data: bytes, needle: str) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        imagecodec.decode_image(data, max_pixels=LIMIT)
    assert needle in str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_truncated_files_are_invalid_input(fmt: str, rng: np.random.Generator) -> None:
    image = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    data = encode(image, fmt)
    with pytest.raises(errors.InvalidInput) as info:
        imagecodec.decode_image(data[: len(data) // 2], max_pixels=LIMIT)
    assert "could not be decoded" in str(info.value)
    assert "48x64" in str(info.value)


def test_png_with_a_corrupt_chunk_checksum_is_invalid_input(rng: np.random.Generator) -> None:
    data = bytearray(encode(Image.fromarray(rng.integers(0, 256, (8, 8), np.uint8)), "PNG"))
    data[-20] ^= 0xFF  # inside the IDAT data: its CRC no longer matches
    with pytest.raises(errors.InvalidInput):
        imagecodec.decode_image(bytes(data), max_pixels=LIMIT)


@pytest.mark.parametrize(
    "side",
    [5_000, 10_000, 20_000],  # over our limit; over Pillow's warning; over Pillow's error limit
)
def test_decompression_bomb_is_rejected_from_the_header(side: int) -> None:
    # The pixel data is garbage: had anything been decoded, this would be InvalidInput.
    data = raw_png(side, side, bit_depth=8, color_type=2, idat=b"not zlib at all")
    started = time.perf_counter()
    with pytest.raises(errors.PayloadTooLarge) as info:
        imagecodec.decode_image(data, max_pixels=16_000_000)
    assert time.perf_counter() - started < 0.5
    assert "16000000 pixels" in str(info.value)


def test_real_compressed_bomb_is_rejected_before_inflating() -> None:
    # 4000 x 4000 RGB of zeros: a 47 kB file that inflates to 48 MB.
    rows = zlib.compress(b"\x00" * (4000 * (1 + 4000 * 3)), 9)
    data = raw_png(4000, 4000, bit_depth=8, color_type=2, idat=rows)
    assert len(data) < 100_000
    with pytest.raises(errors.PayloadTooLarge) as info:
        imagecodec.decode_image(data, max_pixels=1_000_000)
    assert "4000x4000 = 16000000 pixels" in str(info.value)
    # The same file is a valid image once the limit allows it.
    assert imagecodec.decode_image(data, max_pixels=16_000_000).shape == (4000, 4000, 3)


def test_limit_counts_width_times_height() -> None:
    data = encode(Image.new("L", (10, 10)), "PNG")
    assert imagecodec.decode_image(data, max_pixels=100).shape == (10, 10, 1)
    with pytest.raises(errors.PayloadTooLarge, match="10x10 = 100 pixels"):
        imagecodec.decode_image(data, max_pixels=99)


def test_pillow_bomb_warning_never_escapes_outside_pytest() -> None:
    # pytest turns every warning into an error; a plain interpreter only prints them, so the
    # module's own filter must make Pillow's DecompressionBombWarning an error there too.
    header = raw_png(10_000, 10_000, bit_depth=8, color_type=0, idat=b"x")
    code = (
        "import sys\n"
        "from service import errors, imagecodec\n"
        "try:\n"
        "    imagecodec.decode_image(sys.stdin.buffer.read(), max_pixels=16_000_000)\n"
        "except errors.PayloadTooLarge as exc:\n"
        "    print('PayloadTooLarge', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], input=header, capture_output=True,
        cwd=REPO_ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120, check=True,
    )
    assert done.stdout.startswith(b"PayloadTooLarge")
    assert b"DecompressionBombWarning" not in done.stderr


# --- prepare_batch -------------------------------------------------------------------------

def test_prepare_batch_mixes_bytes_and_arrays_of_any_size(rng: np.random.Generator) -> None:
    target = spec(8, 8, "gray")
    arrays: list[np.ndarray] = [rng.integers(0, 256, (8, 8), dtype=np.uint8),
                                rng.random((20, 13, 3)),
                                rng.integers(0, 256, (20, 13, 4), dtype=np.uint8),
                                rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)]
    inputs = [ImageInput(array=arrays[0]), ImageInput(array=arrays[1]),
              ImageInput(encoded=encode(Image.fromarray(arrays[2]), "PNG")),
              ImageInput(encoded=encode(Image.fromarray(arrays[3]), "PNG"))]
    batch = imagecodec.prepare_batch(inputs, target, max_pixels=LIMIT)
    assert batch.shape == (4, 8, 8, 1) and batch.dtype == np.float32
    for row, array in zip(batch, arrays, strict=True):
        np.testing.assert_allclose(row, imagecodec.to_model_input(array, target), atol=1e-6)
        expected = training_convert(array if array.ndim == 3 else array[..., None], target)
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-5)


def test_a_large_image_is_handed_to_tensorflow_in_slices(rng: np.random.Generator,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The copy into a tensor holds the GIL (and so the event loop) for as long as it takes:
    # a large image goes over in slices, and resizes to exactly what one copy gives.
    images = rng.random((2, 1500, 1200, 1)).astype(np.float32)  # 14.4 MB
    whole = tf.image.resize(tf.convert_to_tensor(images), (28, 28)).numpy()
    sizes: list[int] = []
    convert = tf.convert_to_tensor

    def counting(value: object, *args: object, **kwargs: object) -> tf.Tensor:
        if isinstance(value, np.ndarray):
            sizes.append(value.nbytes)
        return convert(value, *args, **kwargs)

    monkeypatch.setattr(imagecodec.tf, "convert_to_tensor", counting)
    sliced = imagecodec._to_tensor(images)
    np.testing.assert_array_equal(sliced.numpy(), images)
    assert len(sizes) == 4 and max(sizes) <= imagecodec._CONVERT_SLICE_BYTES
    small = rng.random((1, 28, 28, 1)).astype(np.float32)
    sizes.clear()
    np.testing.assert_array_equal(imagecodec._to_tensor(small).numpy(), small)
    assert sizes == [small.nbytes]  # one copy when small
    batch = imagecodec.prepare_batch([ImageInput(array=image) for image in images],
                                     spec(28, 28, "gray"), max_pixels=4_000_000)
    np.testing.assert_array_equal(batch, np.clip(whole, 0.0, 1.0))


def test_prepare_batch_of_nothing_is_invalid() -> None:
    with pytest.raises(errors.InvalidInput, match="at least one image"):
        imagecodec.prepare_batch([], spec(8, 8, "gray"), max_pixels=LIMIT)


def test_prepare_batch_names_the_bad_image() -> None:
    good = ImageInput(array=np.zeros((8, 8), np.uint8))
    inputs = [good, good, good, ImageInput(encoded=b"nope"), good]
    with pytest.raises(errors.InvalidInput, match=r"^image 3: image is not a readable"):
        imagecodec.prepare_batch(inputs, spec(8, 8, "gray"), max_pixels=LIMIT)
    inputs = [good, ImageInput(array=np.full((8, 8), np.nan))]
    with pytest.raises(errors.InvalidInput, match=r"^image 1: image contains NaN"):
        imagecodec.prepare_batch(inputs, spec(8, 8, "gray"), max_pixels=LIMIT)


def test_prepare_batch_limits_pixels_of_arrays_and_files() -> None:
    big_array = ImageInput(array=np.zeros((11, 10), np.uint8))
    with pytest.raises(errors.PayloadTooLarge, match=r"^image 0: image array is 10x11"):
        imagecodec.prepare_batch([big_array], spec(8, 8, "gray"), max_pixels=100)
    big_file = ImageInput(encoded=encode(Image.new("L", (11, 10)), "PNG"))
    with pytest.raises(errors.PayloadTooLarge, match=r"^image 1: image is 11x10"):
        imagecodec.prepare_batch([ImageInput(array=np.zeros((2, 2))), big_file],
                                 spec(8, 8, "gray"), max_pixels=100)


# --- encode_png ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 1), (6, 5, 3)])
def test_encode_png_round_trips_to_rounded_uint8(
    shape: tuple[int, ...], rng: np.random.Generator
) -> None:
    image = rng.random(shape).astype(np.float32)
    image.flat[:2] = [0.0, 1.0]
    data = imagecodec.encode_png(image)
    with Image.open(io.BytesIO(data)) as png:
        assert png.format == "PNG"
        assert png.mode == ("RGB" if shape[-1] == 3 else "L")
        pixels = np.asarray(png)
    np.testing.assert_array_equal(pixels, np.rint(image * 255).astype(np.uint8).reshape(
        pixels.shape))
    # And the service's own decoder reads it back the same.
    back = imagecodec.decode_image(data, max_pixels=LIMIT)
    assert np.abs(back / 255.0 - image.reshape(back.shape)).max() <= 0.5 / 255 + 1e-7


def test_encode_png_rejects_what_is_not_an_image() -> None:
    with pytest.raises(errors.InvalidInput, match="shape"):
        imagecodec.encode_png(np.zeros((4, 4, 2), np.float32))
    with pytest.raises(errors.InvalidInput, match="shape"):
        imagecodec.encode_png(np.zeros((4,), np.float32))
    with pytest.raises(errors.InvalidInput, match="NaN"):
        imagecodec.encode_png(np.full((4, 4, 1), np.nan, np.float32))
    with pytest.raises(errors.InvalidInput, match="dtype uint8"):
        imagecodec.encode_png(np.zeros((4, 4), np.uint8))


def _blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def test_the_request_pixel_budget_is_checked_from_headers_before_decoding() -> None:
    # Issue 39: 16 copies of a 4000x4000 PNG (tiny files) were all decoded: 3.9 GB of RSS.
    big = _blank_png(4000, 4000)
    assert len(big) < 64 * 1024
    images = [ImageInput(encoded=big)] * 16
    target = spec(8, 8, "gray")
    started = time.perf_counter()
    with pytest.raises(errors.PayloadTooLarge,
                       match=r"more than 31999999 pixels together \(at least 32000000 by the "
                             r"first 2\).*AEC_MAX_REQUEST_PIXELS"):
        imagecodec.prepare_batch(images, target, max_pixels=16_000_000,
                                 max_request_pixels=31_999_999)
    assert time.perf_counter() - started < 0.5  # headers only: nothing was decoded
    # Arrays count by their shapes; within the budget everything is decoded as before.
    arrays = [ImageInput(array=np.zeros((100, 100), np.uint8))] * 3
    with pytest.raises(errors.PayloadTooLarge, match="by the first 3"):
        imagecodec.prepare_batch(arrays, target, max_pixels=16_000_000,
                                 max_request_pixels=29_999)
    assert imagecodec.prepare_batch(arrays, target, max_pixels=16_000_000,
                                    max_request_pixels=30_000).shape == (3, 8, 8, 1)


def test_declared_pixels_reads_headers_only() -> None:
    """What the data plane asks of every request to choose inline or off-loop decoding."""
    bomb = raw_png(100_000, 50_000, bit_depth=8, color_type=0, idat=b"not even zlib")
    assert imagecodec.declared_pixels(ImageInput(encoded=bomb)) == 5_000_000_000
    for fmt in ("PNG", "JPEG", "BMP"):
        buffer = io.BytesIO()
        Image.new("RGB", (300, 200)).save(buffer, format=fmt)
        assert imagecodec.declared_pixels(ImageInput(encoded=buffer.getvalue())) == 60_000
    assert imagecodec.declared_pixels(ImageInput(encoded=b"\x89PNG\r\n\x1a\n")) == 0
    assert imagecodec.declared_pixels(ImageInput(encoded=b"garbage")) == 0
    assert imagecodec.declared_pixels(ImageInput(array=np.zeros((30, 40, 3)))) == 1200
    assert imagecodec.declared_pixels(ImageInput(array=np.zeros(5))) == 0
