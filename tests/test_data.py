"""Omniglot preparation: download, official layout, npz import, loading, splits."""

import functools
import http.server
import math
import re
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metalearn.data import (
    DataError,
    character_rows,
    default_data_root,
    load_omniglot,
    omniglot,
    vinyals_split,
)
from metalearn.data.__main__ import main
from metalearn.data.download import download, git_blob_id
from metalearn.data.official import read_official

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
NPZ = SHARED / "omniglot.npz"
SMALL_ZIP = SHARED / "official" / "images_background_small1.zip"
SMALL_BLOB = "9f7a8841ab7aa328da78606307b624eeec5ba0a1"
needs_shared = pytest.mark.skipif(
    not NPZ.is_file() or not SMALL_ZIP.is_file(), reason=f"no shared data in {SHARED}"
)


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def shared() -> dict[str, np.ndarray]:
    """The shared npz, read once (all arrays in memory)."""
    if not NPZ.is_file():
        pytest.skip(f"no shared data in {SHARED}")
    with np.load(NPZ) as npz:
        return dict(npz)


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL) of an HTTP server on the loopback interface."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(Quiet, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


# --- download -------------------------------------------------------------------


@needs_shared
def test_download_keeps_a_verified_file(server, tmp_path):
    served, url = server
    shutil.copy(SMALL_ZIP, served / "small.zip")
    dest = tmp_path / "cache" / "small.zip"
    assert download(f"{url}/small.zip", dest, SMALL_BLOB) == dest
    assert git_blob_id(dest) == SMALL_BLOB
    assert files_under(dest.parent) == [dest]


def flip_a_byte(data: bytes) -> bytes:
    return data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]


@needs_shared
@pytest.mark.parametrize("damage", [flip_a_byte, lambda data: data[:-5000]])
def test_download_refuses_a_damaged_file_and_leaves_nothing(server, tmp_path, damage):
    served, url = server
    (served / "small.zip").write_bytes(damage(SMALL_ZIP.read_bytes()))
    dest = tmp_path / "cache" / "small.zip"
    with pytest.raises(DataError, match=f"small.zip: checksum mismatch.*{SMALL_BLOB}"):
        download(f"{url}/small.zip", dest, SMALL_BLOB)
    assert files_under(dest.parent) == []


def test_download_reports_a_missing_file_in_one_line(server, tmp_path):
    _, url = server
    with pytest.raises(DataError, match="could not download .*404") as error:
        download(f"{url}/absent.zip", tmp_path / "absent.zip", SMALL_BLOB)
    assert "\n" not in str(error.value)
    assert files_under(tmp_path) == []


@needs_shared
@pytest.mark.parametrize("serve", ["small archive", "nothing"])
def test_cli_download_refuses_incomplete_or_missing_archives(
    server, tmp_path, monkeypatch, capsys, serve
):
    # The small archive passes as images_background only with its own blob id.
    served, url = server
    if serve == "small archive":
        for name in omniglot.BLOB_IDS:
            shutil.copy(SMALL_ZIP, served / f"{name}.zip")
            monkeypatch.setitem(omniglot.BLOB_IDS, name, SMALL_BLOB)
    root = tmp_path / "root"
    assert main(["omniglot", "--root", str(root), "--url-base", url]) == 2
    message = capsys.readouterr().err
    expected = "holds 136 of the 964" if serve == "small archive" else "404"
    assert expected in message and message.count("\n") == 1
    assert files_under(root) == []


# --- the official layout --------------------------------------------------------


@pytest.fixture(scope="module")
def unzipped(tmp_path_factory) -> Path:
    """The small official archive unpacked: its folder images_background_small1/."""
    if not SMALL_ZIP.is_file():
        pytest.skip(f"no shared data in {SHARED}")
    folder = tmp_path_factory.mktemp("unzipped")
    with zipfile.ZipFile(SMALL_ZIP) as archive:
        archive.extractall(folder)
    return folder / "images_background_small1"


@needs_shared
@pytest.mark.parametrize("form", ["zip", "folder"])
def test_official_reader_matches_the_shared_npz(shared, unzipped, form):
    found = read_official(SMALL_ZIP if form == "zip" else unzipped)
    rows = found.char_id.astype(int) - 1
    assert found.images.shape == (136, 20, 105, 105)
    np.testing.assert_array_equal(found.images, shared["images"][rows])
    names = shared["alphabet_names"][shared["alphabet"][rows]]
    np.testing.assert_array_equal(found.alphabet_names[found.alphabet], names)
    np.testing.assert_array_equal(
        found.character_number, shared["character_number"][rows]
    )
    assert found.background.all()


@needs_shared
def test_official_reader_refuses_a_character_with_a_missing_drawing(unzipped, tmp_path):
    folder = shutil.copytree(unzipped, tmp_path / "images_background")
    (folder / "Greek" / "character03" / "0396_07.png").unlink()
    with pytest.raises(DataError, match="Greek/character03 has 19 drawings"):
        read_official(folder)


@needs_shared
def test_cli_from_folders_refuses_an_incomplete_copy(unzipped, tmp_path, capsys):
    # A clone with its zips unpacked in place: found two levels down.
    python = tmp_path / "omniglot" / "python"
    shutil.copytree(unzipped, python / "images_background")
    shutil.copytree(unzipped / "Greek", python / "images_evaluation" / "Greek")
    root = tmp_path / "root"
    argv = ["omniglot", "--from", str(tmp_path / "omniglot"), "--root", str(root)]
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert "images_background holds 136 of the 964 characters" in message
    assert message.count("\n") == 1 and not root.exists()


# --- importing an npz and loading -----------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A data root prepared from the shared npz through the CLI."""
    if not NPZ.is_file():
        pytest.skip(f"no shared data in {SHARED}")
    root = tmp_path_factory.mktemp("root")
    assert main(["omniglot", "--from", str(NPZ), "--root", str(root)]) == 0
    return root


def test_import_keeps_the_npz_and_a_second_prepare_does_not_download(prepared):
    assert (prepared / "omniglot" / "omniglot.npz").read_bytes() == NPZ.read_bytes()
    nowhere = "http://127.0.0.1:9"  # nothing listens: any download would fail
    assert main(["omniglot", "--root", str(prepared), "--url-base", nowhere]) == 0


def test_load_gives_binary_28px_images_with_ink_one(prepared, shared):
    data = load_omniglot(prepared)
    assert data.images.shape == (1623, 20, 28, 28) and data.images.dtype == np.uint8
    assert set(np.unique(data.images)) == {0, 1}
    ink = omniglot.resize_nearest(shared["images"][5, 3], 28) == 0
    np.testing.assert_array_equal(data.images[5, 3], ink)
    for key in ("alphabet_names", "alphabet", "character_number", "background"):
        np.testing.assert_array_equal(getattr(data, key), shared[key])


def test_load_writes_the_resized_cache_once_and_reuses_it(prepared, monkeypatch):
    first = load_omniglot(prepared)  # resizes, unless an earlier test did
    assert (prepared / "omniglot" / "omniglot_28px.npy").is_file()

    def no_resize(*args):
        raise AssertionError("resized again instead of using the cache")

    monkeypatch.setattr(omniglot, "resize_nearest", no_resize)
    np.testing.assert_array_equal(load_omniglot(prepared).images, first.images)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def small_arrays(**changes) -> dict[str, np.ndarray]:
    """The documented keys with small arrays, changed as asked (None: dropped)."""
    arrays = {
        "images": np.zeros((3, 20, 105, 105), np.uint8),
        "char_id": np.arange(1, 1624, dtype=np.int16),
        "alphabet": np.zeros(1623, np.int16),
        "alphabet_names": np.array(["Greek"]),
        "character_number": np.ones(1623, np.int16),
        "background": np.zeros(1623, bool),
    }
    arrays.update(changes)
    return {key: value for key, value in arrays.items() if value is not None}


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (small_arrays(background=None), "keys .* expected exactly"),
        (small_arrays(), r"images is uint8 \(3, 20, 105, 105\), expected uint8 "),
        (small_arrays(char_id=np.arange(1, 1624)), r"char_id is int64 \(1623,\)"),
        (small_arrays(images=np.zeros((3, 20, 105, 105))), "images is float64"),
        (small_arrays(alphabet_names=np.array([{}])), "not a readable npz"),
    ],
    ids=["keys", "shape", "dtype", "images dtype", "pickle"],
)
def test_import_refuses_a_bad_npz_and_writes_nothing(tmp_path, capsys, arrays, message):
    bad = write_npz(tmp_path / "bad.npz", arrays)
    root = tmp_path / "root"
    assert main(["omniglot", "--from", str(bad), "--root", str(root)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {bad}") and error.count("\n") == 1
    assert re.search(message, error)
    assert not root.exists()


def test_load_without_prepared_data_names_the_command(tmp_path):
    missing = tmp_path / "omniglot" / "omniglot.npz"
    with pytest.raises(DataError, match="python -m metalearn.data omniglot") as error:
        load_omniglot(tmp_path)
    assert str(missing) in str(error.value) and "\n" not in str(error.value)


def test_load_refuses_a_root_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is not a directory"):
        load_omniglot(tmp_path / "file")


# --- resize, data root, CLI help ------------------------------------------------


@pytest.mark.parametrize(("source", "size"), [(105, 28), (105, 84), (105, 105), (7, 3)])
def test_resize_takes_the_centre_source_pixel(source, size):
    # Each pixel holds its own coordinates, so the result shows which were taken.
    rows, cols = np.meshgrid(np.arange(source), np.arange(source), indexing="ij")
    image = rows * 1000 + cols
    taken = [math.floor((i + 0.5) * source / size) for i in range(size)]
    expected = np.array(taken)[:, None] * 1000 + np.array(taken)
    np.testing.assert_array_equal(omniglot.resize_nearest(image, size), expected)


@needs_shared
def test_resize_matches_pillow_on_1bit_images_as_in_the_maml_code(shared):
    for image in shared["images"][:3].reshape(-1, 105, 105):
        bits = Image.fromarray(image).convert("1")
        pillow = np.asarray(bits.resize((28, 28), Image.LANCZOS).convert("L"))
        np.testing.assert_array_equal(omniglot.resize_nearest(image, 28), pillow)


def test_default_data_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("METALEARN_DATA", raising=False)
    assert default_data_root() == tmp_path / ".cache" / "metalearn"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_root() == tmp_path / "xdg" / "metalearn"
    monkeypatch.setenv("METALEARN_DATA", str(tmp_path / "data"))
    assert default_data_root() == tmp_path / "data"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "{tmp}/absent"], "absent: no such file or directory"),
        (["--from", "{tmp}"], "no images_background and images_evaluation"),
        (["--root", "{tmp}/file"], "data root .*file is not a directory"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("")
    argv = ["omniglot", "--root", str(tmp_path / "root")]
    assert main(argv + [a.format(tmp=tmp_path) for a in args]) == 2
    error = capsys.readouterr().err
    assert re.match(f"error: .*{message}", error) and error.count("\n") == 1


def test_cli_help_lists_the_datasets(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "omniglot" in capsys.readouterr().out


# --- Vinyals split --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "characters"),
    [("train", 1028), ("val", 172), ("trainval", 1200), ("test", 423)],
)
def test_vinyals_split_counts_and_rotations(name, characters):
    classes = vinyals_split(name)
    assert len(classes) == 4 * characters
    assert len({(a, n) for a, n, _ in classes}) == characters
    assert {rotation for *_, rotation in classes} == {0, 90, 180, 270}


def test_vinyals_splits_are_disjoint_and_trainval_is_train_plus_val():
    train, val, trainval, test = (set(vinyals_split(s)) for s in omniglot.SPLITS)
    assert train | val == trainval
    train, val, test = ({(a, n) for a, n, _ in s} for s in (train, val, test))
    assert not (train & val or train & test or val & test)  # as characters


@needs_shared
def test_vinyals_characters_are_all_in_the_data(shared):
    rows = character_rows(
        omniglot.Omniglot(**{k: shared[k] for k in omniglot.Omniglot._fields})
    )
    listed = {(a, n) for s in ("trainval", "test") for a, n, _ in vinyals_split(s)}
    assert len(listed) == 1623 and listed <= set(rows)
    assert sorted(rows[c] for c in listed) == list(range(1623))


# --- slow: a complete official layout -------------------------------------------


@pytest.mark.slow
@needs_shared
def test_folders_of_the_full_layout_convert_to_the_shared_npz(shared, tmp_path):
    """Writes all 32,460 PNGs as 1-bit files, as the official zips hold them."""
    names = shared["alphabet_names"][shared["alphabet"]]
    for i, char_id in enumerate(shared["char_id"]):
        split = "background" if shared["background"][i] else "evaluation"
        number = shared["character_number"][i]
        folder = (
            tmp_path / "src" / f"images_{split}" / names[i] / f"character{number:02d}"
        )
        folder.mkdir(parents=True)
        for j, image in enumerate(shared["images"][i]):
            Image.fromarray(image).convert("1").save(
                folder / f"{char_id:04d}_{j + 1:02d}.png"
            )
    root = tmp_path / "root"
    assert main(["omniglot", "--from", str(tmp_path / "src"), "--root", str(root)]) == 0
    with np.load(root / "omniglot" / "omniglot.npz") as npz:
        assert sorted(npz.files) == sorted(shared)
        for key, array in shared.items():
            assert npz[key].dtype == array.dtype
            np.testing.assert_array_equal(npz[key], array)
