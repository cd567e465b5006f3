"""The sinusoid task family: its distribution, its keys, its option checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn.registry import OptionError
from metalearn.tasks import TASKS, TaskSplits
from metalearn.tasks.sinusoid import make_sinusoid


def sample_many(family, num_tasks=2000, k=10, q=15, seed=0):
    keys = jax.random.split(jax.random.key(seed), num_tasks)
    return jax.vmap(lambda key: family.sample(key, family.data, k, q))(keys)


def recover_amplitude_phase(inputs, targets):
    """Least squares of y = a sin x + b cos x: A = |(a, b)|, phase = atan2(-b, a)."""
    design = jnp.concatenate([jnp.sin(inputs), jnp.cos(inputs)], axis=-1)
    coef = jnp.linalg.lstsq(design, targets)[0][:, 0]
    return jnp.hypot(coef[0], coef[1]), jnp.arctan2(-coef[1], coef[0])


def test_one_family_for_training_and_evaluation_with_no_data():
    tasks = make_sinusoid()
    assert isinstance(tasks, TaskSplits) and tasks.train is tasks.test
    family = tasks.train
    assert family.data == () and family.input_shape == (1,) and family.output_size == 1
    assert set(family.metrics) == {"mse"} and family.metrics["mse"].goal == "min"
    assert family.num_classes is None and family.examples_per_class is None
    assert TASKS.metadata("sinusoid") == {"headline": "mse"}


@pytest.mark.parametrize("amp_min, amp_max", [(0.1, 5.0), (0.1, 0.5)])
def test_tasks_follow_the_configured_distribution(amp_min, amp_max):
    tasks = sample_many(make_sinusoid(amp_min=amp_min, amp_max=amp_max).train)
    assert tasks.support_inputs.shape == (2000, 10, 1)
    assert tasks.query_targets.shape == (2000, 15, 1)
    assert tasks.classes is None
    inputs = jnp.concatenate([tasks.support_inputs, tasks.query_inputs], axis=1)
    targets = jnp.concatenate([tasks.support_targets, tasks.query_targets], axis=1)
    assert inputs.min() >= -5.0 and inputs.max() <= 5.0
    amplitude, phase = jax.vmap(recover_amplitude_phase)(inputs, targets)
    assert amplitude.min() >= amp_min - 1e-4 and amplitude.max() <= amp_max + 1e-4
    assert phase.min() >= -1e-4 and phase.max() <= np.pi + 1e-4
    # uniform on the ranges: means in the middle, to within sampling error
    assert float(amplitude.mean()) == pytest.approx((amp_min + amp_max) / 2, rel=0.05)
    assert float(phase.mean()) == pytest.approx(np.pi / 2, rel=0.05)


def test_support_and_query_are_the_same_task_at_independent_points():
    tasks = sample_many(make_sinusoid().train, num_tasks=50, k=20, q=20)
    for task in range(50):
        support, query = tasks.support_inputs[task], tasks.query_inputs[task]
        assert not np.any(np.isin(np.asarray(support), np.asarray(query)))
        a_support = recover_amplitude_phase(support, tasks.support_targets[task])
        a_query = recover_amplitude_phase(query, tasks.query_targets[task])
        np.testing.assert_allclose(a_support, a_query, rtol=1e-3, atol=1e-4)


def test_same_key_same_task_and_different_keys_differ():
    family = make_sinusoid().train
    first = family.sample(jax.random.key(3), (), 5, 5)
    again = family.sample(jax.random.key(3), (), 5, 5)
    other = family.sample(jax.random.key(4), (), 5, 5)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not np.allclose(first.support_targets, other.support_targets)


def test_input_only_predictor_scores_about_three_on_the_paper_distribution():
    # The best task-ignoring predictor, -(2/pi) E[A] cos x, has MSE ~3.0 (notes, §0):
    # the sanity value for step-0 evaluation.
    tasks = sample_many(make_sinusoid().train, num_tasks=20000, k=1, q=20)
    mean_amplitude = (0.1 + 5.0) / 2
    predictions = -(2 / np.pi) * mean_amplitude * jnp.cos(tasks.query_inputs)
    mse = float(jnp.mean((predictions - tasks.query_targets) ** 2))
    assert mse == pytest.approx(3.0, abs=0.06)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"amp_min": 6.0}, "amp_min=6.0 is not allowed: it must be <= amp_max=5.0"),
        (
            {"phase_min": 1.0, "phase_max": 0.5},
            "phase_min=1.0 is not allowed: it must be <= phase_max=0.5",
        ),
        ({"x_min": 9.0}, "x_min=9.0 is not allowed: it must be <= x_max=5.0"),
        ({"amp_max": math.inf}, "amp_max=inf is not allowed: it must be finite"),
        ({"x_min": math.nan}, "x_min=nan is not allowed: it must be finite"),
    ],
)
def test_out_of_range_options_are_refused_with_the_option_named(options, message):
    with pytest.raises(OptionError) as error:
        make_sinusoid(**options)
    assert str(error.value) == message
