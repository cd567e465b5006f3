"""Image folders and miniImageNet on generated images, in every accepted layout.

Every synthetic class has its own colour pattern, and its id is written into the
first pixel's red value (PNG keeps it exactly), so an episode's images tell which
class they came from.
"""

import os
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import (
    PER_CLASS,
    SIDE,
    class_image,
    read_json,
    split_classes,
    train_main,
    write_image_folder,
    write_mini_standin,
)
from PIL import Image

from metalearn.data.image_folder import find_classes, load_image_splits
from metalearn.data.root import DataError
from metalearn.tasks import TASKS
from metalearn.tasks.mini_imagenet import ravi_split_dir


def options_of(overrides: list[str]) -> dict:
    """`task.key=value` overrides as factory keyword arguments."""
    options = {}
    for item in overrides:
        key, value = item.removeprefix("task.").split("=", 1)
        options[key] = (
            [float(v) for v in value[1:-1].split(",")] if "[" in value else value
        )
    if "split_fractions" in options:
        options["split_fractions"] = tuple(options["split_fractions"])
    return options


def make_tasks(data_root: Path, overrides: list[str], **extra):
    return TASKS.create(
        "image_folder",
        data_root,
        image_size=8,
        ways=3,
        **options_of(overrides),
        **extra,
    )


def class_ids(images: np.ndarray, mean, std) -> np.ndarray:
    """The class id each normalised image [M, S, S, 3] carries in its first pixel."""
    red = images[:, 0, 0, 0] * std[0] + mean[0]
    return np.rint(red * 255 / 10).astype(int)


@pytest.mark.parametrize("layout", ["split_folders", "csv", "class_folders"])
def test_every_layout_gives_disjoint_splits_and_shuffled_labels(tmp_path, layout):
    written = write_image_folder(tmp_path / "images", layout)
    # image_size=SIDE keeps the first pixel as written (no resize)
    tasks = TASKS.create(
        "image_folder",
        tmp_path / "data",
        image_size=SIDE,
        ways=3,
        **options_of(written["overrides"]),
    )
    keys = jax.random.split(jax.random.key(0), 40)
    ids = {}
    for split, family in tasks._asdict().items():
        assert family.input_shape == (SIDE, SIDE, 3)
        batch = jax.vmap(lambda k, f=family: f.sample(k, f.data, 2, 3))(keys)
        mean, std = np.asarray(family.data["mean"]), np.asarray(family.data["std"])
        support = np.asarray(batch.support_inputs).reshape(40 * 3 * 2, SIDE, SIDE, 3)
        support_ids = class_ids(support, mean, std).reshape(40, 3, 2)
        # both images of a label come from one class
        assert (support_ids[:, :, 0] == support_ids[:, :, 1]).all()
        ids[split] = support_ids[:, :, 0]
    train_ids, test_ids = set(ids["train"].ravel()), set(ids["test"].ravel())
    assert not train_ids & test_ids  # no test class in training
    assert len(train_ids) == 6 and len(test_ids) == 4  # every class is drawn
    # label 0 is not always the same class: labels are shuffled per episode
    assert len(set(ids["train"][:, 0])) > 1
    if layout != "class_folders":  # the files' own split, not a random one
        expected = {int(n[1:]) for n in split_classes()["test"]}
        assert test_ids == expected


def test_images_of_an_episode_are_distinct(tmp_path):
    written = write_image_folder(tmp_path / "images", "split_folders")
    tasks = make_tasks(tmp_path / "data", written["overrides"])
    batch = tasks.train.sample(jax.random.key(3), tasks.train.data, 5, 7)
    images = np.concatenate([batch.support_inputs, batch.query_inputs])
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) == len(images)


def test_normalisation_uses_the_training_split_statistics(tmp_path):
    written = write_image_folder(tmp_path / "images", "split_folders")
    tasks = make_tasks(tmp_path / "data", written["overrides"])
    found = find_classes(tmp_path / "images", "split_folders", ["train"])
    pixels = (
        np.stack(
            [
                np.asarray(Image.open(p).resize((8, 8), Image.Resampling.LANCZOS))
                for c in found["train"].values()
                for p in c
            ]
        )
        / 255
    )
    np.testing.assert_allclose(
        tasks.train.data["mean"], pixels.mean((0, 1, 2)), atol=1e-6
    )
    np.testing.assert_allclose(tasks.test.data["std"], pixels.std((0, 1, 2)), atol=1e-6)


def test_the_cache_is_reused_and_renewed_when_the_source_changes(tmp_path, monkeypatch):
    written = write_image_folder(tmp_path / "images", "split_folders")
    data_root = tmp_path / "data"
    first = make_tasks(data_root, written["overrides"])
    (cache,) = (data_root / "image_cache").iterdir()
    assert sorted(p.name for p in cache.iterdir()) == [
        "stats.json",
        "test.npz",
        "train.npz",
    ]

    import metalearn.data.image_folder as image_folder

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    with monkeypatch.context() as patch:
        patch.setattr(image_folder, "convert_split", no_conversion)
        again = make_tasks(data_root, written["overrides"])
    np.testing.assert_array_equal(
        first.train.data["images"], again.train.data["images"]
    )

    changed = tmp_path / "images" / "train" / "c00" / f"c00{0:08d}.png"
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different mtime even on coarse clocks
    renewed = make_tasks(data_root, written["overrides"])
    (new_cache,) = (data_root / "image_cache").iterdir()  # the stale one is gone
    assert new_cache != cache
    assert not np.array_equal(renewed.train.data["images"], first.train.data["images"])


def test_a_corrupt_image_is_named(tmp_path):
    written = write_image_folder(tmp_path / "images", "split_folders")
    bad = tmp_path / "images" / "train" / "c03" / f"c03{5:08d}.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=f"{bad}: cannot read this image"):
        make_tasks(tmp_path / "data", written["overrides"])
    assert not list((tmp_path / "data").rglob("train.npz"))  # nothing half-written


def test_a_truncated_jpeg_is_named(tmp_path):
    written = write_image_folder(tmp_path / "images", "csv", suffix=".jpg")
    bad = tmp_path / "images" / "images" / f"c07{3:08d}.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match=f"{bad}: cannot read this image"):
        make_tasks(tmp_path / "data", written["overrides"], eval_split="val")


def test_an_empty_class_folder_is_named(tmp_path):
    written = write_image_folder(tmp_path / "images", "split_folders")
    (tmp_path / "images" / "test" / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        make_tasks(tmp_path / "data", written["overrides"])


def test_a_missing_listed_file_and_a_shared_class_are_named(tmp_path):
    written = write_image_folder(tmp_path / "images", "csv")
    missing = tmp_path / "images" / "images" / f"c01{4:08d}.png"
    missing.unlink()
    with pytest.raises(DataError, match=f"{missing}: listed in train.csv but missing"):
        make_tasks(tmp_path / "data", written["overrides"])
    write_image_folder(tmp_path / "images", "csv")
    with (tmp_path / "images" / "splits" / "test.csv").open("a") as f:
        f.write(f"c00{0:08d}.png,c00\n")
    with pytest.raises(DataError, match="class c00 is in both train and test"):
        make_tasks(tmp_path / "data", written["overrides"])


def test_an_empty_random_split_is_named(tmp_path):
    write_image_folder(tmp_path / "images", "class_folders")
    options = {"root": str(tmp_path / "images"), "layout": "class_folders"}
    with pytest.raises(DataError, match="the val split of .* has no classes"):
        make_tasks(
            tmp_path / "data",
            [],
            **options,
            split_fractions=(1, 0, 1),
            eval_split="val",
        )


def test_a_bad_split_file_is_named(tmp_path):
    written = write_image_folder(tmp_path / "images", "csv")
    (tmp_path / "images" / "splits" / "train.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match="header filename,label"):
        make_tasks(tmp_path / "data", written["overrides"])


@pytest.mark.slow  # five train.py starts: ~7 s cold
def test_bad_options_name_the_key(tmp_path, capsys):
    written = write_image_folder(tmp_path / "images", "split_folders")
    base = ["task=image_folder", "task.ways=3", f"data.root={tmp_path / 'data'}"]
    cases = {
        "task.root=null": "task.root=None is not allowed",
        "task.ways=5": "task.ways=5 is not allowed: it must be at most 4",
        "task.channels=2": "task.channels=2 is not allowed: 1 (grey) or 3 (RGB)",
        "inner.k=10": f"class c00 of task=image_folder has only {PER_CLASS} examples",
        "task.layout=csv": "task.split_dir=None is not allowed",
        "task.split_fractions=[0,0,0]": "three shares >= 0 (train, val, test), not",
    }
    for override, message in cases.items():
        code = train_main(
            *base,
            *written["overrides"],
            *override.split(),
            f"hydra.run.dir={tmp_path / 'r'}",
        )
        err = capsys.readouterr().err
        assert code != 0 and message in err, (override, err)
        assert "Traceback" not in err


TINY = [
    "task=image_folder",
    "task.image_size=8",
    "task.ways=3",
    "model=mlp",
    "inner.k=1",
    "inner.lr=0.1",
    "outer.batch=4",
    "outer.steps=40",
    "outer.num_query=2",
    "train.log_every=20",
    "eval.every=0",
    "eval.num_tasks=60",
    "eval.num_query=4",
    "eval.steps=3",
    "eval.figures=true",
    "logger=none",
]


@pytest.mark.parametrize(
    "model",
    [
        pytest.param([], marks=pytest.mark.slow),  # an MLP over the pixels: ~15 s
        pytest.param(["model=conv4", "model.filters=8"], marks=pytest.mark.slow),
    ],
    ids=["mlp", "conv4"],
)
def test_a_tiny_maml_run_learns_the_generated_classes(tmp_path, model):
    written = write_image_folder(tmp_path / "images", "split_folders")
    code = train_main(
        *TINY,
        *model,
        *written["overrides"],
        f"data.root={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert code == 0
    summary = read_json(tmp_path / "run" / "summary.json")
    chance = 1 / 3
    assert summary["eval/acc@step3"] > chance + 0.3, summary
    assert (tmp_path / "run" / "figures" / "predictions_40.png").is_file()


# --- miniImageNet ---------------------------------------------------------------


MINI_TINY = [
    "task.image_size=16",  # 4 halvings by pooling leave 1 pixel
    "model.filters=4",
    "outer.steps=2",
    "outer.num_query=2",
    "inner.steps=1",
    "train.log_every=1",
    "eval.every=0",
    "eval.num_tasks=4",
    "eval.num_query=2",
    "eval.steps=1",
    "eval.objective=acc@step1",
    "eval.figures=false",
    "logger=none",
]


def test_mini_imagenet_names_where_its_images_are_expected(tmp_path, capsys):
    code = train_main(
        "experiment=maml_paper_mini_imagenet_5w1s",
        f"data.root={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *MINI_TINY,
    )
    err = capsys.readouterr().err
    assert code != 0
    assert f"miniImageNet images not found: {tmp_path / 'mini_imagenet'}" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("layout", ["images", "split_folders"])
def test_mini_imagenet_reads_both_layouts_of_a_standin(tmp_path, layout):
    root, splits = tmp_path / "data" / "mini_imagenet", tmp_path / "splits"
    write_mini_standin(root, splits, per_class=2, layout=layout)
    tasks = TASKS.create(
        "mini_imagenet", tmp_path / "data", split_dir=str(splits), image_size=SIDE
    )
    assert tasks.train.num_classes == 64 and tasks.test.num_classes == 20
    assert tasks.train.input_shape == (SIDE, SIDE, 3)
    assert tasks.train.examples_per_class == 2


@pytest.mark.slow  # compiles the paper's conv4 (~20 s)
@pytest.mark.parametrize("layout", ["images", "split_folders"])
def test_the_mini_imagenet_preset_starts_on_a_standin(tmp_path, layout):
    root, splits = tmp_path / "data" / "mini_imagenet", tmp_path / "splits"
    write_mini_standin(root, splits, per_class=3, layout=layout)
    code = train_main(
        "experiment=maml_paper_mini_imagenet_5w1s",
        f"data.root={tmp_path / 'data'}",
        f"task.split_dir={splits}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *MINI_TINY,
    )
    assert code == 0
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["train/steps"] == 2 and 0 <= summary["eval/acc@step1"] <= 1


def test_the_shipped_ravi_split_is_the_published_one():
    import hashlib

    sha256 = {
        "train": "498519cd8e49ce97ed26a4a3638966698ae41ab35e9c68538319fc9b46ba7d2f",
        "val": "5658a59921ca027ee76af92949869c5d6f41d77592ff3b18db325a9d10c893b9",
        "test": "2b7cfa78342995761a572a8158e539bc4e0a80f9bbd7d00c1e17a460fbbb93fa",
    }
    for split, digest in sha256.items():
        content = (ravi_split_dir() / f"{split}.csv").read_bytes()
        assert hashlib.sha256(content).hexdigest() == digest
    found_classes = {
        split: len(
            {
                row.split(",")[1]
                for row in (ravi_split_dir() / f"{split}.csv").read_text().split()[1:]
            }
        )
        for split in sha256
    }
    assert found_classes == {"train": 64, "val": 16, "test": 20}
    assert (ravi_split_dir() / "LICENSE").is_file()


def test_load_image_splits_round_trip(tmp_path):
    write_image_folder(tmp_path / "images", "split_folders")
    found = find_classes(tmp_path / "images", "split_folders", ["train", "val", "test"])
    dataset = load_image_splits(found, tmp_path / "cache", "x", SIDE, 3, "lanczos")
    train = dataset.splits["train"]
    assert train.images.shape == (6 * PER_CLASS, SIDE, SIDE, 3)
    assert list(train.counts) == [PER_CLASS] * 6
    assert list(train.offsets) == [PER_CLASS * i for i in range(6)]
    np.testing.assert_array_equal(train.images[PER_CLASS + 2], class_image(1, 2))
