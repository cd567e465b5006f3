"""Where prepared data lives, and how files land there without being half-written."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "METALEARN_DATA"


class DataError(RuntimeError):
    """A user-facing data problem, explained in one line (the CLI exits with 2)."""


def default_data_root() -> Path:
    """The data root when none is given: `$METALEARN_DATA`, else a user cache dir.

    The cache dir is `$XDG_CACHE_HOME/metalearn`, else `~/.cache/metalearn`.
    """
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "metalearn"


def check_readable_dir(path: Path) -> None:
    """Raises DataError unless `path` is missing or a readable directory."""
    if path.exists() and not path.is_dir():
        raise DataError(f"data root {path} is not a directory")
    if path.exists() and not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"data root {path} is not readable")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`, moved onto `path` only on success.

    Whatever goes wrong inside the block (an error, Ctrl-C), the temporary file is
    removed, so `path` either keeps its old content or gets the complete new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes 0600; a shared data root needs readable files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
