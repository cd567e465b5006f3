"""The Omniglot task family: class splits, episodes, labels, rotations, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn.data import load_omniglot
from metalearn.registry import OptionError
from metalearn.tasks import TASKS
from metalearn.tasks.omniglot import make_omniglot, maml_split


def sample_tasks(family, count, shots=1, queries=2, seed=0):
    keys = jax.random.split(jax.random.key(seed), count)
    sample = jax.jit(
        jax.vmap(lambda k, data: family.sample(k, data, shots, queries), (0, None))
    )
    return jax.device_get(sample(keys, family.data))


@pytest.fixture(scope="module")
def omniglot(omniglot_root):
    return load_omniglot(omniglot_root)


@pytest.fixture(scope="module")
def five_way(omniglot_root):
    return make_omniglot(omniglot_root, ways=5)


def test_the_maml_split_is_1200_and_423_disjoint_characters_from_its_seed():
    train, test = maml_split(1623, seed=0, eval_split="test")
    assert len(train) == 1200 and len(test) == 423
    assert set(train).isdisjoint(test) and len(set(train) | set(test)) == 1623
    again, _ = maml_split(1623, seed=0, eval_split="test")
    other, _ = maml_split(1623, seed=1, eval_split="test")
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)
    fit, val = maml_split(1623, seed=0, eval_split="val")
    assert len(fit) == 1100 and len(val) == 100
    assert set(fit) | set(val) == set(train)  # validation never touches the test set


def test_meta_test_tasks_come_only_from_test_classes(five_way, omniglot):
    train_rows, test_rows = maml_split(1623, seed=0, eval_split="test")
    # each family holds exactly its split's characters, nothing of the other
    np.testing.assert_array_equal(
        five_way.train.data["images"], omniglot.images[np.sort(train_rows)]
    )
    np.testing.assert_array_equal(
        five_way.test.data["images"], omniglot.images[np.sort(test_rows)]
    )
    # and every image of a sampled test task is one of them (in some rotation)
    test_images = np.asarray(five_way.test.data["images"]).reshape(-1, 28, 28)
    allowed = {np.rot90(image, k).tobytes() for image in test_images for k in range(4)}
    tasks = sample_tasks(five_way.test, 100)
    seen = np.concatenate(
        [
            tasks.support_inputs.reshape(-1, 28, 28),
            tasks.query_inputs.reshape(-1, 28, 28),
        ]
    ).astype(np.uint8)
    assert {image.tobytes() for image in seen} <= allowed


def test_a_task_has_k_support_and_q_query_images_per_shuffled_label(five_way):
    tasks = sample_tasks(five_way.train, 200, shots=2, queries=3)
    assert tasks.support_inputs.shape == (200, 10, 28, 28, 1)
    assert tasks.query_inputs.shape == (200, 15, 28, 28, 1)
    np.testing.assert_array_equal(tasks.support_targets[0], np.repeat(np.arange(5), 2))
    np.testing.assert_array_equal(tasks.query_targets[0], np.repeat(np.arange(5), 3))
    classes = np.asarray(tasks.classes)  # [200, 5]: the class behind each label
    assert all(len(set(row)) == 5 for row in classes)  # N distinct classes
    # labels are shuffled: the class behind label 0 is anything, not the smallest
    assert len(set(classes[:, 0])) > 150
    assert np.mean(classes[:, 0] == classes.min(axis=1)) < 0.4
    assert set(np.unique(tasks.support_inputs)) <= {0.0, 1.0}  # binary, ink = 1


def test_each_class_gets_its_own_random_rotation_per_task(five_way, omniglot):
    family = five_way.train
    tasks = sample_tasks(family, 50, shots=1, queries=1)
    characters = np.asarray(family.data["characters"])
    images = np.asarray(family.data["images"])
    turns = []
    for task in range(50):
        for label in range(5):
            cls = int(tasks.classes[task, label])
            turn, character = cls % 4, characters[cls // 4]
            support = np.asarray(tasks.support_inputs[task, label, ..., 0], np.uint8)
            drawings = {np.rot90(d, turn).tobytes() for d in images[character]}
            assert support.tobytes() in drawings  # the class's drawing, turned
            turns.append(turn)
    assert set(turns) == {0, 1, 2, 3}
    assert family.num_classes == 1200 * 4 and tasks.classes.max() < family.num_classes


def test_vinyals_lists_name_rotated_classes_and_rotations_can_be_off(omniglot_root):
    vinyals = make_omniglot(omniglot_root, ways=5, split="vinyals")
    assert len(vinyals.train.data["characters"]) == 4800  # 1200 characters x 4
    assert len(vinyals.test.data["characters"]) == 1692
    assert set(np.asarray(vinyals.train.data["rotations"])) == {0, 1, 2, 3}
    upright = make_omniglot(omniglot_root, ways=5, split="vinyals", rotations=False)
    assert len(upright.test.data["characters"]) == 423
    assert set(np.asarray(upright.test.data["rotations"])) == {0}
    val = make_omniglot(omniglot_root, ways=5, split="vinyals", eval_split="val")
    assert len(val.train.data["characters"]) == 1028 * 4
    assert len(val.test.data["characters"]) == 172 * 4


@pytest.mark.parametrize(
    "options, message",
    [
        ({"ways": 1}, "ways=1 is not allowed: it must be an integer >= 2"),
        ({"ways": 5000}, "ways=5000 is not allowed: it must be at most 423"),
        ({"split": "nope"}, "split=nope is not allowed: choose one of maml, vinyals"),
    ],
)
def test_bad_options_name_the_option_and_what_is_allowed(
    omniglot_root, options, message
):
    with pytest.raises(OptionError, match=message):
        TASKS.create("omniglot", omniglot_root, **options)


def test_the_loss_is_n_times_the_mean_cross_entropy_as_the_reference_code(five_way):
    logits = jnp.array([[2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]])
    labels = jnp.array([0, 3])
    log_probs = jax.nn.log_softmax(logits)
    summed = -(log_probs[0, 0] + log_probs[1, 3])  # sum over examples / 1 per class
    assert five_way.train.loss(logits, labels) == pytest.approx(5 * summed / 2)
