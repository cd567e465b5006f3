"""Checkpoints: written on schedule, atomically, and restored exactly; a damaged
one is noticed and the newest intact one used."""

import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import leaves

from metalearn.algorithms import make_metasgd
from metalearn.checkpoints import (
    Checkpointer,
    IncompatibleCheckpoint,
    NoIntactCheckpoint,
)
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


def _largest_file(step_dir):
    return max(
        (p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "missing file": lambda d: _largest_file(d).unlink(),
    "truncated": lambda d: (f := _largest_file(d)).write_bytes(f.read_bytes()[:10]),
    "bit-flipped": lambda d: _flip_a_byte(_largest_file(d)),
    "empty folder": lambda d: (shutil.rmtree(d), d.mkdir()),
}


def two_checkpoints(directory):
    """Checkpoints at meta-steps 4 and 8 of one training; the state at 4."""
    checkpointer = Checkpointer(directory, max_to_keep=2)
    at_4 = train(fresh_state(), Schedule(4, 4, 0, 4), checkpointer).state
    kept = jax.tree.map(jnp.copy, at_4)  # training on donates at_4's buffers
    train(at_4, Schedule(8, 4, 0, 4), checkpointer)
    checkpointer.close()
    assert checkpointer_steps(directory) == [4, 8]
    return kept


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(
    tmp_path, caplog, how
):
    at_4 = two_checkpoints(tmp_path / "ckpt")
    DAMAGES[how](tmp_path / "ckpt" / "8")
    with caplog.at_level(logging.WARNING, logger="metalearn.checkpoints"):
        restored, _ = Checkpointer(tmp_path / "ckpt").restore(fresh_state(1))
    assert int(restored.step) == 4
    for got, want in zip(leaves(restored), leaves(at_4), strict=True):
        np.testing.assert_array_equal(got, want)
    lines = [
        r.getMessage() for r in caplog.records if r.name == "metalearn.checkpoints"
    ]
    (line,) = lines  # one line says so
    assert "ckpt/8 is damaged" in line and "trying the one before" in line


def test_when_no_checkpoint_is_intact_restore_refuses_naming_each(tmp_path):
    two_checkpoints(tmp_path / "ckpt")
    DAMAGES["bit-flipped"](tmp_path / "ckpt" / "8")
    DAMAGES["empty folder"](tmp_path / "ckpt" / "4")
    with pytest.raises(NoIntactCheckpoint, match=r"damaged: 8 \(.*\), 4 \(empty\)"):
        Checkpointer(tmp_path / "ckpt").restore(fresh_state(1))
