"""Images in and out of the service: decode what callers send, preprocess it for the encoder.

Preprocessing must be exactly the training pipeline's (``training/data/pipeline.py``), in
this order: scale to float32 [0, 1] (8-bit values / 255), colour conversion (gray: luminance
with ``tf.image.rgb_to_grayscale``'s ITU-R BT.601 weights; rgb: gray tiled to three
channels; red: channel 0; alpha dropped), then ``tf.image.resize`` (bilinear, no
antialiasing, aspect ratio not kept) when the size differs, then clipping to [0, 1]. The
tests compare this module with the training pipeline on random images.

Decoding gives what ``tf.io.decode_image`` gives training: JPEG pixels come from that very
call (its fast IDCT differs from Pillow's); PNG, GIF, BMP and WebP from Pillow, converted
the way TensorFlow does it (no EXIF rotation, first frame only, 16-bit samples truncated to
their high byte, palettes expanded to RGB) - except 8-bit palette BMPs, whose palette
TensorFlow ignores and Pillow applies. The pixel count is checked from the header before any
pixel is decoded, so a small file that declares a huge image (a decompression bomb) costs
nothing.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from service import bundle, errors, types

# Formats Pillow decodes with well-fuzzed libraries and that training's tf.io.decode_image
# reads too; TIFF, EPS, ICO and the long tail of Pillow plugins are refused on purpose.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")

# tf.image.rgb_to_grayscale's weights, as float32 like the tensordot it does.
_GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)
# TensorFlow copies a NumPy array into a tensor while holding the GIL: one 4000x4000 image
# (64 MB as float32) held it for 100-160 ms on a loaded 2-core machine, and the event loop,
# waiting for the GIL, answered nothing meanwhile (py-spy --gil; tests/integration/
# test_hostile_inputs.py). Converted in row slices of at most this size, the interpreter
# hands the GIL to the loop between slices.
_CONVERT_SLICE_BYTES = 4 << 20
_INV_255 = np.float32(1.0 / 255.0)  # convert_image_dtype multiplies by 1/max, in float32

# Pillow warns (DecompressionBombWarning) before it raises for images over its own limit,
# and it does so inside Image.open, before this module can check the size itself. A warning
# would print to stderr and let the decode go on; as an error it is caught below and becomes
# PayloadTooLarge. Scoped to this one category so no other warning changes behaviour.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
}
_SIXTEEN_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_GRAY_WITH_ALPHA = ("LA", "La")


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode PNG/JPEG/GIF/BMP/WebP bytes to uint8 [H, W, C] with C = 1 (gray) or 3 (RGB).

    Alpha is dropped; palette, CMYK, YCbCr and 16-bit images are converted. Raises
    :class:`errors.PayloadTooLarge` when width x height exceeds ``max_pixels`` (checked from
    the header, before decoding) and :class:`errors.InvalidInput` naming the problem for
    anything that is not a complete image in one of the allowed formats.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise errors.InvalidInput(f"image bytes expected, got {type(data).__name__}")
    if len(data) == 0:
        raise errors.InvalidInput("image is empty (0 bytes)")
    _allow_pillow_limit(max_pixels)
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.UnidentifiedImageError as exc:
        claimed = _claimed_format(bytes(data[:16]))
        if claimed is not None:
            raise errors.InvalidInput(
                f"image starts like a {claimed} file but its header could not be read "
                f"({len(data)} bytes)"
            ) from exc
        raise errors.InvalidInput(
            f"image is not a readable {'/'.join(ALLOWED_FORMATS)} file "
            f"({len(data)} bytes starting {bytes(data[:8])!r})"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise errors.PayloadTooLarge(
            f"image is larger than the limit of {max_pixels} pixels: {exc}"
        ) from exc
    except Exception as exc:  # Pillow's header parsers raise many types on bad input
        raise errors.InvalidInput(f"image header could not be read: {_reason(exc)}") from exc
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise errors.PayloadTooLarge(
                f"image is {width}x{height} = {width * height} pixels, over the limit of "
                f"{max_pixels} pixels"
            )
        if width == 0 or height == 0:
            raise errors.InvalidInput(f"image has no pixels ({width}x{height})")
        if img.format == "JPEG":
            return _decode_jpeg(data, width, height)
        try:
            img.load()
            return _to_array(img)
        except errors.ServiceError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise errors.PayloadTooLarge(
                f"image is larger than the limit of {max_pixels} pixels: {exc}"
            ) from exc
        except Exception as exc:  # truncated data, bad checksums, broken codecs ...
            raise errors.InvalidInput(
                f"{img.format} image ({width}x{height}) could not be decoded: {_reason(exc)}"
            ) from exc


def _claimed_format(prefix: bytes) -> str | None:
    # Pillow reports a broken header of a known format as "cannot identify"; the caller is
    # better served by hearing that the file is damaged than that its format is unknown.
    for name, signatures in _SIGNATURES.items():
        if prefix.startswith(signatures):
            return name
    return None


def _allow_pillow_limit(max_pixels: int) -> None:
    # Pillow's guard must never reject what the service's limit allows. It is only raised,
    # never lowered, so concurrent callers with different limits cannot trip each other;
    # the exact per-call limit is the check in decode_image.
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and max_pixels > current:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _decode_jpeg(data: bytes, width: int, height: int) -> np.ndarray:
    # TensorFlow's decoder, called exactly as training's pipeline calls it: its default IDCT
    # (libjpeg's fast integer one) differs from Pillow's accurate one by up to a few levels
    # per pixel, and the service must see the pixels the model was trained on.
    try:
        decoded = tf.io.decode_image(
            bytes(data), channels=0, dtype=tf.uint8, expand_animations=False
        ).numpy()
    except tf.errors.OpError as exc:
        raise errors.InvalidInput(
            f"JPEG image ({width}x{height}) could not be decoded: {_tf_reason(exc)}"
        ) from exc
    if decoded.shape[-1] == 4:  # CMYK comes out as RGB, but stay safe
        decoded = decoded[..., :3]
    return np.ascontiguousarray(decoded)


def _tf_reason(exc: tf.errors.OpError) -> str:
    # "{{function_node ...}} jpeg::Uncompress failed. Invalid JPEG data ... [Op:DecodeImage]"
    text = exc.message.rsplit("}}", 1)[-1].split(" [Op:", 1)[0].strip()
    return text or type(exc).__name__


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("P", "PA"):
        # Through RGBA: Pillow's direct P -> RGB warns when the palette's transparency is a
        # byte string, and a warning must not decide how an image decodes.
        return np.ascontiguousarray(np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., :3])
    if img.format == "GIF":
        # tf.io.decode_gif always gives three channels, gray palettes included.
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in _SIXTEEN_BIT_GRAY:
        # High byte, as libpng's strip-16 does for tf.io.decode_image(dtype=uint8).
        # Pillow's own convert("L") clips at 255 instead of scaling.
        wide = np.asarray(img).astype(np.int64)
        if wide.min() < 0 or wide.max() > 0xFFFF:
            raise errors.InvalidInput(f"{mode} image has samples outside 0..65535")
        return (wide >> 8).astype(np.uint8)[..., None]
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)[..., None]
    if mode == "1" or mode in _GRAY_WITH_ALPHA:
        return np.asarray(img.convert("L"), dtype=np.uint8)[..., None]
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    # RGBA, RGBX, CMYK, YCbCr, LAB, HSV: convert("RGB") drops alpha.
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:
        raise errors.InvalidInput(
            f"{img.format} image in pixel mode {mode} is not supported"
        ) from exc


def to_model_input(image: np.ndarray, spec: bundle.InputSpec) -> np.ndarray:
    """Preprocess one image exactly as training did: float32 [h, w, c] of ``spec``.

    ``image`` is [H, W] or [H, W, C] with C in 1, 3, 4; integers are 0..255, floats in
    [0, 1]. Raises :class:`errors.InvalidInput` naming the problem otherwise.
    """
    colored = _scale_and_color(image, spec)
    return _resize([colored], spec)[0]


def prepare_batch(
    images: Sequence[types.ImageInput], spec: bundle.InputSpec, *, max_pixels: int,
    max_request_pixels: int | None = None,
) -> np.ndarray:
    """Decode and preprocess a request's images into one float32 [N, h, w, c] batch.

    Errors name the index of the bad image ("image 3: ..."), keeping their class
    (InvalidInput or PayloadTooLarge); an empty sequence is InvalidInput. With
    ``max_request_pixels``, the pixels of all images together (from the headers and array
    shapes) are checked against it before any image is decoded.
    """
    if len(images) == 0:
        raise errors.InvalidInput("no images: the request must hold at least one image")
    if max_request_pixels is not None and len(images) * max_pixels > max_request_pixels:
        # Only then can the total pass the budget: each image is held to max_pixels anyway.
        # (One or two images with the defaults: no second look at their headers.)
        _check_request_pixels(images, max_request_pixels)
    colored: list[np.ndarray] = []
    for index, item in enumerate(images):
        try:
            if item.encoded is not None:
                raw = decode_image(item.encoded, max_pixels=max_pixels)
            else:
                raw = _check_array_size(item.array, max_pixels)
            colored.append(_scale_and_color(raw, spec))
        except errors.ServiceError as exc:
            raise type(exc)(f"image {index}: {exc.message}") from exc
    return _resize(colored, spec)


def _check_request_pixels(images: Sequence[types.ImageInput], budget: int) -> None:
    """PayloadTooLarge when the images' declared pixels add up to more than ``budget``.

    Encoded images are measured from their headers (no pixel data is read for it); one
    whose header cannot be read counts nothing here and is refused by its decode.
    """
    total = 0
    for index, item in enumerate(images):
        total += declared_pixels(item)
        if total > budget:
            raise errors.PayloadTooLarge(
                f"the request's images hold more than {budget} pixels together (at least "
                f"{total} by the first {index + 1}), the per-request limit "
                "(AEC_MAX_REQUEST_PIXELS); send them in several requests"
            )


def declared_pixels(item: types.ImageInput) -> int:
    """Width x height of one image, from an array's shape or an encoded image's header.

    0 when the header cannot be read (the decode then says why). A PNG's size is read from
    its IHDR chunk in place, which is cheap enough to ask on every request; other formats
    go through Pillow's header parser, which reads no pixel data.
    """
    if item.array is not None:
        shape = np.shape(item.array)
        return int(shape[0]) * int(shape[1]) if len(shape) >= 2 else 0
    data = item.encoded
    if data is None:
        return 0
    if data[:8] == _SIGNATURES["PNG"][0] and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width) * int(height)
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
            width, height = img.size
    except Exception:  # unreadable or over Pillow's own limit: decode_image says why
        return 0
    return int(width) * int(height)


def _check_array_size(array: np.ndarray | None, max_pixels: int) -> np.ndarray:
    if array is None:  # ImageInput guarantees one of the two; keep mypy and bugs honest
        raise errors.InvalidInput("image has neither bytes nor an array")
    arr = np.asarray(array)
    if arr.ndim >= 2 and arr.shape[0] * arr.shape[1] > max_pixels:
        raise errors.PayloadTooLarge(
            f"image array is {arr.shape[1]}x{arr.shape[0]} = {arr.shape[0] * arr.shape[1]} "
            f"pixels, over the limit of {max_pixels} pixels"
        )
    return arr


def _scale_and_color(image: np.ndarray, spec: bundle.InputSpec) -> np.ndarray:
    """Validate, scale to float32 [0, 1] and convert to the spec's colour mode."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise errors.InvalidInput(
            f"image must be [height, width] or [height, width, channels], got shape "
            f"{list(arr.shape)}"
        )
    height, width, channels = arr.shape
    if height == 0 or width == 0:
        raise errors.InvalidInput(f"image has no pixels (shape {list(arr.shape)})")
    if channels not in (1, 3, 4):
        raise errors.InvalidInput(
            f"image has {channels} channels; 1 (gray), 3 (RGB) or 4 (RGBA) are accepted"
        )
    unit = _to_unit(arr)
    if spec.color_mode == "red" or channels == 1:
        single = unit[..., :1]
        if spec.color_mode == "rgb":
            return np.ascontiguousarray(np.concatenate([single, single, single], axis=-1))
        return np.ascontiguousarray(single)
    if spec.color_mode == "gray":
        return np.ascontiguousarray((unit[..., :3] @ _GRAY_WEIGHTS)[..., None])
    return np.ascontiguousarray(unit[..., :3])


def _to_unit(arr: np.ndarray) -> np.ndarray:
    kind = arr.dtype.kind
    if kind in "iu":
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high > 255:
            raise errors.InvalidInput(
                f"integer image values must be in 0..255, got {low}..{high}"
            )
        return arr.astype(np.float32) * _INV_255
    if kind == "f":
        unit = arr.astype(np.float32, copy=False)
        low_f, high_f = float(unit.min()), float(unit.max())
        # One check for the common case: NaN fails both comparisons, infinities the range.
        if not (low_f >= 0.0 and high_f <= 1.0):
            if not np.all(np.isfinite(unit)):
                raise errors.InvalidInput("image contains NaN or infinite values")
            raise errors.InvalidInput(
                f"float image values must be in [0, 1], got {low_f:.6g}..{high_f:.6g}"
            )
        return unit
    raise errors.InvalidInput(
        f"image values must be integers (0..255) or floats in [0, 1], got dtype {arr.dtype}"
    )


def _resize(colored: list[np.ndarray], spec: bundle.InputSpec) -> np.ndarray:
    """Bring colour-converted images to the spec's size and stack them, float32 [N, h, w, c].

    Images of one source size are resized in one TensorFlow call: resizing is per image,
    so batching changes nothing but the number of eager op dispatches.
    """
    target = (spec.height, spec.width)
    out = np.empty((len(colored), spec.height, spec.width, spec.channels), dtype=np.float32)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(colored):
        size = (image.shape[0], image.shape[1])
        if size == target:
            out[index] = image
        else:
            groups.setdefault(size, []).append(index)
    for indices in groups.values():
        stack = _to_tensor(np.stack([colored[i] for i in indices]))
        if spec.preserve_aspect_ratio:
            resized = tf.image.resize_with_pad(stack, spec.height, spec.width, method=spec.resize)
        else:
            resized = tf.image.resize(stack, target, method=spec.resize)
        # Bilinear weights are convex, but rounding may step a hair outside [0, 1].
        out[indices] = np.clip(resized.numpy(), 0.0, 1.0)
    return out


def _to_tensor(images: np.ndarray) -> tf.Tensor:
    """``images`` [N, H, W, C] as a tensor, copied in row slices when large (see
    :data:`_CONVERT_SLICE_BYTES`); the values are the same either way."""
    slices = min(images.shape[1], -(-images.nbytes // _CONVERT_SLICE_BYTES))
    if slices < 2:
        return tf.convert_to_tensor(images)
    return tf.concat([tf.convert_to_tensor(part)
                      for part in np.array_split(images, slices, axis=1)], axis=1)


def encode_png(image: np.ndarray) -> bytes:
    """Encode float32 [H, W, C] (C = 1 or 3) or [H, W] in [0, 1] as PNG, rounded to uint8.

    Values outside [0, 1] are clipped; NaN/inf or another shape is InvalidInput.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)) or arr.size == 0:
        raise errors.InvalidInput(
            f"PNG encoding needs [H, W], [H, W, 1] or [H, W, 3], got shape {list(image.shape)}"
        )
    if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
        raise errors.InvalidInput(
            f"PNG encoding needs finite float values in [0, 1], got dtype {arr.dtype}"
            + ("" if arr.dtype.kind != "f" else " with NaN or infinite values")
        )
    pixels = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    # Level 1: reconstructions are small and sent once; latency matters more than bytes.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
