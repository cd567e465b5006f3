"""ANIL: Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or
Feature Reuse?", ICLR 2020).

MAML whose inner loop adapts only the network's final layer (the model's `head`);
the body is meta-learned in the outer loop and left untouched during adaptation, so
the inner loop neither computes nor applies body gradients.
"""

from metalearn.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    make_batched_meta_grad,
    make_head_adapt,
    make_init,
    make_predict,
    query_of,
    start_from_meta_params,
)
from metalearn.inner import make_model_loss, make_query_loss
from metalearn.models import Model
from metalearn.tasks import TaskBatch, TaskFamily


@ALGORITHMS.register("anil")
def make_anil(
    model: Model,
    task: TaskFamily,
    inner_lr: float,
    inner_steps: int,
    *,
    first_order: bool = False,
    remat: bool = False,
) -> Algorithm:
    """Builds ANIL for `model` on `task`.

    Args:
        model: the network; its `head` is adapted, the rest meta-learned only.
        task: the meta-training task family.
        inner_lr: the inner SGD step size of the head.
        inner_steps: inner steps during meta-training.
        first_order: drop second derivatives.
        remat: recompute each inner step's activations in the backward pass.
    """
    loss_fn = make_model_loss(model, task.loss)
    query_loss = make_query_loss(model, task.loss)
    adapt = make_head_adapt(model, loss_fn, inner_steps, first_order, remat)
    adapt_one_step = make_head_adapt(model, loss_fn, 1, first_order=True)

    def task_objective(meta_params, model_state, batch: TaskBatch, step):
        del step  # the objective does not change with training
        params, state = adapt(
            meta_params,
            inner_lr,
            model_state,
            batch.support_inputs,
            batch.support_targets,
        )
        return query_loss(params, state, *query_of(batch))

    def adapt_step(meta_params, params, model_state, inputs, targets):
        del meta_params
        return adapt_one_step(params, inner_lr, model_state, inputs, targets)

    return Algorithm(
        name="anil",
        init=make_init(model, task),
        meta_grad=make_batched_meta_grad(task_objective, task),
        adapt_init=start_from_meta_params,
        adapt_step=adapt_step,
        predict=make_predict(model),
    )
