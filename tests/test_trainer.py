"""The compiled trainer: batching, windowing, determinism, one compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn.algorithms import make_maml
from metalearn.models import make_mlp
from metalearn.tasks.sinusoid import make_sinusoid
from metalearn.trainer import (
    Schedule,
    init_train_state,
    make_train_step,
    make_train_window,
    window_ends,
)

TASK = make_sinusoid(amp_max=0.5)
MODEL = make_mlp([16, 16], 1)


def make_parts(first_order=False, batch=4):
    maml = make_maml(MODEL, TASK, inner_lr=0.1, inner_steps=2, first_order=first_order)
    optimizer = optax.adam(1e-3)
    step = make_train_step(maml, TASK, optimizer, batch, num_support=10, num_query=10)
    return maml, optimizer, step


@pytest.mark.parametrize("first_order", [False, True])
def test_batched_meta_gradient_equals_the_mean_of_per_task_gradients(first_order):
    maml, _, _ = make_parts(first_order)
    params, state = maml.init(jax.random.key(0))
    tasks = jax.vmap(lambda k: TASK.sample(k, 10, 10))(
        jax.random.split(jax.random.key(1), 5)
    )
    meta_grad = jax.jit(maml.meta_grad)
    loss, grads, _ = meta_grad(params, state, tasks)
    looped = [
        meta_grad(params, state, jax.tree.map(lambda a, i=i: a[i : i + 1], tasks))
        for i in range(5)
    ]
    np.testing.assert_allclose(loss, np.mean([lo for lo, _, _ in looped]), rtol=1e-5)
    mean_grads = jax.tree.map(
        lambda *g: jnp.mean(jnp.stack(g), 0), *[g for _, g, _ in looped]
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        grads,
        mean_grads,
    )


def test_windows_of_any_length_give_identical_results_and_compile_once():
    maml, optimizer, step = make_parts()
    traces = []

    def counted_update(state, tasks):
        traces.append(1)
        return step.update(state, tasks)

    window = make_train_window(step._replace(update=counted_update), sample_ahead=4)
    start = init_train_state(maml, optimizer, jax.random.key(0))
    copy = lambda s: jax.tree.map(jnp.copy, s)  # noqa: E731 (windows donate input)

    whole, _ = window(copy(start), jnp.int32(12))
    parts = copy(start)
    for length in (5, 4, 3):
        parts, metrics = window(parts, jnp.int32(length))
    assert len(traces) == 1
    assert int(whole.step) == int(parts.step) == 12
    jax.tree.map(np.testing.assert_array_equal, whole.meta_params, parts.meta_params)


def test_window_matches_a_python_loop_of_steps():
    maml, optimizer, step = make_parts()
    start = init_train_state(maml, optimizer, jax.random.key(0))
    looped, losses = start, []
    jitted_step = jax.jit(lambda state: step(state))
    for _ in range(6):
        looped, loss = jitted_step(looped)
        losses.append(loss)
    windowed, metrics = make_train_window(step)(start, jnp.int32(6))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        looped.meta_params,
        windowed.meta_params,
    )
    assert float(metrics["train/meta_loss"]) == pytest.approx(np.mean(losses), rel=1e-5)


def test_training_lowers_the_meta_loss():
    maml, optimizer, step = make_parts()
    window = make_train_window(step)
    state = init_train_state(maml, optimizer, jax.random.key(0))
    state, first = window(state, jnp.int32(50))
    for _ in range(5):
        state, last = window(state, jnp.int32(50))
    assert float(last["train/meta_loss"]) < 0.5 * float(first["train/meta_loss"])


@pytest.mark.parametrize(
    "start, schedule, expected",
    [
        (0, Schedule(10, 3, 0), [3, 6, 9, 10]),
        (0, Schedule(10, 4, 5), [4, 5, 8, 10]),
        (5, Schedule(10, 4, 5), [8, 10]),
        (0, Schedule(3, 100, 1000), [3]),
        (0, Schedule(10, 100, 0, 4), [4, 8, 10]),
    ],
)
def test_windows_end_at_log_and_eval_boundaries(start, schedule, expected):
    assert window_ends(start, schedule) == expected


def test_sampling_tasks_ahead_changes_no_number():
    maml, optimizer, step = make_parts()
    start = init_train_state(maml, optimizer, jax.random.key(0))
    copy = lambda s: jax.tree.map(jnp.copy, s)  # noqa: E731 (windows donate input)
    one_at_a_time, _ = make_train_window(step, sample_ahead=1)(copy(start), 10)
    ahead, _ = make_train_window(step, sample_ahead=4)(copy(start), 10)
    jax.tree.map(
        np.testing.assert_array_equal, one_at_a_time.meta_params, ahead.meta_params
    )
