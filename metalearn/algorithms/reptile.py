"""Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018).

For each task, `inner_steps` SGD steps at `inner_lr` on the task's support set take
the initial weights θ to θ′; the outer pseudo-gradient is the task-batch mean of
θ − θ′, which the outer optimiser applies like a gradient (plain SGD at rate ε gives
the paper's θ ← θ + ε·mean(θ′ − θ)). No derivatives of the inner loop are needed.
The reported meta-loss is the adapted weights' query loss, for monitoring only.
"""

import jax

from metalearn.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    MetaGradient,
    make_init,
    make_predict,
    make_sgd_adapt_step,
    mean_over_tasks,
    query_metrics,
    query_of,
    start_from_meta_params,
)
from metalearn.inner import make_adapt, make_model_loss, make_query_loss
from metalearn.models import Model
from metalearn.tasks import TaskBatch, TaskFamily


@ALGORITHMS.register("reptile")
def make_reptile(
    model: Model, task: TaskFamily, inner_lr: float, inner_steps: int
) -> Algorithm:
    """Builds Reptile for `model` on `task`."""
    loss_fn = make_model_loss(model, task.loss)
    query_loss_fn = make_query_loss(model, task.loss)
    adapt = make_adapt(loss_fn, inner_steps, first_order=True)
    metrics_of = query_metrics(task)

    def one_task(meta_params, model_state, batch: TaskBatch):
        params, state = adapt(
            meta_params,
            inner_lr,
            model_state,
            batch.support_inputs,
            batch.support_targets,
        )
        query_loss, (_, predictions) = query_loss_fn(params, state, *query_of(batch))
        delta = jax.tree.map(jax.numpy.subtract, meta_params, params)
        return query_loss, delta, state, metrics_of(predictions, batch.query_targets)

    def meta_grad(meta_params, model_state, tasks, step=0):
        del step
        losses, deltas, states, metrics = jax.vmap(one_task, in_axes=(None, None, 0))(
            meta_params, model_state, tasks
        )
        return MetaGradient(
            losses.mean(),
            mean_over_tasks(deltas),
            mean_over_tasks(states),
            mean_over_tasks(metrics),
        )

    return Algorithm(
        name="reptile",
        init=make_init(model, task),
        meta_grad=meta_grad,
        adapt_init=start_from_meta_params,
        adapt_step=make_sgd_adapt_step(loss_fn, inner_lr),
        predict=make_predict(model),
    )
