"""The evaluation protocol shared by every algorithm.

A fixed set of held-out tasks, drawn from the evaluation's own key, so every run and
every algorithm is scored on the same tasks. Each task starts from the algorithm's
`adapt_init`, takes `num_steps` of the algorithm's own `adapt_step` on its support
set, and is scored on its query set after every step (0 = before adapting). Reported
per metric and step: the mean over tasks and the half-width of its 95% confidence
interval, `1.96 * std / sqrt(num_tasks)`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from metalearn.algorithms import Algorithm
from metalearn.tasks import TaskBatch, TaskFamily

Scores = dict[str, jax.Array]  # metric name -> [num_steps + 1]


def make_evaluate(
    algorithm: Algorithm,
    task: TaskFamily,
    num_tasks: int,
    num_support: int,
    num_query: int,
    num_steps: int,
    tasks_per_batch: int | None = None,
) -> Callable[[object, object, jax.Array], tuple[Scores, Scores]]:
    """Builds `evaluate(meta_params, model_state, tasks_key, adapt_key) -> (means,
    ci95, medians)`.

    `tasks_key` draws the held-out tasks (fix it to score every run on the same
    tasks); `adapt_key` feeds `adapt_init` (e.g. fresh weights for SGD retraining;
    derive it from the run's seed).

    Args:
        tasks_per_batch: how many tasks are adapted at once (`vmap`); fewer bound
            memory for large models. `None`: all at once.

    Returns:
        A jitted function whose outputs map each metric name to a
        `[num_steps + 1]` array, index = adaptation steps taken.
    """

    def score(params, model_state, batch: TaskBatch) -> Scores:
        predictions = algorithm.predict(params, model_state, batch.query_inputs)
        return {
            name: metric(predictions, batch.query_targets)
            for name, metric in task.metrics.items()
        }

    def one_task(meta_params, model_state, batch: TaskBatch, key) -> Scores:
        params = algorithm.adapt_init(meta_params, key)

        def body(carry, _):
            params, state = algorithm.adapt_step(
                meta_params, *carry, batch.support_inputs, batch.support_targets
            )
            return (params, state), score(params, state, batch)

        before = score(params, model_state, batch)
        _, after = jax.lax.scan(body, (params, model_state), None, length=num_steps)
        return jax.tree.map(
            lambda first, rest: jnp.concatenate([first[None], rest]), before, after
        )

    @jax.jit
    def evaluate(meta_params, model_state, tasks_key, adapt_key):
        tasks = jax.vmap(lambda k: task.sample(k, num_support, num_query))(
            jax.random.split(tasks_key, num_tasks)
        )
        per_task = jax.lax.map(
            lambda args: one_task(meta_params, model_state, *args),
            (tasks, jax.random.split(adapt_key, num_tasks)),
            batch_size=tasks_per_batch or num_tasks,
        )  # name -> [num_tasks, num_steps + 1]
        means = jax.tree.map(lambda s: jnp.mean(s, axis=0), per_task)
        ci95 = jax.tree.map(
            lambda s: 1.96 * jnp.std(s, axis=0, ddof=1) / jnp.sqrt(num_tasks),
            per_task,
        )
        # the median shows whether a bad mean comes from a few diverging tasks
        # (a NaN is a diverged task: ranked as +inf, not allowed to poison the median)
        medians = jax.tree.map(
            lambda s: jnp.median(jnp.where(jnp.isnan(s), jnp.inf, s), axis=0), per_task
        )
        return means, ci95, medians

    return evaluate


def flatten_scores(
    means: Scores, ci95: Scores, medians: Scores, suffix: str = ""
) -> dict:
    """Metric dict `eval/<metric><suffix>@step<i>` (mean over tasks),
    `eval/<metric><suffix>_ci95@step<i>` and `eval/<metric><suffix>_median@step<i>`,
    as Python floats."""
    flat = {}
    for name, values in jax.device_get(means).items():
        for i, value in enumerate(values):
            flat[f"eval/{name}{suffix}@step{i}"] = float(value)
            flat[f"eval/{name}{suffix}_ci95@step{i}"] = float(ci95[name][i])
            flat[f"eval/{name}{suffix}_median@step{i}"] = float(medians[name][i])
    return flat
