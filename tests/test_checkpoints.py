"""Checkpoints: written on schedule, atomically, and restored exactly."""

import jax
import numpy as np
import optax
import pytest
from helpers import leaves

from metalearn.algorithms import make_metasgd
from metalearn.checkpoints import Checkpointer, IncompatibleCheckpoint
from metalearn.models import make_mlp
from metalearn.optimizers import flat_optimizer
from metalearn.tasks.sinusoid import make_sinusoid
from metalearn.trainer import (
    Schedule,
    fit,
    init_train_state,
    make_train_step,
    make_train_window,
)

FAMILY = make_sinusoid().train
MODEL = make_mlp(FAMILY.input_shape, 1, hidden_sizes=(8,))
ALGORITHM = make_metasgd(MODEL, FAMILY, 0.01, 1)  # nested meta-params
OPTIMIZER = flat_optimizer(optax.adam(1e-3))
WINDOW = make_train_window(make_train_step(ALGORITHM, FAMILY, OPTIMIZER, 2, 5, 5))


def fresh_state(seed=0):
    return init_train_state(ALGORITHM, OPTIMIZER, jax.random.key(seed))


def checkpointer_steps(directory) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def train(state, schedule, checkpointer=None):
    saver = (
        (lambda s, seconds: checkpointer.save(s, {"note": "x", "seconds": seconds}))
        if checkpointer
        else (lambda s, seconds: None)
    )
    return fit(
        state,
        WINDOW,
        FAMILY.data,
        schedule,
        evaluate=lambda s: {},
        on_metrics=lambda step, metrics: None,
        checkpoint=saver,
    )


def test_checkpoints_on_schedule_keep_the_latest_and_restore_exactly(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", max_to_keep=2)
    final = train(fresh_state(), Schedule(10, 3, 0, 4), checkpointer).state
    checkpointer.close()
    assert checkpointer_steps(tmp_path / "ckpt") == [8, 10]

    restored, meta = Checkpointer(tmp_path / "ckpt").restore(fresh_state(1))
    assert meta["note"] == "x" and meta["seconds"] > 0 and int(restored.step) == 10
    for got, want in zip(leaves(restored), leaves(final), strict=True):
        np.testing.assert_array_equal(got, want)
    assert jax.random.key_impl(restored.key) == jax.random.key_impl(final.key)


def test_training_resumed_from_a_checkpoint_is_bit_identical(tmp_path):
    uninterrupted = train(fresh_state(), Schedule(12, 4)).state

    checkpointer = Checkpointer(tmp_path / "ckpt")
    train(fresh_state(), Schedule(7, 4, 0, 7), checkpointer)  # stops mid-window (7)
    checkpointer.close()
    restored, _ = Checkpointer(tmp_path / "ckpt").restore(fresh_state(1))
    assert int(restored.step) == 7
    resumed = train(restored, Schedule(12, 4)).state
    for got, want in zip(leaves(resumed), leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(got, want)


def test_saving_the_same_step_twice_keeps_the_first(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    state = fresh_state()
    checkpointer.save(state, {"which": "first"})
    checkpointer.save(state, {"which": "second"})
    assert checkpointer.restore(fresh_state(1))[1] == {"which": "first"}
    checkpointer.close()


def test_restoring_from_an_empty_directory_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Checkpointer(tmp_path / "none").restore(fresh_state())


def test_a_state_laid_out_otherwise_is_refused_clearly(tmp_path):
    per_array_adam = optax.adam(1e-3)  # one optimiser array per parameter array
    older = init_train_state(ALGORITHM, per_array_adam, jax.random.key(0))
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(older, {})
    checkpointer.close()
    with pytest.raises(IncompatibleCheckpoint, match="laid out differently"):
        Checkpointer(tmp_path / "ckpt").restore(fresh_state())
