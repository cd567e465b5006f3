"""Few-shot image datasets a user already has: class folders or split CSV files.

Three layouts are read (`<ext>` is `.png`, `.jpg` or `.jpeg`, any case):

- `split_folders`: `<root>/{train,val,test}/<class>/*.<ext>`, one folder per split
  (`val` only needed when evaluating on it);
- `csv`: split files `<split_dir>/{train,val,test}.csv` with the header
  `filename,label` (Ravi & Larochelle's format), the images in `<root>/images/`,
  `<root>/<label>/` or `<root>/<split>/<label>/` (whichever holds the first file);
- `class_folders`: `<root>/<class>/*.<ext>`, the classes split at random by a seed
  (`split_fractions` of them for train, val and test).

`load_image_splits` converts each split once into `<data root>/image_cache/<name>-
<fingerprint>/<split>.npz` (uint8 images `[X, S, S, C]` grouped by class, and each
class's name, first row and count) plus `stats.json`, the per-channel mean and
standard deviation of the training split's pixels in [0, 1]. The fingerprint covers
every source file's path, size and modification time and the conversion options, so
a changed source is converted again and an unchanged one is read back at once.

Images are converted by Pillow to RGB (`channels=3`) or greyscale (`channels=1`),
then resized to `S x S` with the chosen filter (default Lanczos, as the common
miniImageNet preparation scripts resize). Aspect ratios are not kept.
"""

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from metalearn.data.root import DataError, atomic_path

SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
LAYOUTS = ("split_folders", "csv", "class_folders")
FILTERS = ("lanczos", "bilinear", "bicubic", "box", "nearest")
CACHE_FORMAT = 1  # bump when the cached files change meaning

ClassFiles = dict[str, list[Path]]  # class name -> its image files, sorted


class ImageSplit(NamedTuple):
    """The images of one split, grouped by class."""

    images: np.ndarray  # [X, S, S, C] uint8
    class_names: np.ndarray  # [C] str
    offsets: np.ndarray  # [C] int64, the first row of each class in `images`
    counts: np.ndarray  # [C] int64, images of each class


class ImageDataset(NamedTuple):
    """The splits of a dataset and the training split's pixel statistics."""

    splits: dict[str, ImageSplit]
    mean: np.ndarray  # [C] float32, of pixels in [0, 1]
    std: np.ndarray  # [C] float32
    cache: Path  # the folder the splits were read from


# --- finding the files ------------------------------------------------------------


def find_classes(
    root: Path,
    layout: str,
    splits: Iterable[str],
    split_dir: Path | None = None,
    split_seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.64, 0.16, 0.2),
) -> dict[str, ClassFiles]:
    """The image files of each class of each of `splits`, by `layout` (see above).

    Raises:
        DataError: a folder or file is missing, a class is empty, a split file is
            not in the `filename,label` format, or a class is in two splits.
    """
    if not root.is_dir():
        raise DataError(f"image root {root} is not a directory")
    if layout == "split_folders":
        found = {split: _class_folders(root / split) for split in splits}
    elif layout == "csv":
        if split_dir is None:
            raise DataError("layout csv needs split files: set task.split_dir")
        found = {split: _csv_split(root, split_dir, split) for split in splits}
    elif layout == "class_folders":
        everything = _class_folders(root)
        found = random_class_split(everything, split_seed, split_fractions)
        found = {split: found[split] for split in splits}
    else:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    _check_disjoint(found)
    return found


def _class_folders(folder: Path) -> ClassFiles:
    """`folder/<class>/*.<ext>` for every class subfolder, sorted by name."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected <class>/ subfolders)")
    classes = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            files = sorted(f for f in entry.iterdir() if _is_image(f))
            if not files:
                raise DataError(
                    f"class folder {entry} holds no images ({', '.join(SUFFIXES)})"
                )
            classes[entry.name] = files
    if not classes:
        raise DataError(f"{folder} holds no class folders with images")
    return classes


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES and not path.name.startswith(".")


def _csv_split(root: Path, split_dir: Path, split: str) -> ClassFiles:
    """The classes a `filename,label` file lists, their files found under `root`."""
    rows = read_split_csv(split_dir / f"{split}.csv")
    first_name, first_label = rows[0]
    candidates = [
        root / "images",
        root / first_label,
        root / split / first_label,
    ]
    folder = next((c for c in candidates if (c / first_name).is_file()), None)
    if folder is None:
        raise DataError(
            f"{first_name}, the first image of {split_dir / f'{split}.csv'}, is in "
            f"none of {root}/images/, {root}/<label>/, {root}/{split}/<label>/"
        )
    classes: ClassFiles = {}
    for name, label in rows:
        base = folder if folder.name == "images" else folder.parent / label
        path = base / name
        if not path.is_file():
            raise DataError(f"{path}: listed in {split}.csv but missing")
        classes.setdefault(label, []).append(path)
    return classes


def read_split_csv(path: Path) -> list[tuple[str, str]]:
    """(filename, label) rows of a split file with the header `filename,label`."""
    if not path.is_file():
        raise DataError(f"split file {path} is missing")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [cell.strip() for cell in rows[0]] != ["filename", "label"]:
        raise DataError(f"{path}: the first line must be the header filename,label")
    body = [row for row in rows[1:] if row]
    for number, row in enumerate(body, start=2):
        if len(row) != 2 or not all(cell.strip() for cell in row):
            raise DataError(f"{path}, line {number}: expected filename,label")
    if not body:
        raise DataError(f"{path} lists no images")
    return [(name.strip(), label.strip()) for name, label in body]


def random_class_split(
    classes: ClassFiles, seed: int, fractions: tuple[float, float, float]
) -> dict[str, ClassFiles]:
    """Classes shuffled by `seed` and cut into train, val, test by `fractions`."""
    names = sorted(classes)
    order = np.random.default_rng(seed).permutation(len(names))
    total = sum(fractions)
    num_train = round(len(names) * fractions[0] / total)
    num_val = round(len(names) * fractions[1] / total)
    cuts = {
        "train": order[:num_train],
        "val": order[num_train : num_train + num_val],
        "test": order[num_train + num_val :],
    }
    return {
        split: {names[i]: classes[names[i]] for i in sorted(rows)}
        for split, rows in cuts.items()
    }


def _check_disjoint(found: dict[str, ClassFiles]) -> None:
    """No class may be in two splits (a test class seen in training)."""
    seen: dict[str, str] = {}
    for split, classes in found.items():
        for name in classes:
            if name in seen:
                raise DataError(f"class {name} is in both {seen[name]} and {split}")
            seen[name] = split


# --- converting and caching -------------------------------------------------------


def load_image_splits(
    found: dict[str, ClassFiles],
    cache_root: Path,
    name: str,
    image_size: int,
    channels: int,
    resize_filter: str,
) -> ImageDataset:
    """The splits of `found` as arrays, converted once and cached under `cache_root`.

    Statistics come from the `train` split, which `found` must hold.

    Raises:
        DataError: an image cannot be read (the message names the file).
    """
    options = {"size": image_size, "channels": channels, "filter": resize_filter}
    key = fingerprint(found, options)
    cache = cache_root / f"{name}-{key[:16]}"
    if not cache.is_dir():
        _remove_stale(cache_root, name)
    splits = {}
    for split, classes in found.items():
        path = cache / f"{split}.npz"
        if path.is_file():
            splits[split] = _read_split(path)
            continue
        converted = convert_split(classes, image_size, channels, resize_filter, split)
        _write_atomic(path, converted)
        splits[split] = converted
    stats_path = cache / "stats.json"
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
    else:
        stats = pixel_statistics(splits["train"].images)
        _write_atomic(stats_path, json.dumps(stats).encode())
    mean, std = (np.asarray(stats[k], np.float32) for k in ("mean", "std"))
    return ImageDataset(splits, mean, std, cache)


def fingerprint(found: dict[str, ClassFiles], options: dict) -> str:
    """A hash of every file's path, size and mtime, the split and the options."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, options]).encode())
    for split in sorted(found):
        for label, files in found[split].items():
            for path in files:
                stat = path.stat()
                line = f"{split}\t{label}\t{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n"
                digest.update(line.encode())
    return digest.hexdigest()


def convert_split(
    classes: ClassFiles, size: int, channels: int, resize_filter: str, split: str
) -> ImageSplit:
    """Reads and resizes every image of a split, with a progress bar."""
    counts = np.array([len(files) for files in classes.values()], np.int64)
    images = np.empty((int(counts.sum()), size, size, channels), np.uint8)
    files = [path for paths in classes.values() for path in paths]
    bar = tqdm(files, desc=f"converting {split} images", unit="img", disable=None)
    for row, path in enumerate(bar):
        images[row] = read_image(path, size, channels, resize_filter)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return ImageSplit(images, np.array(list(classes)), offsets, counts)


def read_image(path: Path, size: int, channels: int, resize_filter: str) -> np.ndarray:
    """One image as uint8 `[size, size, channels]`.

    Raises:
        DataError: Pillow cannot read it (not an image, truncated, unreadable).
    """
    from PIL import Image, UnidentifiedImageError

    mode = "RGB" if channels == 3 else "L"
    filters = {name: getattr(Image.Resampling, name.upper()) for name in FILTERS}
    try:
        with Image.open(path) as opened:
            image = opened.convert(mode)
            if image.size != (size, size):
                image = image.resize((size, size), filters[resize_filter])
            pixels = np.asarray(image, np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"{path}: cannot read this image ({error})") from None
    return pixels.reshape(size, size, channels)


def pixel_statistics(images: np.ndarray, chunk: int = 4096) -> dict[str, list]:
    """Per-channel mean and standard deviation of `[X, S, S, C]` uint8 pixels as
    values in [0, 1], accumulated in float64 chunk by chunk."""
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64) / 255
        total += block.sum(axis=(0, 1, 2))
        squares += np.square(block).sum(axis=(0, 1, 2))
    count = images.size / images.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0))
    return {"mean": mean.tolist(), "std": np.maximum(std, 1e-3).tolist()}


def _read_split(path: Path) -> ImageSplit:
    with np.load(path, allow_pickle=False) as npz:
        return ImageSplit(**{key: npz[key] for key in ImageSplit._fields})


def _write_atomic(path: Path, content: ImageSplit | bytes) -> None:
    """Writes a split (or bytes) whole or not at all. A data root that cannot be
    written to (read-only, shared) only means no cache; any other failure (a full
    disk) is an error naming the file."""
    if not os.access(_existing_parent(path), os.W_OK):
        return
    try:
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                np.savez(f, **content._asdict())
    except OSError as error:
        raise DataError(f"{path}: cannot write the cache ({error})") from None


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _remove_stale(cache_root: Path, name: str) -> None:
    """Removes older conversions of the same source (a changed source makes a new
    fingerprint, so they would never be read again)."""
    for stale in cache_root.glob(f"{name}-*/"):
        if len(stale.name) == len(name) + 17:
            shutil.rmtree(stale, ignore_errors=True)
