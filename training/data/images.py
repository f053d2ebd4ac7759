"""``images:DIR``: a folder of PNG / JPEG (also BMP, GIF) images, read recursively.

Files are listed in sorted order of their path relative to DIR; hidden files and folders
(names starting with ``.``) and files with other extensions are ignored. Each image file
is checked up front with Pillow (PNG chunk checksums; JPEG decoded at 1/8 scale, which
still reads all the data), because tf.data only decodes later, lazily: a corrupt file is
skipped and counted (or fatal with ``strict``). Images then stream from disk.

Labels, optional: from ``options.labels_file``, a CSV of ``path,label`` lines (an optional
header such as ``path,label``; paths relative to DIR, or else to the CSV's folder, or
absolute; labels integers or class names; an empty label or -1 means unknown; images of
DIR that the CSV does not list are unknown too). Without a CSV, when every image lies in a
first-level sub-folder and there are at least two of them, the sub-folder is the class.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.base import DataOptions, LoadedData, Split
from training.data.pipeline import file_split, resolve_target
from training.data.splits import heldout_mask
from training.errors import DataError

logger = logging.getLogger(__name__)

_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
_FORMATS = frozenset({"PNG", "JPEG", "BMP", "GIF"})
_HEADER_WORDS = frozenset({
    "path", "file", "filename", "file_name", "filepath", "fname", "image", "image_path",
    "img", "id", "image_id", "name", "label", "labels", "class", "class_name", "category",
    "target", "y",
})


def list_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` by extension, sorted by relative path, hidden ones left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in _EXTENSIONS:
                found.append(Path(root) / name)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def check_image(path: Path) -> tuple[int, int]:
    """(height, width) of a readable image; raises ValueError saying why it is not one."""
    try:
        with Image.open(path) as image:
            if image.format not in _FORMATS:
                raise ValueError(f"{image.format} images are not supported")
            width, height = image.size
            if image.format == "PNG":
                image.verify()
            elif image.format == "JPEG":
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
            else:
                image.load()
    except ValueError:
        raise
    except Exception as exc:  # Pillow signals bad files with many types (OSError, SyntaxError, ...)
        raise ValueError(str(exc) or type(exc).__name__) from exc
    return height, width


@dataclass
class _Labels:
    per_file: dict[Path, int]
    class_names: list[str] | None


def _resolve(entry: str, bases: list[Path]) -> Path | None:
    # Normalised, not resolved: symlinked files must keep the path the listing gives them.
    candidate = Path(entry).expanduser()
    for path in [candidate] if candidate.is_absolute() else [b / candidate for b in bases]:
        if path.is_file():
            return Path(os.path.normpath(os.path.abspath(path)))
    return None


def _label_table(labels: dict[Path, str]) -> _Labels:
    known = {path: text for path, text in labels.items() if text not in ("", "-1")}
    if all(text.lstrip("-").isdigit() for text in known.values()):
        numbers = {path: int(text) for path, text in known.items()}
        top = max(numbers.values(), default=-1)
        names = [str(i) for i in range(top + 1)] if top >= 0 else None
        return _Labels(numbers, names)
    names = sorted(set(known.values()))
    index = {name: i for i, name in enumerate(names)}
    return _Labels({path: index[text] for path, text in known.items()}, names)


def read_labels_csv(csv_path: Path, folder: Path) -> _Labels:
    """Labels for files under ``folder`` from a ``path,label`` CSV; see the module docstring."""
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: labels file not found")
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            rows = [(n, row) for n, row in enumerate(csv.reader(handle), start=1)
                    if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: cannot be read as CSV ({exc})") from exc
    bases = [folder, csv_path.parent.resolve()]
    if rows and len(rows[0][1]) >= 2 and _resolve(rows[0][1][0].strip(), bases) is None and (
        rows[0][1][0].strip().lower() in _HEADER_WORDS
        or rows[0][1][1].strip().lower() in _HEADER_WORDS
    ):
        rows = rows[1:]
    if not rows:
        raise DataError(f"{csv_path}: has no path,label lines")
    labels: dict[Path, str] = {}
    missing = []
    for line, row in rows:
        if len(row) < 2:
            raise DataError(f"{csv_path}, line {line}: expected 'path,label', got {row!r}")
        entry, label = row[0].strip(), row[1].strip()
        path = _resolve(entry, bases)
        if path is None:
            missing.append(entry)
            continue
        if not path.is_relative_to(folder):
            raise DataError(f"{csv_path}, line {line}: {path} is not inside {folder}")
        if labels.get(path, label) != label:
            raise DataError(f"{csv_path}: {entry} is listed twice with different labels")
        labels[path] = label
    if missing:
        raise DataError(
            f"{csv_path}: names {len(missing)} file(s) that do not exist (looked in {folder} "
            f"and {csv_path.parent}), e.g. {', '.join(missing[:5])}"
        )
    return _label_table(labels)


def _folder_labels(folder: Path, files: list[Path]) -> _Labels | None:
    parts = [p.relative_to(folder).parts for p in files]
    if any(len(part) < 2 for part in parts):
        return None
    names = sorted({part[0] for part in parts})
    if len(names) < 2:
        return None
    index = {name: i for i, name in enumerate(names)}
    return _Labels({p: index[part[0]] for p, part in zip(files, parts, strict=True)}, names)


def load_image_folder(folder: Path, options: DataOptions) -> LoadedData:
    """Stream the images under ``folder``; the held-out split is val_fraction of the files."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory")
    folder = folder.resolve()
    files = list_image_files(folder)
    if not files:
        raise DataError(
            f"{folder}: no images found (looked recursively for {', '.join(sorted(_EXTENSIONS))})"
        )
    if options.labels_file is not None:
        labels: _Labels | None = read_labels_csv(options.labels_file.expanduser(), folder)
    else:
        labels = _folder_labels(folder, files)

    logger.info("checking %d image file(s) under %s", len(files), folder)
    good: list[Path] = []
    skipped: list[str] = []
    native: tuple[int, int] | None = None
    for path in files:
        try:
            size = check_image(path)
        except ValueError as exc:
            if options.strict:
                raise DataError(f"{path}: not a readable image ({exc})") from exc
            skipped.append(f"{path.relative_to(folder)} ({exc})")
            continue
        native = native or size
        good.append(path)
    if skipped:
        logger.warning(
            "skipped %d unreadable file(s) in %s: %s%s", len(skipped), folder,
            "; ".join(skipped[:5]), "; ..." if len(skipped) > 5 else "",
        )
    if not good or native is None:
        raise DataError(f"{folder}: none of the {len(files)} image files is readable")

    y = np.array([labels.per_file.get(p, -1) if labels else -1 for p in good], dtype=np.int64)
    if labels is not None and options.labels_file is not None:
        unknown = int(np.sum(y < 0))
        if unknown:
            logger.info("%d image(s) in %s have no label in %s", unknown, folder,
                        options.labels_file)
    target = resolve_target(native, "gray", options)
    names = [str(p) for p in good]
    mask = heldout_mask(len(good), options.val_fraction, options.seed, where=str(folder))
    keep = np.flatnonzero(~mask)
    train = file_split([names[i] for i in keep], y[keep], target)
    heldout: Split | None = None
    if mask.any():
        held = np.flatnonzero(mask)
        heldout = file_split([names[i] for i in held], y[held], target)
    data = LoadedData(
        source=f"images:{folder}",
        height=target.height,
        width=target.width,
        channels=target.channels,
        color_mode=target.color_mode,
        class_names=labels.class_names if labels and np.any(y >= 0) else None,
        train=train,
        heldout=heldout,
        heldout_kind="val-fraction" if heldout is not None else "none",
        skipped_files=len(skipped),
    )
    logger.info("found %s", data.describe())
    return data
