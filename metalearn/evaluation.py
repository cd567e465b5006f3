"""The evaluation protocol shared by every algorithm.

A fixed set of held-out tasks, drawn from the evaluation's own key and the test
task family (for a dataset split by class: the test classes only), so every run
and every algorithm is scored on the same tasks. Each task starts from the
algorithm's `adapt_init`, takes `num_steps` of the algorithm's own `adapt_step` on
its support set, and is scored on its query set after every step (0 = before
adapting). An algorithm without adaptation steps (`adapts_once`: ProtoNets, whose
adaptation is computing the support set's prototypes) adapts once, and that score
is reported at every step 0..num_steps: a flat curve, the same number whichever
step a table or an objective reads. Reported per metric and step: the mean over
tasks, the half-width of its 95% confidence interval, `1.96 * std /
sqrt(num_tasks)`, and the median.

Tasks are sampled and adapted `tasks_per_batch` at a time (one compiled program
per chunk), so memory is bounded by the chunk, and the caller can stop between
chunks (a stop request during a long evaluation) or show progress.
"""

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from metalearn.algorithms import Algorithm
from metalearn.tasks import Data, TaskBatch, TaskFamily

Scores = dict[str, jax.Array]  # metric name -> [num_steps + 1]


class EvalScores(NamedTuple):
    means: Scores
    ci95: Scores
    medians: Scores


class EvaluationStopped(RuntimeError):
    """`should_stop` asked evaluation to stop between two chunks of tasks."""


class EvaluateFn(Protocol):
    def __call__(
        self,
        meta_params,
        model_state,
        data: Data,
        tasks_key: jax.Array,
        adapt_key: jax.Array,
        should_stop: Callable[[], bool] = ...,
        on_chunk: Callable[[int], None] = ...,
    ) -> EvalScores: ...

    def compile_chunk(self, meta_params, model_state, data: Data) -> Any:
        """The compiled program of one chunk of tasks (for its memory analysis)."""
        ...


def make_evaluate(
    algorithm: Algorithm,
    task: TaskFamily,
    num_tasks: int,
    num_support: int,
    num_query: int,
    num_steps: int,
    tasks_per_batch: int | None = None,
) -> EvaluateFn:
    """Builds `evaluate(meta_params, model_state, data, tasks_key, adapt_key) ->
    EvalScores` on the held-out family `task` and its `data`.

    `tasks_key` draws the held-out tasks (fix it to score every run on the same
    tasks); `adapt_key` feeds `adapt_init` (e.g. fresh weights for SGD retraining;
    derive it from the run's seed). `should_stop()` is asked before each chunk
    (`EvaluationStopped` if true); `on_chunk(tasks_done)` is called after each.

    Args:
        tasks_per_batch: how many tasks are sampled and adapted at once (`vmap`);
            fewer bound memory. `None`: all at once. The scores do not depend on
            it beyond float rounding.

    Returns:
        A function whose outputs map each metric name to a `[num_steps + 1]`
        array, index = adaptation steps taken.
    """
    chunk = min(tasks_per_batch or num_tasks, num_tasks)

    def score(params, model_state, batch: TaskBatch) -> Scores:
        predictions = algorithm.predict(
            params, model_state, batch.query_inputs, batch.support_inputs
        )
        return {
            name: metric.fn(predictions, batch.query_targets)
            for name, metric in task.metrics.items()
        }

    def one_task(meta_params, model_state, data, task_key, adapt_key) -> Scores:
        batch = task.sample(task_key, data, num_support, num_query)
        return adaptation_curve(
            algorithm,
            meta_params,
            model_state,
            adapt_key,
            support_of(batch),
            num_steps,
            lambda params, state: score(params, state, batch),
        )

    @jax.jit
    def score_chunk(meta_params, model_state, data, task_keys, adapt_keys):
        return jax.vmap(one_task, in_axes=(None, None, None, 0, 0))(
            meta_params, model_state, data, task_keys, adapt_keys
        )  # name -> [chunk, num_steps + 1]

    compiled: list[Any] = []  # the chunk program, compiled once

    def compile_chunk(meta_params, model_state, data):
        """The compiled program of one chunk (kept, and reused by `evaluate`)."""
        if not compiled:
            keys = jax.random.split(jax.random.key(0), chunk)
            lowered = score_chunk.lower(meta_params, model_state, data, keys, keys)
            compiled.append(lowered.compile())
        return compiled[0]

    def evaluate(
        meta_params,
        model_state,
        data,
        tasks_key,
        adapt_key,
        should_stop=lambda: False,
        on_chunk=lambda done: None,
    ) -> EvalScores:
        task_keys = jax.random.split(tasks_key, num_tasks)
        adapt_keys = jax.random.split(adapt_key, num_tasks)
        parts = []
        for start in range(0, num_tasks, chunk):
            if should_stop():
                raise EvaluationStopped(f"stopped after {start} of {num_tasks} tasks")
            # the last chunk is padded to the same size: one compiled program
            index = np.minimum(np.arange(start, start + chunk), num_tasks - 1)
            program = compile_chunk(meta_params, model_state, data)
            scores = program(
                meta_params, model_state, data, task_keys[index], adapt_keys[index]
            )
            # wait for the chunk: one chunk's work in flight at a time bounds memory,
            # and a stop request is seen within a chunk's time
            scores = jax.block_until_ready(scores)
            parts.append(jax.tree.map(lambda s, n=start: s[: num_tasks - n], scores))
            on_chunk(min(start + chunk, num_tasks))
        per_task = jax.tree.map(lambda *p: jnp.concatenate(p), *parts)
        return summarise(per_task)

    evaluate.compile_chunk = compile_chunk  # type: ignore[attr-defined]
    return evaluate  # type: ignore[return-value]


def support_of(batch: TaskBatch) -> tuple[jax.Array, jax.Array]:
    return batch.support_inputs, batch.support_targets


def adaptation_curve(
    algorithm: Algorithm,
    meta_params,
    model_state,
    adapt_key: jax.Array,
    support: tuple[jax.Array, jax.Array],
    num_steps: int,
    observe: Callable[[Any, Any], Any],
) -> Any:
    """`observe(params, model_state)` after 0..`num_steps` adaptation steps on
    `support`, each leaf stacked on a new leading axis `[num_steps + 1, ...]`.

    An algorithm that `adapts_once` (ProtoNets) takes one step and that one
    observation stands for every step, 0 included: its step 0 is the adapted
    model, not a model that has not seen the support set.
    """
    params = algorithm.adapt_init(meta_params, adapt_key)
    if algorithm.adapts_once:
        params, state = algorithm.adapt_step(meta_params, params, model_state, *support)
        seen = observe(params, state)
        return jax.tree.map(
            lambda x: jnp.broadcast_to(x, (num_steps + 1, *x.shape)), seen
        )

    def body(carry, _):
        params, state = algorithm.adapt_step(meta_params, carry[0], carry[1], *support)
        return (params, state), observe(params, state)

    before = observe(params, model_state)
    _, after = jax.lax.scan(body, (params, model_state), None, length=num_steps)
    return jax.tree.map(
        lambda first, rest: jnp.concatenate([first[None], rest]), before, after
    )


@jax.jit
def summarise(per_task: Scores) -> EvalScores:
    """Mean, 95% CI half-width and median over tasks of `[num_tasks, steps + 1]`."""
    num_tasks = jax.tree.leaves(per_task)[0].shape[0]
    means = jax.tree.map(lambda s: jnp.mean(s, axis=0), per_task)
    ci95 = jax.tree.map(
        lambda s: 1.96 * jnp.std(s, axis=0, ddof=1) / jnp.sqrt(num_tasks), per_task
    )
    # the median shows whether a bad mean comes from a few diverging tasks
    # (a NaN is a diverged task: ranked as +inf, not allowed to poison the median)
    medians = jax.tree.map(
        lambda s: jnp.median(jnp.where(jnp.isnan(s), jnp.inf, s), axis=0), per_task
    )
    return EvalScores(means, ci95, medians)


def flatten_scores(scores: EvalScores, suffix: str = "") -> dict[str, float]:
    """Metric dict `eval/<metric><suffix>@step<i>` (mean over tasks),
    `eval/<metric><suffix>_ci95@step<i>` and `eval/<metric><suffix>_median@step<i>`,
    as Python floats."""
    means, ci95, medians = jax.device_get(tuple(scores))
    flat = {}
    for name, values in means.items():
        for i, value in enumerate(values):
            flat[f"eval/{name}{suffix}@step{i}"] = float(value)
            flat[f"eval/{name}{suffix}_ci95@step{i}"] = float(ci95[name][i])
            flat[f"eval/{name}{suffix}_median@step{i}"] = float(medians[name][i])
    return flat
