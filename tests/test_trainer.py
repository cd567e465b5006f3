"""The compiled trainer: batching, windowing, determinism, one compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn.algorithms import make_maml, make_metasgd, make_reptile
from metalearn.models import make_conv4, make_mlp
from metalearn.optimizers import flat_optimizer
from metalearn.tasks.sinusoid import make_sinusoid
from metalearn.trainer import (
    Schedule,
    TrainStep,
    chunks_per_device,
    init_train_state,
    make_train_step,
    make_train_window,
    tasks_at_once_for,
)

FAMILY = make_sinusoid(amp_max=0.5).train
MODEL = make_mlp(FAMILY.input_shape, 1, hidden_sizes=(16, 16))


def make_parts(first_order=False, batch=4):
    maml = make_maml(MODEL, FAMILY, 0.1, 2, first_order=first_order)
    optimizer = flat_optimizer(optax.adam(1e-3))
    step = make_train_step(maml, FAMILY, optimizer, batch, num_support=10, num_query=10)
    return maml, optimizer, step


def copy(state):
    return jax.tree.map(jnp.copy, state)  # windows donate their input state


@pytest.mark.parametrize("first_order", [False, True])
def test_batched_meta_gradient_equals_the_mean_of_per_task_gradients(first_order):
    maml, _, _ = make_parts(first_order)
    params, state = maml.init(jax.random.key(0))
    tasks = jax.vmap(lambda k: FAMILY.sample(k, (), 10, 10))(
        jax.random.split(jax.random.key(1), 5)
    )
    meta_grad = jax.jit(maml.meta_grad)
    batched = meta_grad(params, state, tasks)
    looped = [
        meta_grad(params, state, jax.tree.map(lambda a, i=i: a[i : i + 1], tasks))
        for i in range(5)
    ]
    np.testing.assert_allclose(
        batched.loss, np.mean([one.loss for one in looped]), rtol=1e-5
    )
    mean_grads = jax.tree.map(
        lambda *g: jnp.mean(jnp.stack(g), 0), *[one.grads for one in looped]
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        batched.grads,
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

    whole, _ = window(copy(start), (), jnp.int32(12))
    traced_once = len(traces)  # the window's one trace (and its metric shapes')
    parts = copy(start)
    for length in (5, 4, 3):
        parts, metrics = window(parts, (), jnp.int32(length))
    assert traced_once > 0 and len(traces) == traced_once
    assert window._cache_size() == 1
    assert int(whole.step) == int(parts.step) == 12
    jax.tree.map(np.testing.assert_array_equal, whole.meta_params, parts.meta_params)


def test_window_matches_a_python_loop_of_steps():
    maml, optimizer, step = make_parts()
    start = init_train_state(maml, optimizer, jax.random.key(0))
    looped, losses = copy(start), []
    jitted_step = jax.jit(lambda state: step(state, ()))
    for _ in range(6):
        looped, (loss, _) = jitted_step(looped)
        losses.append(loss)
    windowed, metrics = make_train_window(step)(start, (), jnp.int32(6))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        looped.meta_params,
        windowed.meta_params,
    )
    assert float(metrics["train/meta_loss"]) == pytest.approx(np.mean(losses), rel=1e-5)
    assert bool(metrics["finite"])


def test_a_step_is_sampling_then_update_and_its_tasks_depend_on_the_step_alone():
    maml, optimizer, step = make_parts()
    assert isinstance(step, TrainStep)
    state = init_train_state(maml, optimizer, jax.random.key(0))
    block = step.sample_steps(state.key, (), jnp.arange(3))
    assert block.support_inputs.shape == (3, 4, 10, 1)  # [steps, tasks, K, 1]
    one = step.sample_steps(state.key, (), jnp.array([2]))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[2], b[0]), block, one)


def test_training_lowers_the_meta_loss():
    maml, optimizer, step = make_parts()
    window = make_train_window(step)
    state = init_train_state(maml, optimizer, jax.random.key(0))
    state, first = window(state, (), jnp.int32(50))
    for _ in range(5):
        state, last = window(state, (), jnp.int32(50))
    assert float(last["train/meta_loss"]) < 0.5 * float(first["train/meta_loss"])


def test_sampling_tasks_ahead_changes_no_number():
    maml, optimizer, step = make_parts()
    start = init_train_state(maml, optimizer, jax.random.key(0))
    one_at_a_time, _ = make_train_window(step, sample_ahead=1)(copy(start), (), 10)
    ahead, _ = make_train_window(step, sample_ahead=4)(copy(start), (), 10)
    jax.tree.map(
        np.testing.assert_array_equal, one_at_a_time.meta_params, ahead.meta_params
    )


def trained_in_chunks(algorithm, family, tasks_at_once, batch=8, steps=4, k=5):
    """Meta-parameters and last window's metrics after `steps` meta-steps."""
    optimizer = flat_optimizer(optax.adam(1e-2))
    step = make_train_step(
        algorithm, family, optimizer, batch, k, k, tasks_at_once=tasks_at_once
    )
    state = init_train_state(algorithm, optimizer, jax.random.key(0))
    state, metrics = make_train_window(step, sample_ahead=2)(state, family.data, steps)
    return state.meta_params, metrics


def assert_same_training(got, want):
    (params, metrics), (want_params, want_metrics) = got, want
    assert float(metrics["train/meta_loss"]) == pytest.approx(
        float(want_metrics["train/meta_loss"]), rel=1e-5
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        params,
        want_params,
    )


@pytest.mark.parametrize("tasks_at_once", [1, 2, 4])
@pytest.mark.parametrize(
    "make",
    [
        lambda: make_maml(MODEL, FAMILY, 0.1, 2),
        lambda: make_metasgd(MODEL, FAMILY, 0.1, 1),
        lambda: make_reptile(MODEL, FAMILY, 0.1, 3),
    ],
    ids=["maml", "metasgd", "reptile"],
)
def test_meta_steps_over_chunks_of_tasks_equal_all_tasks_at_once(make, tasks_at_once):
    algorithm = make()
    assert_same_training(
        trained_in_chunks(algorithm, FAMILY, tasks_at_once),
        trained_in_chunks(algorithm, FAMILY, 0),
    )


def test_conv4_maml_one_task_at_a_time_equals_all_at_once(omniglot_root):
    from metalearn.tasks.omniglot import make_omniglot

    family = make_omniglot(omniglot_root, ways=5).train
    model = make_conv4(family.input_shape, 5, filters=8)
    maml = make_maml(model, family, 0.4, 2)  # second order, transductive BatchNorm
    assert_same_training(
        trained_in_chunks(maml, family, 1, batch=4, steps=2, k=1),
        trained_in_chunks(maml, family, 0, batch=4, steps=2, k=1),
    )


@pytest.mark.parametrize(
    "tasks_per_step, devices, tasks_at_once, chunks",
    [(16, 1, 0, 1), (16, 1, 1, 16), (16, 2, 1, 8), (16, 2, 4, 2), (16, 2, 8, 1)],
)
def test_each_devices_share_of_the_batch_splits_into_chunks(
    tasks_per_step, devices, tasks_at_once, chunks
):
    assert chunks_per_device(tasks_per_step, devices, tasks_at_once) == chunks


@pytest.mark.parametrize("tasks_at_once", [3, 16, -1])
def test_chunks_that_do_not_divide_a_devices_share_are_refused(tasks_at_once):
    with pytest.raises(ValueError, match=f"tasks_at_once={tasks_at_once} is not all"):
        chunks_per_device(16, 2, tasks_at_once)  # 8 tasks per device


def window_ends(start: int, schedule: Schedule) -> list[int]:
    """Where the host takes over, from `start` to the end."""
    ends = []
    while start < schedule.num_steps:
        start = schedule.next_end(start)
        ends.append(start)
    return ends


@pytest.mark.parametrize(
    "start, schedule, expected",
    [
        (0, Schedule(10, 3, 0), [3, 6, 9, 10]),
        (0, Schedule(10, 4, 5), [4, 5, 8, 10]),
        (5, Schedule(10, 4, 5), [8, 10]),
        (0, Schedule(3, 100, 1000), [3]),
        (0, Schedule(10, 100, 0, 4), [4, 8, 10]),
        (7, Schedule(12, 4), [8, 12]),  # a resume mid-window rejoins the grid
        (6, Schedule(20, 10, 0, 4), [8, 10, 12, 16, 20]),
    ],
)
def test_windows_end_at_log_eval_and_checkpoint_boundaries(start, schedule, expected):
    assert window_ends(start, schedule) == expected


def test_the_next_window_end_costs_the_same_for_any_number_of_steps():
    huge = Schedule(2**31 - 1, 100, 5000, 7)  # nothing is listed up front
    assert huge.next_end(0) == 7 and huge.next_end(4999) == 5000
    assert huge.next_end(5000) == 5005 and huge.next_end(2**31 - 2) == 2**31 - 1


@pytest.mark.parametrize(
    "step, every, due",
    [(10, 5, True), (12, 5, False), (20, 0, True), (12, 0, False)],
)
def test_a_boundary_is_due_on_its_grid_and_always_at_the_end(step, every, due):
    assert Schedule(20, 4).due(step, every) is due


def test_pretraining_pools_a_devices_tasks_whatever_tasks_at_once_says(omniglot_root):
    from metalearn.algorithms import make_pretrained
    from metalearn.tasks.omniglot import make_omniglot

    family = make_omniglot(omniglot_root, ways=5).train
    model = make_conv4(family.input_shape, 5, filters=8)  # BatchNorm over the batch
    pretrained = make_pretrained(model, family, 0.4, 1)
    assert pretrained.pools_tasks
    one_at_a_time = trained_in_chunks(pretrained, family, 1, batch=4, steps=2, k=1)
    all_at_once = trained_in_chunks(pretrained, family, 0, batch=4, steps=2, k=1)
    jax.tree.map(np.testing.assert_array_equal, one_at_a_time[0], all_at_once[0])


@pytest.mark.parametrize(
    "setting, backend, tasks_at_once",
    [
        (None, "cpu", 1),
        (None, "gpu", 0),
        (None, "tpu", 0),
        (0, "cpu", 0),
        (4, "gpu", 4),
    ],
)
def test_tasks_at_once_null_means_one_on_a_cpu_and_all_elsewhere(
    setting, backend, tasks_at_once
):
    assert tasks_at_once_for(setting, backend) == tasks_at_once
