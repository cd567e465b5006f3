"""Omniglot N-way K-shot classification (Lake et al. 2015), as few-shot papers use it.

A task draws `ways` classes, then `K + Q` of each class's 20 drawings (without
replacement); the support set holds K per class, the query set Q per class. Labels
0..N-1 are assigned to the drawn classes in a random order, so they are shuffled
per task. Images are binary, ink = 1, resized to `image_size` by nearest neighbour
(what the MAML reference code effectively does: `metalearn.data.load_omniglot`).

Class splits (`split`):

- `maml`: the MAML paper's 1200 characters for meta-training and the other 423 for
  testing, drawn at random from `split_seed` (the reference code's own order came
  from `os.listdir`, so its exact split cannot be rebuilt). With `eval_split=val`,
  100 of the 1200 are held out for validation, as the reference code does.
- `vinyals`: the fixed lists of Vinyals et al. (2016): 1200 trainval / 423 test
  characters (1028 train / 172 val with `eval_split=val`), shipped with metalearn.

Rotations (`rotations=true`), as the papers do them: with `split=maml` each class
of a task gets a random multiple of 90°, drawn per task, at meta-training and at
meta-test alike (as the reference code, whose test-time condition is commented
out); with `split=vinyals` every listed rotation of a character is a class of its
own (the lists name them), so a task may hold one character in two rotations.
Without rotations only upright characters are used.

The images of each split live on the device as uint8 and are passed into the
compiled program as the family's `data`; episodes are gathered there, never on the
host. Meta-test tasks come from the test (or validation) classes only.
"""

from pathlib import Path
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metalearn.data import (
    character_rows,
    default_data_root,
    load_omniglot,
    vinyals_split,
)
from metalearn.metrics import ACCURACY, LOSS, cross_entropy
from metalearn.registry import check_option
from metalearn.tasks import TASKS, TaskBatch, TaskFamily, TaskSplits

DRAWERS = 20  # drawings of every character
ROTATIONS = 4  # multiples of 90°
MAML_TRAIN, MAML_VAL = 1200, 100  # the MAML paper's training characters, validation


class ClassTable(NamedTuple):
    """The classes of one split: which character, and which fixed rotation."""

    characters: np.ndarray  # [C] rows of the dataset's characters
    rotations: np.ndarray  # [C] fixed rotation (multiples of 90°), -1: random per task


def maml_split(
    num_characters: int, seed: int, eval_split: str
) -> tuple[np.ndarray, np.ndarray]:
    """(training, evaluation) character rows of the MAML paper's random split."""
    order = np.random.default_rng(seed).permutation(num_characters)
    train, test = order[:MAML_TRAIN], order[MAML_TRAIN:]
    if eval_split == "val":
        return train[: MAML_TRAIN - MAML_VAL], train[MAML_TRAIN - MAML_VAL :]
    return train, test


def maml_table(characters: np.ndarray, rotations: bool) -> ClassTable:
    """Every character a class, rotated at random per task (or never)."""
    return ClassTable(characters, np.full(len(characters), -1 if rotations else 0))


def vinyals_table(split: str, rows: dict, rotations: bool) -> ClassTable:
    """The classes a Vinyals list names (rotations as classes of their own)."""
    listed = [
        (rows[(alphabet, number)], degrees // 90)
        for alphabet, number, degrees in vinyals_split(split)
        if rotations or degrees == 0
    ]
    characters, turns = np.array(listed).T
    return ClassTable(characters, turns)


def rotate(images: jax.Array, turns: jax.Array) -> jax.Array:
    """Rotates each class's images `[N, M, S, S]` by its own `turns [N]` x 90°."""
    every = jnp.stack([jnp.rot90(images, k, axes=(-2, -1)) for k in range(ROTATIONS)])
    return every[turns, jnp.arange(images.shape[0])]


def make_sampler(ways: int):
    """`sample(key, data, num_support, num_query) -> TaskBatch` of N-way tasks from
    `data = {"images": [X, 20, S, S] uint8, "characters": [C], "rotations": [C]}`.
    """

    def sample(key, data, num_support: int, num_query: int) -> TaskBatch:
        class_key, drawer_key, turn_key = jax.random.split(key, 3)
        num_classes = data["characters"].shape[0]
        # top_k of uniform noise: N distinct classes in a random order (cheaper
        # than a permutation of all classes)
        _, chosen = jax.lax.top_k(jax.random.uniform(class_key, (num_classes,)), ways)
        per_class = num_support + num_query
        noise = jax.random.uniform(drawer_key, (ways, DRAWERS))
        _, drawers = jax.lax.top_k(noise, per_class)  # [N, K + Q]
        characters = data["characters"][chosen]
        images = data["images"][characters[:, None], drawers]  # [N, K + Q, S, S]
        fixed = data["rotations"][chosen]
        random_turns = jax.random.randint(turn_key, (ways,), 0, ROTATIONS)
        turns = jnp.where(fixed < 0, random_turns, fixed)
        images = rotate(images, turns).astype(jnp.float32)[..., None]
        labels = jnp.arange(ways)
        side = images.shape[2:]
        support = images[:, :num_support].reshape(ways * num_support, *side)
        query = images[:, num_support:].reshape(ways * num_query, *side)
        # a family-wide class id per label: the class, and its rotation if random
        classes = jnp.where(fixed < 0, chosen * ROTATIONS + turns, chosen)
        return TaskBatch(
            support_inputs=support,  # [N*K, S, S, 1]
            support_targets=jnp.repeat(labels, num_support),  # [N*K]
            query_inputs=query,  # [N*Q, S, S, 1]
            query_targets=jnp.repeat(labels, num_query),  # [N*Q]
            classes=classes,  # [N]
        )

    return sample


def scaled_loss(ways: int, scale: str):
    """The classification loss: cross-entropy summed over a task's examples and
    divided by the examples per class (`per_class`: N x the mean, as the MAML
    reference code scales it, so an inner lr of 0.4 is the paper's alpha), or the
    `mean` cross-entropy (PyTorch's and learn2learn's)."""
    factor = ways if scale == "per_class" else 1

    def loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
        return factor * cross_entropy(logits, labels)

    return loss


def family(
    name: str, images: np.ndarray, table: ClassTable, ways: int, loss_scale: str
) -> TaskFamily:
    """An N-way family over `table`'s classes; only their characters' images are
    kept (on the device)."""
    used, characters = np.unique(table.characters, return_inverse=True)
    random = bool((table.rotations < 0).any())
    data = {
        "images": jnp.asarray(images[used]),  # [X, 20, S, S] uint8
        "characters": jnp.asarray(characters, jnp.int32),  # [C]
        "rotations": jnp.asarray(table.rotations, jnp.int32),  # [C]
    }
    num_classes = len(characters) * (ROTATIONS if random else 1)
    size = images.shape[-1]
    return TaskFamily(
        name=name,
        sample=make_sampler(ways),
        data=data,
        loss=scaled_loss(ways, loss_scale),
        metrics={"acc": ACCURACY, "loss": LOSS},
        input_shape=(size, size, 1),
        output_size=ways,
        num_classes=num_classes,
        examples_per_class=DRAWERS,
    )


@TASKS.register("omniglot", headline="acc")
def make_omniglot(
    data_root: Path | None = None,
    *,
    ways: int = 5,
    split: Literal["maml", "vinyals"] = "maml",
    split_seed: int = 0,
    eval_split: Literal["test", "val"] = "test",
    rotations: bool = True,
    image_size: int = 28,
    loss_scale: Literal["per_class", "mean"] = "per_class",
) -> TaskSplits:
    """Builds Omniglot N-way classification: meta-training and meta-test families.

    Args:
        data_root: where `python -m metalearn.data omniglot` prepared the data
            (default: $METALEARN_DATA, else ~/.cache/metalearn).
        ways: N, the classes of a task.
        split: `maml` (1200 random training characters, 423 test) or `vinyals`
            (the standard lists: 1200 trainval, 423 test).
        split_seed: the seed of the `maml` split's random draw.
        eval_split: evaluate on the `test` classes, or hold out `val` classes from
            training (100 characters for `maml`, Vinyals' 172) to tune on.
        rotations: rotate by multiples of 90°: per class and task for `maml`, as
            classes of their own for `vinyals` (see the module's docstring).
        image_size: side of the (square) images, resized from 105.
        loss_scale: the loss of the inner and outer loop: cross-entropy summed over
            a task's examples and divided by the examples per class (`per_class`,
            N x the mean: the MAML reference code's, for which its alpha is
            tuned), or the `mean` cross-entropy (learn2learn's; the same step as
            `per_class` at an inner lr N times larger).
    """
    check_option(ways >= 2, "ways", ways, "it must be an integer >= 2")
    check_option(image_size >= 1, "image_size", image_size, "it must be >= 1")
    omniglot = load_omniglot(Path(data_root or default_data_root()), image_size)
    if split == "maml":
        train, test = maml_split(len(omniglot.images), split_seed, eval_split)
        tables = [maml_table(rows, rotations) for rows in (train, test)]
    else:
        rows = character_rows(omniglot)
        names = ("trainval", "test") if eval_split == "test" else ("train", "val")
        tables = [vinyals_table(name, rows, rotations) for name in names]
    smallest = min(len(table.characters) for table in tables)
    check_option(
        ways <= smallest,
        "ways",
        ways,
        f"it must be at most {smallest}, the classes of the smaller split",
    )
    return TaskSplits(
        train=family("omniglot", omniglot.images, tables[0], ways, loss_scale),
        test=family("omniglot", omniglot.images, tables[1], ways, loss_scale),
    )
