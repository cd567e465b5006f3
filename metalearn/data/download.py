"""Downloads checked against git blob ids, so a bad file never reaches the cache."""

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from metalearn.data.root import DataError, atomic_path

CHUNK = 1 << 16


def git_blob_id(path: Path) -> str:
    """The git blob id of a file: SHA-1 of `b"blob <size>\\0"` + its bytes."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, blob_id: str, name: str | None = None) -> None:
    """Raises DataError naming the file unless its git blob id is `blob_id`."""
    actual = git_blob_id(path)
    if actual != blob_id:
        raise DataError(
            f"{name or path}: checksum mismatch, expected git blob {blob_id}, got "
            f"{actual} (corrupt, truncated or not the official file)"
        )


def download(url: str, dest: Path, blob_id: str, timeout: float = 60.0) -> Path:
    """Downloads `url` to `dest` if its git blob id is `blob_id`.

    The bytes stream to a temporary file beside `dest` with a progress bar; `dest`
    appears only once they are complete and verified, and nothing is left otherwise.

    Raises:
        DataError: the download failed or its checksum does not match.
    """
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                _stream(response, tmp, dest.name)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            http_error = isinstance(error, urllib.error.HTTPError)
            reason = error if http_error else getattr(error, "reason", error)
            raise DataError(f"could not download {url}: {reason}") from None
        verify(tmp, blob_id, name=url)
    return dest


def _stream(response: http.client.HTTPResponse, path: Path, label: str) -> None:
    """Copies a response body into `path`, showing bytes done (on a terminal)."""
    total = int(response.headers.get("Content-Length") or 0) or None
    bar = tqdm(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=None,
        leave=False,
    )
    with bar, path.open("wb") as f:
        while chunk := response.read(CHUNK):
            f.write(chunk)
            bar.update(len(chunk))
