"""Checkpoints: written on schedule, atomically, and restored exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn.algorithms import make_metasgd
from metalearn.checkpoints import Checkpointer
from metalearn.models import make_mlp
from metalearn.tasks.sinusoid import make_sinusoid
from metalearn.trainer import (
    Schedule,
    fit,
    init_train_state,
    make_train_step,
    make_train_window,
)

TASK = make_sinusoid()
ALGORITHM = make_metasgd(make_mlp([8], 1), TASK, 0.01, 1)  # nested meta-params
OPTIMIZER = optax.adam(1e-3)


def leaves(state):
    return jax.tree.leaves(state._replace(key=jax.random.key_data(state.key)))


def train(state, schedule, checkpointer=None):
    window = make_train_window(make_train_step(ALGORITHM, TASK, OPTIMIZER, 2, 5, 5))
    saver = (lambda s: checkpointer.save(s, {"note": "x"})) if checkpointer else None
    return fit(
        state,
        window,
        schedule,
        evaluate=lambda s: {},
        on_metrics=lambda step, metrics: None,
        **({"checkpoint": saver} if saver else {}),
    )


def test_checkpoints_on_schedule_keep_the_latest_and_restore_exactly(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", max_to_keep=2)
    start = init_train_state(ALGORITHM, OPTIMIZER, jax.random.key(0))
    final, _ = train(start, Schedule(10, 3, 0, 4), checkpointer)
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir()) == [8, 10]

    template = init_train_state(ALGORITHM, OPTIMIZER, jax.random.key(1))
    restored, meta = Checkpointer(tmp_path / "ckpt").restore(template)
    assert meta == {"note": "x"} and int(restored.step) == 10
    for got, want in zip(leaves(restored), leaves(final), strict=True):
        np.testing.assert_array_equal(got, want)


def test_training_resumed_from_a_checkpoint_is_bit_identical(tmp_path):
    start = init_train_state(ALGORITHM, OPTIMIZER, jax.random.key(0))
    uninterrupted, _ = train(jax.tree.map(jnp.copy, start), Schedule(12, 4))

    checkpointer = Checkpointer(tmp_path / "ckpt")
    train(start, Schedule(7, 4, 0, 7), checkpointer)  # stops mid-window (7 of 8)
    template = init_train_state(ALGORITHM, OPTIMIZER, jax.random.key(1))
    restored, _ = Checkpointer(tmp_path / "ckpt").restore(template)
    resumed, _ = train(restored, Schedule(12, 4))
    for got, want in zip(leaves(resumed), leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(got, want)


def test_restoring_from_an_empty_directory_says_so(tmp_path):
    template = init_train_state(ALGORITHM, OPTIMIZER, jax.random.key(0))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Checkpointer(tmp_path / "none").restore(template)
