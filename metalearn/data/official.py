"""Reading Omniglot in its official layout, from the zips or their unpacked folders.

Each image is `<set>/<Alphabet>/character<NN>/<char_id:04d>_<drawer:02d>.png`, where
`<set>` is `images_background` or `images_evaluation`; each zip holds that folder at
its top level, named as the zip (`images_background_small1/` in the small archive).
"""

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from metalearn.data.root import DataError

# Git blob ids of the official zips in brendenlake/omniglot (commit 057f034, python/).
BLOB_IDS = {
    "images_background": "71fd167eb6fdd312049395fbd247147a4b234231",
    "images_evaluation": "8ccde0ed1565641f1fa8c57cdc6ff634e15fc5c1",
}
NUM_CHARACTERS = {"images_background": 964, "images_evaluation": 659}
DRAWERS = 20  # drawings of each character, by 20 different people
SIDE = 105  # pixels
PNG = re.compile(
    r"(?P<alphabet>[^/]+)/character(?P<number>\d+)/(?P<id>\d+)_(?P<drawer>\d+)\.png"
)


class Characters(NamedTuple):
    """Omniglot characters as in `omniglot.npz`: one row per character, by char_id."""

    images: np.ndarray  # [C, 20, 105, 105] uint8, 255 = paper, 0 = ink
    char_id: np.ndarray  # [C] int16, the official id (1..1623)
    alphabet: np.ndarray  # [C] int16, index into alphabet_names
    alphabet_names: np.ndarray  # [A] str, ordered by their first char_id
    character_number: np.ndarray  # [C] int16, NN of characterNN (1-based)
    background: np.ndarray  # [C] bool, True: from images_background


class _Character(NamedTuple):
    """One character found in the layout, with its PNGs not yet decoded."""

    alphabet: str
    number: int
    background: bool
    pngs: dict[int, bytes]  # drawer (1..20) -> PNG bytes


def read_official(path: Path) -> Characters:
    """Reads whatever characters one official zip or unpacked folder holds.

    Args:
        path: `images_background*.zip` / `images_evaluation*.zip`, or the unpacked
            folder of that name (its subfolders are the alphabets).

    Raises:
        DataError: no drawings found, a character without its 20 drawings, or an
            image that is not a 105x105 PNG.
    """
    return _decode(_find_characters(path), str(path))


def read_sets(paths: dict[str, Path]) -> Characters:
    """Reads the full Omniglot from both official sets, refusing an incomplete one.

    Args:
        paths: `images_background` and `images_evaluation` -> zip or folder.

    Raises:
        DataError: a set is missing characters (or drawings), or an id repeats.
    """
    found: dict[int, _Character] = {}
    for name, expected in NUM_CHARACTERS.items():
        characters = _find_characters(paths[name])
        if len(characters) != expected:
            raise DataError(
                f"{paths[name]} holds {len(characters)} of the {expected} characters "
                f"of {name}: the copy is incomplete"
            )
        found |= characters
    if len(found) != sum(NUM_CHARACTERS.values()):
        raise DataError(
            f"{paths['images_evaluation']} repeats char_ids of the other set"
        )
    return _decode(found, "Omniglot")


def _find_characters(path: Path) -> dict[int, _Character]:
    """Indexes the PNGs under `path` by char_id, checking each has its 20 drawings."""
    background = _is_background(path)
    found: dict[int, _Character] = {}
    for relative, data in _pngs(path):
        if match := PNG.fullmatch(relative):
            alphabet, number = match["alphabet"], int(match["number"])
            new = _Character(alphabet, number, background, {})
            character = found.setdefault(int(match["id"]), new)
            if character[:2] != (alphabet, number):
                raise DataError(f"{path}: char_id {match['id']} is in two folders")
            character.pngs[int(match["drawer"])] = data
    if not found:
        raise DataError(f"{path}: no <Alphabet>/characterNN/XXXX_YY.png images found")
    for character in found.values():
        _check_drawers(character, path)
    return found


def _is_background(path: Path) -> bool:
    """Which set `path` is, from its name: `images_background*` or `..._evaluation*`."""
    if path.name.startswith("images_background"):
        return True
    if path.name.startswith("images_evaluation"):
        return False
    raise DataError(
        f"{path}: name must start with images_background or images_evaluation"
    )


def _check_drawers(character: _Character, path: Path) -> None:
    """Raises DataError unless the character has drawers 1..20."""
    if sorted(character.pngs) != list(range(1, DRAWERS + 1)):
        raise DataError(
            f"{path}: {character.alphabet}/character{character.number:02d} has "
            f"{len(character.pngs)} drawings, expected drawers 01..{DRAWERS}"
        )


def _pngs(path: Path) -> Iterator[tuple[str, bytes]]:
    """(path below the set's top folder, bytes) of every PNG in a zip or folder."""
    if path.is_dir():
        for png in sorted(path.glob("*/*/*.png")):
            yield png.relative_to(path).as_posix(), png.read_bytes()
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                _top, _, relative = name.partition("/")  # top: named like the zip
                if name.endswith(".png"):
                    yield relative, archive.read(name)
    except (OSError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable zip file ({error})") from None


def _decode(found: dict[int, _Character], source: str) -> Characters:
    """Decodes the PNGs into arrays, rows sorted by char_id."""
    ids = sorted(found)
    characters = [found[i] for i in ids]
    names = list(dict.fromkeys(c.alphabet for c in characters))
    images = np.empty((len(ids), DRAWERS, SIDE, SIDE), np.uint8)
    progress = tqdm(characters, desc=f"reading {source}", unit="char", disable=None)
    for row, character in enumerate(progress):
        for drawer, data in character.pngs.items():
            where = f"{character.alphabet}/character{character.number:02d}/{drawer}"
            images[row, drawer - 1] = _decode_png(data, f"{source}: {where}")
    return Characters(
        images=images,
        char_id=np.array(ids, np.int16),
        alphabet=np.array([names.index(c.alphabet) for c in characters], np.int16),
        alphabet_names=np.array(names),
        character_number=np.array([c.number for c in characters], np.int16),
        background=np.array([c.background for c in characters]),
    )


def _decode_png(data: bytes, where: str) -> np.ndarray:
    """A PNG as [105, 105] uint8 grey (Pillow's "L": 1-bit becomes 0 or 255)."""
    from PIL import Image, UnidentifiedImageError  # only needed when converting

    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("L"))
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{where}: not a readable PNG ({error})") from None
    if pixels.shape != (SIDE, SIDE):
        raise DataError(f"{where}: image is {pixels.shape}, expected ({SIDE}, {SIDE})")
    return pixels
