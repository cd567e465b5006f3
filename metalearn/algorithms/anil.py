"""ANIL: Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or
Feature Reuse?", ICLR 2020).

MAML whose inner loop adapts only the network's final layer (the model's `head`);
the body is meta-learned in the outer loop and left untouched during adaptation, so
the inner loop neither computes nor applies body gradients.
"""

import jax

from metalearn.algorithms.base import (
    Algorithm,
    make_batched_meta_grad,
    make_init,
    make_predict,
    start_from_meta_params,
)
from metalearn.inner import make_adapt, make_model_loss
from metalearn.models import Model, Params
from metalearn.tasks import TaskBatch, TaskFamily


def make_anil(
    model: Model,
    task: TaskFamily,
    inner_lr: float,
    inner_steps: int,
    first_order: bool = False,
    remat: bool = False,
) -> Algorithm:
    """Builds ANIL for `model` on `task`."""
    loss_fn = make_model_loss(model, task.loss)

    def split(params: Params) -> tuple[Params, Params]:
        """(body, head): the same tree with `None` where the other part's leaves are."""
        is_head = model.head(params)
        body = jax.tree.map(lambda h, p: None if h else p, is_head, params)
        head = jax.tree.map(lambda h, p: p if h else None, is_head, params)
        return body, head

    def adapt_head(params, model_state, inputs, targets, num_steps, first_order):
        body, head = split(params)

        def head_loss(head, state, inputs, targets):
            return loss_fn(_merge(body, head), state, inputs, targets)

        adapt = make_adapt(head_loss, num_steps, first_order, remat)
        head, model_state = adapt(head, inner_lr, model_state, inputs, targets)
        return _merge(body, head), model_state

    def task_objective(meta_params, model_state, batch: TaskBatch):
        params, state = adapt_head(
            meta_params,
            model_state,
            batch.support_inputs,
            batch.support_targets,
            inner_steps,
            first_order,
        )
        return loss_fn(params, state, batch.query_inputs, batch.query_targets)

    def adapt_step(meta_params, params, model_state, inputs, targets):
        del meta_params
        return adapt_head(params, model_state, inputs, targets, 1, True)

    return Algorithm(
        name="anil",
        init=make_init(model, task),
        meta_grad=make_batched_meta_grad(task_objective),
        adapt_init=start_from_meta_params,
        adapt_step=adapt_step,
        predict=make_predict(model),
    )


def _is_none(node) -> bool:
    return node is None


def _merge(body: Params, head: Params) -> Params:
    """Inverse of `split`: the body's leaves where it has them, else the head's."""
    return jax.tree.map(
        lambda b, h: h if b is None else b, body, head, is_leaf=_is_none
    )
