"""Data sets, prepared once into the data root: `python -m metalearn.data <name>`."""

from collections.abc import Callable
from pathlib import Path

from metalearn.data.omniglot import (
    Omniglot,
    character_rows,
    load_omniglot,
    prepare_omniglot,
    vinyals_split,
)
from metalearn.data.root import DataError, default_data_root

# name -> prepare(root, source=None, url_base=None) -> path of the prepared data
DATASETS: dict[str, Callable[..., Path]] = {"omniglot": prepare_omniglot}

__all__ = [
    "DATASETS",
    "DataError",
    "Omniglot",
    "character_rows",
    "default_data_root",
    "load_omniglot",
    "prepare_omniglot",
    "vinyals_split",
]
