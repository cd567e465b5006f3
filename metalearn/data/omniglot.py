"""Omniglot: prepare it once into one array file, load it for training, class splits.

`prepare_omniglot` downloads the two official archives (or imports local copies),
checks them and converts them into `<root>/omniglot/omniglot.npz`:

| key | shape, dtype | meaning |
| --- | --- | --- |
| `images` | [1623, 20, 105, 105] uint8 | 255 = paper, 0 = ink (PNG as PIL "L") |
| `char_id` | [1623] int16 | official id from `XXXX_YY.png`; row i has id i + 1 |
| `alphabet` | [1623] int16 | index into `alphabet_names` |
| `alphabet_names` | [50] str | alphabet folder names, in order of first char_id |
| `character_number` | [1623] int16 | NN of the folder `characterNN` (1-based) |
| `background` | [1623] bool | True: from `images_background` (964 characters) |

`load_omniglot` gives binary images at a chosen size (ink = 1) and caches them.

Data licence: the Omniglot data (github.com/brendenlake/omniglot) is released under
the MIT License, Copyright (c) 2015 Brenden Lake; keep this notice with any copy.
Please cite B. M. Lake, R. Salakhutdinov, J. B. Tenenbaum (2015), Human-level concept
learning through probabilistic program induction, Science 350(6266).
The Vinyals et al. (2016) class lists in `splits/omniglot/vinyals/` come from
jakesnell/prototypical-networks (MIT License, Copyright (c) 2017 Jake Snell, LICENSE
beside them).
"""

import contextlib
import shutil
import tempfile
import zipfile
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from metalearn.data import official
from metalearn.data.download import download, verify
from metalearn.data.official import BLOB_IDS, NUM_CHARACTERS, Characters, read_sets
from metalearn.data.root import DataError, atomic_path, check_readable_dir

URL_BASE = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
PREPARE = "python -m metalearn.data omniglot"
SPLITS = ("train", "val", "trainval", "test")
TOTAL = sum(NUM_CHARACTERS.values())  # 1623
# Documented format: key -> (dtype, shape); None is any length. Checked in order.
FORMAT = {
    "char_id": ("int16", (TOTAL,)),
    "alphabet": ("int16", (TOTAL,)),
    "alphabet_names": ("str", (None,)),
    "character_number": ("int16", (TOTAL,)),
    "background": ("bool", (TOTAL,)),
    "images": ("uint8", (TOTAL, official.DRAWERS, official.SIDE, official.SIDE)),
}


class Omniglot(NamedTuple):
    """Omniglot for training: one row per character, sorted by official id."""

    images: np.ndarray  # [1623, 20, S, S] uint8, 1 = ink, 0 = paper
    alphabet_names: np.ndarray  # [50] str
    alphabet: np.ndarray  # [1623] int16, index into alphabet_names
    character_number: np.ndarray  # [1623] int16, NN of characterNN (1-based)
    background: np.ndarray  # [1623] bool, True: from images_background


# --- preparing -----------------------------------------------------------------


def prepare_omniglot(
    root: Path, source: Path | None = None, url_base: str | None = None
) -> Path:
    """Omniglot (1623 characters x 20 drawings) as `<root>/omniglot/omniglot.npz`.

    The two official zips are downloaded and checked against their git blob ids,
    or imported from a local copy, then converted once.

    Args:
        root: the data root.
        source: local copy instead of a download: a directory holding
            `images_background.zip` and `images_evaluation.zip` or their unpacked
            folders (or a directory up to two levels above them), or an npz in the
            format above.
        url_base: where the two zips are downloaded from (default `URL_BASE`).

    Returns:
        The path of the prepared file (kept as it is if it exists and no `source`).

    Raises:
        DataError: the source is missing, corrupt, incomplete or not in the format.
    """
    check_readable_dir(root)
    target = root / "omniglot" / "omniglot.npz"
    if source is None and target.exists():
        return target
    if source is None:
        _download_and_convert(target, url_base or URL_BASE)
    elif source.suffix == ".npz" and source.is_file():
        import_npz(source, target)
    else:
        _save(_convert_local(source), target)
    for stale in target.parent.glob("omniglot_*px.npy"):
        stale.unlink()  # resized from the previous file
    return target


def _download_and_convert(target: Path, url_base: str) -> None:
    """Downloads both zips into a temporary folder beside `target` and converts."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        paths = {}
        for name, blob_id in BLOB_IDS.items():
            url = f"{url_base.rstrip('/')}/{name}.zip"
            paths[name] = download(url, Path(tmp) / f"{name}.zip", blob_id)
        _save(read_sets(paths), target)


def _convert_local(source: Path) -> Characters:
    """Reads the official sets found under `source`, verifying zips first."""
    paths = _locate_sets(source.expanduser())
    for name, path in paths.items():
        if path.suffix == ".zip":
            verify(path, BLOB_IDS[name])
    return read_sets(paths)


def _locate_sets(source: Path) -> dict[str, Path]:
    """Finds the directory holding both sets (zip or folder) at most 2 levels down."""
    if not source.exists():
        raise DataError(f"{source}: no such file or directory")
    if not source.is_dir():
        raise DataError(
            f"{source} is not a directory with images_background.zip and "
            "images_evaluation.zip (or their unpacked folders), nor an .npz file"
        )
    for folder in [source, *sorted(source.glob("*/")), *sorted(source.glob("*/*/"))]:
        found = {name: _find_set(folder, name) for name in BLOB_IDS}
        sets = {name: path for name, path in found.items() if path is not None}
        if len(sets) == len(BLOB_IDS):
            return sets
    raise DataError(
        f"no images_background and images_evaluation (zips or folders) in {source}"
    )


def _find_set(folder: Path, name: str) -> Path | None:
    """`folder/<name>.zip`, else the unpacked `folder/<name>/`, else None."""
    zipped, unpacked = folder / f"{name}.zip", folder / name
    if zipped.is_file():
        return zipped
    return unpacked if unpacked.is_dir() else None


def import_npz(source: Path, target: Path) -> None:
    """Copies an npz to `target` after checking it has the documented format.

    Raises:
        DataError: unreadable, other keys, dtypes or shapes, or bad contents.
    """
    arrays = _read_npz(source)
    check_format(arrays, str(source))
    with zipfile.ZipFile(source) as archive:
        members = archive.infolist()
    if any(member.compress_type != zipfile.ZIP_DEFLATED for member in members):
        _save(Characters(**arrays), target)  # written by np.savez: compress it
        return
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz, without unpickling anything."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable npz file ({error})") from None


def check_format(arrays: dict[str, np.ndarray], source: str) -> None:
    """Raises DataError unless `arrays` are Omniglot in the documented format."""
    if sorted(arrays) != sorted(FORMAT):
        raise DataError(
            f"{source}: keys {sorted(arrays)}, expected exactly {sorted(FORMAT)}"
        )
    for key, (dtype, shape) in FORMAT.items():
        array = arrays[key]
        kind_ok = array.dtype.kind == "U" if dtype == "str" else array.dtype == dtype
        shape_ok = len(array.shape) == len(shape) and all(
            n is None or n == m for n, m in zip(shape, array.shape, strict=True)
        )
        if not (kind_ok and shape_ok):
            raise DataError(
                f"{source}: {key} is {array.dtype} {array.shape}, expected {dtype} "
                f"{tuple('any' if n is None else n for n in shape)}"
            )
    _check_contents(arrays, source)


def _check_contents(arrays: dict[str, np.ndarray], source: str) -> None:
    """The checks on values: ids 1..1623, alphabet indices, 0/255 pixels, split."""
    problems = {
        "char_id is not 1..1623 in order": np.any(
            arrays["char_id"] != np.arange(TOTAL) + 1
        ),
        "alphabet indices out of range": np.any(
            (arrays["alphabet"] < 0)
            | (arrays["alphabet"] >= len(arrays["alphabet_names"]))
        ),
        "images hold values other than 0 and 255": np.any(
            (arrays["images"] != 0) & (arrays["images"] != 255)
        ),
        "background is not the 964 images_background characters": (
            arrays["background"].sum() != NUM_CHARACTERS["images_background"]
        ),
    }
    for problem, found in problems.items():
        if found:
            raise DataError(f"{source}: {problem}")


def _save(characters: Characters, target: Path) -> None:
    """Checks `characters` and writes them with `np.savez_compressed`, atomically."""
    check_format(characters._asdict(), "converted data")
    with atomic_path(target) as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, **characters._asdict())


# --- loading -------------------------------------------------------------------


def load_omniglot(root: Path, image_size: int = 28) -> Omniglot:
    """Loads prepared Omniglot as binary images of `image_size` pixels a side.

    Images are resized from 105 by nearest neighbour, taking source pixel
    `floor((i + 0.5) * 105 / S)`: this reproduces the MAML reference code
    (cbfinn/maml) pixel for pixel, whose LANCZOS resize of the 1-bit PNGs Pillow
    silently performs as NEAREST. The result is cached as
    `<root>/omniglot/omniglot_<S>px.npy`, so later calls are fast.

    Returns:
        Omniglot with images [1623, 20, S, S] uint8, ink = 1, paper = 0.

    Raises:
        DataError: the root is unreadable or the data is not prepared.
    """
    path = _prepared(Path(root).expanduser())
    with np.load(path, allow_pickle=False) as npz:
        meta = {key: npz[key] for key in Omniglot._fields if key != "images"}
        cache = path.with_name(f"omniglot_{image_size}px.npy")
        images = _cached_images(cache, path)
        if images is None:
            images = _resize_and_cache(npz["images"], image_size, cache)
    return Omniglot(images=images, **meta)


def _prepared(root: Path) -> Path:
    """The prepared npz under `root`, or a DataError saying how to prepare it."""
    check_readable_dir(root)
    path = root / "omniglot" / "omniglot.npz"
    if not path.is_file():
        raise DataError(
            f"Omniglot is not prepared: {path} is missing; prepare it with "
            f"`{PREPARE} --root {root}` (or `{PREPARE} --root {root} --from "
            "<local copy>` without internet)"
        )
    return path


def _cached_images(cache: Path, source: Path) -> np.ndarray | None:
    """The resized images if cached after `source` was written, else None."""
    if not cache.is_file() or cache.stat().st_mtime < source.stat().st_mtime:
        return None
    images = np.load(cache, allow_pickle=False)
    return images if images.shape[:2] == (TOTAL, official.DRAWERS) else None


def _resize_and_cache(images: np.ndarray, size: int, cache: Path) -> np.ndarray:
    """Resizes and binarises [..., 105, 105] images; caches them if the root allows."""
    images = (resize_nearest(images, size) < 128).astype(np.uint8)
    # A read-only shared root still loads, only without the cache.
    with contextlib.suppress(OSError), atomic_path(cache) as tmp, tmp.open("wb") as f:
        np.save(f, images)
    return images


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes, [..., H, W] -> [..., S, S].

    Output pixel i takes source pixel `floor((i + 0.5) * H / S)` (the centre rule,
    as Pillow's NEAREST), computed in integers so no rounding can shift it.
    """
    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    rows = (2 * np.arange(size) + 1) * images.shape[-2] // (2 * size)
    cols = (2 * np.arange(size) + 1) * images.shape[-1] // (2 * size)
    return images[..., rows, :][..., cols]


# --- class splits --------------------------------------------------------------


def vinyals_split(name: str) -> list[tuple[str, int, int]]:
    """The classes of a Vinyals et al. (2016) split, as Prototypical Networks lists.

    Args:
        name: `train` (1028 characters), `val` (172), `trainval` (1200) or `test`
            (423); every character is listed with its 4 rotations.

    Returns:
        (alphabet name, character number, rotation in degrees) per class, in the
        order of the list file.
    """
    if name not in SPLITS:
        raise ValueError(f"unknown Vinyals split {name!r}; choose from {SPLITS}")
    lists = resources.files("metalearn.data") / "splits" / "omniglot" / "vinyals"
    return [_parse_class(line) for line in (lists / f"{name}.txt").read_text().split()]


def _parse_class(line: str) -> tuple[str, int, int]:
    """`Alphabet/characterNN/rotDDD` -> (Alphabet, NN, DDD)."""
    alphabet, character, rotation = line.split("/")
    return alphabet, int(character.removeprefix("character")), int(rotation[3:])


def character_rows(data: Omniglot | Characters) -> dict[tuple[str, int], int]:
    """Maps (alphabet name, character number) to the character's row in `data`."""
    names = [str(name) for name in data.alphabet_names]
    pairs = zip(data.alphabet, data.character_number, strict=True)
    return {(names[a], int(n)): row for row, (a, n) in enumerate(pairs)}
