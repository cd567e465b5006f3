"""miniImageNet N-way K-shot classification (Vinyals et al. 2016; Ravi & Larochelle's
split), as the MAML paper's Table 1 uses it: `task=mini_imagenet`.

100 ImageNet classes of 600 images each: 64 for meta-training, 16 for validation,
20 for meta-testing, as listed by Ravi & Larochelle (2017). The split files ship
with metalearn (`metalearn/data/splits/mini_imagenet/ravi/`, from
jakesnell/prototypical-networks, MIT License, LICENSE beside them). The images
cannot ship (ImageNet's terms of access): users obtain them and lay them out as
the common distributions do, under `task.root` (default `<data.root>/mini_imagenet`):

- `images/<wnid><8-digit index>.jpg`, one folder of all 60,000 files, or
- `train/<wnid>/*.jpg`, `val/<wnid>/...`, `test/<wnid>/...` (per-split class
  folders, file names as in the split files).

It is `task=image_folder` with the `csv` layout over the shipped split files: the
first run converts the images (84 x 84 RGB, Lanczos) into the data root's image
cache; later runs read the cache.
"""

from importlib import resources
from pathlib import Path
from typing import Literal

from metalearn.data import default_data_root
from metalearn.data.image_folder import find_classes, read_split_csv
from metalearn.data.root import DataError
from metalearn.tasks import TASKS, TaskSplits
from metalearn.tasks.image_folder import check_image_options, image_splits

FOLDER = "mini_imagenet"  # under the data root, where its images are looked for


def ravi_split_dir() -> Path:
    """The folder of the shipped Ravi & Larochelle split files."""
    splits = resources.files("metalearn.data") / "splits" / "mini_imagenet" / "ravi"
    return Path(str(splits))


def check_images_present(root: Path, split_dir: Path) -> None:
    """Raises one DataError line saying where the images are expected, when the
    first training image is in neither accepted layout."""
    name, label = read_split_csv(split_dir / "train.csv")[0]
    places = (root / "images" / name, root / "train" / label / name)
    if not any(place.is_file() for place in places):
        raise DataError(
            f"miniImageNet images not found in {root}: expected "
            f"{root}/images/<wnid><index>.jpg or {root}/{{train,val,test}}/<wnid>/"
            f"*.jpg (looked for {name}); set task.root or see README, miniImageNet"
        )


@TASKS.register("mini_imagenet", headline="acc")
def make_mini_imagenet(
    data_root: Path | None = None,
    *,
    root: str | None = None,
    split_dir: str | None = None,
    ways: int = 5,
    eval_split: Literal["test", "val"] = "test",
    image_size: int = 84,
    resize_filter: Literal["lanczos", "bilinear", "bicubic", "box", "nearest"] = (
        "lanczos"
    ),
    loss_scale: Literal["per_class", "mean"] = "per_class",
) -> TaskSplits:
    """Builds miniImageNet N-way classification: training and test families.

    Args:
        data_root: where the converted images are cached (`<data.root>/image_cache`).
        root: the folder of the images (default `<data.root>/mini_imagenet`):
            `images/<wnid><index>.jpg` or `{train,val,test}/<wnid>/*.jpg`.
        split_dir: split files `{train,val,test}.csv` (header `filename,label`) to
            use instead of the shipped Ravi & Larochelle split.
        ways: N, the classes of a task.
        eval_split: evaluate on the 20 `test` classes, or the 16 `val` classes.
        image_size: the side images are resized to (84 in the papers).
        resize_filter: Pillow's resampling filter for resizing.
        loss_scale: cross-entropy summed over a task's examples and divided by the
            examples per class (`per_class`, the MAML reference code's, for which
            its alpha 0.01 is tuned), or the `mean` cross-entropy.
    """
    check_image_options(ways, image_size, 3)
    data_root = Path(data_root or default_data_root())
    source = Path(root).expanduser() if root else data_root / FOLDER
    splits = Path(split_dir).expanduser() if split_dir else ravi_split_dir()
    if not source.is_dir():
        raise DataError(
            f"miniImageNet images not found: {source} is not a folder; put them "
            "there (images/<wnid><index>.jpg or {train,val,test}/<wnid>/*.jpg) or "
            "set task.root; see README, miniImageNet"
        )
    check_images_present(source, splits)
    found = find_classes(source, "csv", ("train", eval_split), splits)
    return image_splits(
        "mini_imagenet",
        found,
        data_root,
        source,
        ways=ways,
        eval_split=eval_split,
        image_size=image_size,
        channels=3,
        resize_filter=resize_filter,
        loss_scale=loss_scale,
    )
