"""The evaluation protocol."""

import jax
import numpy as np
import pytest

from metalearn.algorithms import make_maml
from metalearn.evaluation import (
    EvalScores,
    EvaluationStopped,
    flatten_scores,
    make_evaluate,
)
from metalearn.models import make_mlp
from metalearn.tasks.sinusoid import make_sinusoid

FAMILY = make_sinusoid().test
MODEL = make_mlp(FAMILY.input_shape, 1, hidden_sizes=(16,))
MAML = make_maml(MODEL, FAMILY, inner_lr=0.01, inner_steps=1)
PARAMS, STATE = MAML.init(jax.random.key(0))
KEYS = jax.random.key(1), jax.random.key(2)


def test_scores_are_mean_and_ci_over_the_fixed_held_out_tasks():
    evaluate = make_evaluate(
        MAML, FAMILY, num_tasks=64, num_support=5, num_query=30, num_steps=3
    )
    scores = evaluate(PARAMS, STATE, (), jax.random.key(7), jax.random.key(8))
    assert isinstance(scores, EvalScores)
    assert scores.means["mse"].shape == scores.ci95["mse"].shape == (4,)

    # Recompute by hand: the same held-out tasks, adapted one step at a time.
    keys = jax.random.split(jax.random.key(7), 64)
    tasks = jax.vmap(lambda k: FAMILY.sample(k, (), 5, 30))(keys)
    adapt_step, predict = jax.jit(MAML.adapt_step), jax.jit(MAML.predict)
    per_task = np.zeros((64, 4))
    for i in range(64):
        task = jax.tree.map(lambda a, i=i: a[i], tasks)
        adapted, adapted_state = PARAMS, STATE
        for step in range(4):
            predictions = predict(adapted, adapted_state, task.query_inputs)
            per_task[i, step] = np.mean((predictions - task.query_targets) ** 2)
            adapted, adapted_state = adapt_step(
                PARAMS,
                adapted,
                adapted_state,
                task.support_inputs,
                task.support_targets,
            )
    np.testing.assert_allclose(scores.means["mse"], per_task.mean(0), rtol=1e-4)
    np.testing.assert_allclose(
        scores.ci95["mse"], 1.96 * per_task.std(0, ddof=1) / np.sqrt(64), rtol=1e-3
    )
    np.testing.assert_allclose(scores.medians["mse"], np.median(per_task, 0), rtol=1e-4)
    assert per_task[:, 3].mean() < per_task[:, 0].mean()  # adaptation helps


def test_chunked_evaluation_equals_all_at_once_and_repeats_exactly():
    kwargs = dict(num_tasks=40, num_support=5, num_query=10, num_steps=2)
    whole = make_evaluate(MAML, FAMILY, **kwargs)(PARAMS, STATE, (), *KEYS)
    again = make_evaluate(MAML, FAMILY, **kwargs)(PARAMS, STATE, (), *KEYS)
    chunks = []
    chunked = make_evaluate(MAML, FAMILY, tasks_per_batch=16, **kwargs)(
        PARAMS, STATE, (), *KEYS, on_chunk=chunks.append
    )  # 40 tasks in chunks of 16: the last one padded
    jax.tree.map(np.testing.assert_array_equal, whole, again)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), whole, chunked
    )
    assert chunks == [16, 32, 40]


def test_a_stop_request_between_chunks_ends_the_evaluation():
    evaluate = make_evaluate(
        MAML, FAMILY, num_tasks=40, num_support=5, num_query=10, num_steps=2,
        tasks_per_batch=16,
    )  # fmt: skip
    asked = []

    def stop_after_two_chunks():
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(EvaluationStopped, match="after 32 of 40 tasks"):
        evaluate(PARAMS, STATE, (), *KEYS, should_stop=stop_after_two_chunks)


def test_a_nan_task_is_ranked_last_by_the_median_not_poisoning_it():
    from metalearn.evaluation import summarise

    per_task = {"mse": np.array([[1.0], [2.0], [np.nan]])}
    scores = summarise(per_task)
    assert float(scores.medians["mse"][0]) == 2.0
    assert np.isnan(scores.means["mse"][0])


def test_flat_keys_name_metric_and_step():
    flat = flatten_scores(
        EvalScores(
            {"mse": np.array([3.0, 1.0])},
            {"mse": np.array([0.3, 0.1])},
            {"mse": np.array([2.0, 0.5])},
        ),
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
    assert all(type(value) is float for value in flat.values())
