"""The evaluation protocol."""

import jax
import numpy as np
import pytest

from metalearn.algorithms import make_maml
from metalearn.evaluation import flatten_scores, make_evaluate
from metalearn.models import make_mlp
from metalearn.tasks.sinusoid import make_sinusoid

TASK = make_sinusoid()
MODEL = make_mlp([16], 1)


def test_scores_are_mean_and_ci_over_the_fixed_held_out_tasks():
    maml = make_maml(MODEL, TASK, inner_lr=0.01, inner_steps=1)
    params, state = maml.init(jax.random.key(0))
    evaluate = make_evaluate(
        maml, TASK, num_tasks=64, num_support=5, num_query=30, num_steps=3
    )
    means, ci95, medians = evaluate(params, state, jax.random.key(7), jax.random.key(8))
    assert means["mse"].shape == ci95["mse"].shape == (4,)

    # Recompute by hand: the same held-out tasks, adapted one step at a time.
    keys = jax.random.split(jax.random.key(7), 64)
    tasks = jax.vmap(lambda k: TASK.sample(k, 5, 30))(keys)
    adapt_step, predict = jax.jit(maml.adapt_step), jax.jit(maml.predict)
    per_task = np.zeros((64, 4))
    for i in range(64):
        task = jax.tree.map(lambda a, i=i: a[i], tasks)
        adapted, adapted_state = params, state
        for step in range(4):
            predictions = predict(adapted, adapted_state, task.query_inputs)
            per_task[i, step] = np.mean((predictions - task.query_targets) ** 2)
            adapted, adapted_state = adapt_step(
                params,
                adapted,
                adapted_state,
                task.support_inputs,
                task.support_targets,
            )
    np.testing.assert_allclose(means["mse"], per_task.mean(0), rtol=1e-4)
    np.testing.assert_allclose(
        ci95["mse"], 1.96 * per_task.std(0, ddof=1) / np.sqrt(64), rtol=1e-3
    )
    np.testing.assert_allclose(medians["mse"], np.median(per_task, 0), rtol=1e-4)
    assert per_task[:, 3].mean() < per_task[:, 0].mean()  # adaptation helps


def test_batched_evaluation_equals_all_at_once_and_repeats_exactly():
    maml = make_maml(MODEL, TASK, inner_lr=0.01, inner_steps=1)
    params, state = maml.init(jax.random.key(0))
    kwargs = dict(num_tasks=40, num_support=5, num_query=10, num_steps=2)
    keys = jax.random.key(1), jax.random.key(2)
    whole = make_evaluate(maml, TASK, **kwargs)(params, state, *keys)
    again = make_evaluate(maml, TASK, **kwargs)(params, state, *keys)
    chunked = make_evaluate(maml, TASK, tasks_per_batch=8, **kwargs)(
        params, state, *keys
    )
    jax.tree.map(np.testing.assert_array_equal, whole, again)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), whole, chunked
    )


def test_flat_keys_name_metric_and_step():
    flat = flatten_scores(
        {"mse": np.array([3.0, 1.0])},
        {"mse": np.array([0.3, 0.1])},
        {"mse": np.array([2.0, 0.5])},
        suffix="_k5",
    )
    assert flat == pytest.approx(
        {
            "eval/mse_k5@step0": 3.0,
            "eval/mse_k5@step1": 1.0,
            "eval/mse_k5_ci95@step0": 0.3,
            "eval/mse_k5_ci95@step1": 0.1,
            "eval/mse_k5_median@step0": 2.0,
            "eval/mse_k5_median@step1": 0.5,
        }
    )
