"""Meta-SGD (Li, Zhou, Chen & Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning", 2017).

MAML with one learning rate per parameter: the meta-parameters are the initial
weights and a same-shaped pytree of inner learning rates (initialised at
`inner_lr`), both meta-learned through the (second-order) inner loop.
"""

import jax
import jax.numpy as jnp

from metalearn.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    make_batched_meta_grad,
    make_init,
    make_predict,
    query_of,
)
from metalearn.inner import (
    make_adapt,
    make_model_loss,
    make_query_loss,
    make_sgd_step,
)
from metalearn.models import Model
from metalearn.tasks import TaskBatch, TaskFamily


@ALGORITHMS.register("metasgd")
def make_metasgd(
    model: Model,
    task: TaskFamily,
    inner_lr: float,
    inner_steps: int,
    *,
    first_order: bool = False,
    remat: bool = False,
) -> Algorithm:
    """Builds Meta-SGD; meta-parameters are `{"params": ..., "lrs": ...}`.

    Args:
        model: the network whose initial weights are meta-learned.
        task: the meta-training task family.
        inner_lr: the initial value of every per-parameter learning rate.
        inner_steps: inner steps during meta-training.
        first_order: drop second derivatives (the rates then still learn through
            the last inner step's update).
        remat: recompute each inner step's activations in the backward pass.
    """
    loss_fn = make_model_loss(model, task.loss)
    query_loss = make_query_loss(model, task.loss)
    adapt = make_adapt(loss_fn, inner_steps, first_order, remat)
    step = make_sgd_step(loss_fn)
    init_weights = make_init(model, task)

    def init(key):
        params, model_state = init_weights(key)
        lrs = jax.tree.map(lambda p: jnp.full_like(p, inner_lr), params)
        return {"params": params, "lrs": lrs}, model_state

    def task_objective(meta_params, model_state, batch: TaskBatch, step):
        del step  # the objective does not change with training
        params, state = adapt(
            meta_params["params"],
            meta_params["lrs"],
            model_state,
            batch.support_inputs,
            batch.support_targets,
        )
        return query_loss(params, state, *query_of(batch))

    def adapt_init(meta_params, key):
        del key
        return meta_params["params"]

    def adapt_step(meta_params, params, model_state, inputs, targets):
        params, model_state, _ = step(
            params, meta_params["lrs"], model_state, inputs, targets
        )
        return params, model_state

    return Algorithm(
        name="metasgd",
        init=init,
        meta_grad=make_batched_meta_grad(task_objective, task),
        adapt_init=adapt_init,
        adapt_step=adapt_step,
        predict=make_predict(model),
    )
