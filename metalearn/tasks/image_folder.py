"""N-way K-shot classification on any folder of images a user has (`task=image_folder`).

The layouts read (class folders per split, `filename,label` split files, or one
folder of class folders split at random) are described in
`metalearn.data.image_folder`. Each split is converted once into the data root's
image cache (uint8, resized); later runs read the cache back.

A task draws `ways` classes of the split in a random order (so labels 0..N-1 are
shuffled per task), then `K + Q` distinct images of each. Classes may have
different numbers of images. Images stay on the device as uint8 — a split of X
images of S x S x C pixels holds X*S*S*C bytes there (miniImageNet at 84 px: 0.8 GB
for training, 1.3 GB for all three splits; the device must hold the training and
evaluation splits) — and each episode is converted to float and normalised
with the training split's per-channel mean and standard deviation on the device,
inside the compiled program.
"""

import hashlib
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from metalearn.data import default_data_root
from metalearn.data.image_folder import (
    ImageDataset,
    ImageSplit,
    find_classes,
    load_image_splits,
)
from metalearn.data.root import DataError
from metalearn.metrics import ACCURACY, LOSS
from metalearn.registry import check_option
from metalearn.tasks import TASKS, TaskBatch, TaskFamily, TaskSplits
from metalearn.tasks.omniglot import scaled_loss

CACHE_FOLDER = "image_cache"


def make_sampler(ways: int, most_images: int):
    """`sample(key, data, num_support, num_query) -> TaskBatch` of N-way tasks from
    `data = {"images": [X, S, S, C] uint8, "offsets": [C], "counts": [C],
    "mean": [C], "std": [C]}`; `most_images` is the largest class's count.
    """

    def sample(key, data, num_support: int, num_query: int) -> TaskBatch:
        class_key, image_key = jax.random.split(key)
        num_classes = data["counts"].shape[0]
        # top_k of uniform noise: N distinct classes in a random order
        _, chosen = jax.lax.top_k(jax.random.uniform(class_key, (num_classes,)), ways)
        per_class = num_support + num_query
        counts = data["counts"][chosen]  # [N]
        noise = jax.random.uniform(image_key, (ways, most_images))
        exists = jnp.arange(most_images)[None, :] < counts[:, None]
        _, picks = jax.lax.top_k(jnp.where(exists, noise, -1.0), per_class)
        rows = data["offsets"][chosen][:, None] + picks  # [N, K + Q]
        pixels = data["images"][rows].astype(jnp.float32) / 255
        images = (pixels - data["mean"]) / data["std"]  # [N, K + Q, S, S, C]
        side = images.shape[2:]
        labels = jnp.arange(ways)
        return TaskBatch(
            support_inputs=images[:, :num_support].reshape(-1, *side),  # [N*K, ...]
            support_targets=jnp.repeat(labels, num_support),  # [N*K]
            query_inputs=images[:, num_support:].reshape(-1, *side),  # [N*Q, ...]
            query_targets=jnp.repeat(labels, num_query),  # [N*Q]
            classes=chosen,  # [N]
        )

    return sample


def family(
    name: str, split: ImageSplit, dataset: ImageDataset, ways: int, loss_scale: str
) -> TaskFamily:
    """An N-way family over one split's classes (its images kept on the device)."""
    data = {
        "images": jnp.asarray(split.images),
        "offsets": jnp.asarray(split.offsets, jnp.int32),
        "counts": jnp.asarray(split.counts, jnp.int32),
        "mean": jnp.asarray(dataset.mean),
        "std": jnp.asarray(dataset.std),
    }
    smallest = int(np.argmin(split.counts))
    return TaskFamily(
        name=name,
        sample=make_sampler(ways, int(split.counts.max())),
        data=data,
        loss=scaled_loss(ways, loss_scale),
        metrics={"acc": ACCURACY, "loss": LOSS},
        input_shape=split.images.shape[1:],
        output_size=ways,
        num_classes=len(split.counts),
        examples_per_class=int(split.counts[smallest]),
        smallest_class=str(split.class_names[smallest]),
    )


def image_splits(
    name: str,
    found: dict,
    data_root: Path,
    source: Path,
    *,
    ways: int,
    eval_split: str,
    image_size: int,
    channels: int,
    resize_filter: str,
    loss_scale: str,
) -> TaskSplits:
    """Training and evaluation families from the files `found` per split."""
    slug = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]
    dataset = load_image_splits(
        found,
        data_root / CACHE_FOLDER,
        f"{source.name or 'images'}-{slug}",
        image_size,
        channels,
        resize_filter,
    )
    for split in ("train", eval_split):
        classes = len(dataset.splits[split].counts)
        check_option(
            ways <= classes,
            "ways",
            ways,
            f"it must be at most {classes}, the classes of the {split} split",
        )
    return TaskSplits(
        train=family(name, dataset.splits["train"], dataset, ways, loss_scale),
        test=family(name, dataset.splits[eval_split], dataset, ways, loss_scale),
    )


def check_image_options(ways: int, image_size: int, channels: int) -> None:
    check_option(ways >= 2, "ways", ways, "it must be an integer >= 2")
    check_option(image_size >= 1, "image_size", image_size, "it must be >= 1")
    check_option(channels in (1, 3), "channels", channels, "1 (grey) or 3 (RGB)")


@TASKS.register("image_folder", headline="acc")
def make_image_folder(
    data_root: Path | None = None,
    *,
    root: str | None = None,
    layout: Literal["split_folders", "csv", "class_folders"] = "split_folders",
    split_dir: str | None = None,
    split_seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.64, 0.16, 0.2),
    ways: int = 5,
    eval_split: Literal["test", "val"] = "test",
    image_size: int = 84,
    channels: int = 3,
    resize_filter: Literal["lanczos", "bilinear", "bicubic", "box", "nearest"] = (
        "lanczos"
    ),
    loss_scale: Literal["per_class", "mean"] = "per_class",
) -> TaskSplits:
    """Builds N-way classification over a folder of images: training and test families.

    Args:
        data_root: where the converted images are cached (`<data.root>/image_cache`).
        root: the folder of images (required).
        layout: `split_folders` (`<root>/{train,val,test}/<class>/*.png|jpg`), `csv`
            (`task.split_dir`'s `{train,val,test}.csv` with header `filename,label`,
            images in `<root>/images/` or class folders) or `class_folders`
            (`<root>/<class>/...`, classes split at random by `split_seed`).
        split_dir: the folder of the split CSV files (layout `csv`).
        split_seed: the seed of the `class_folders` layout's random class split.
        split_fractions: the shares of classes for train, val and test (layout
            `class_folders`; miniImageNet's 64:16:20 by default).
        ways: N, the classes of a task.
        eval_split: evaluate on the `test` classes, or on the `val` classes to tune.
        image_size: the side images are resized to (aspect ratio not kept).
        channels: 3 (RGB) or 1 (greyscale).
        resize_filter: Pillow's resampling filter for resizing.
        loss_scale: cross-entropy summed over a task's examples and divided by the
            examples per class (`per_class`, the MAML reference code's), or the
            `mean` cross-entropy (N times smaller).
    """
    check_image_options(ways, image_size, channels)
    check_option(root is not None, "root", root, "set it to the folder of images")
    check_option(
        layout != "csv" or split_dir is not None,
        "split_dir",
        split_dir,
        "layout csv needs the folder of {train,val,test}.csv",
    )
    check_option(
        len(split_fractions) == 3
        and all(f >= 0 for f in split_fractions)
        and sum(split_fractions) > 0,
        "split_fractions",
        split_fractions,
        "three shares >= 0 (train, val, test), not all 0",
    )
    source = Path(str(root)).expanduser()
    found = find_classes(
        source,
        layout,
        ("train", eval_split),
        Path(split_dir).expanduser() if split_dir else None,
        split_seed,
        split_fractions,
    )
    for split, classes in found.items():
        if not classes:
            raise DataError(f"the {split} split of {source} has no classes")
    return image_splits(
        "image_folder",
        found,
        Path(data_root or default_data_root()),
        source,
        ways=ways,
        eval_split=eval_split,
        image_size=image_size,
        channels=channels,
        resize_filter=resize_filter,
        loss_scale=loss_scale,
    )
