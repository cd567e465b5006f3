"""Pretraining on all tasks, then fine-tuning: the MAML paper's baseline (Finn et al.
2017, §5.1, "pretrained").

One network is trained jointly on every task's points (support and query, all tasks
of the batch pooled: plain regression on the task mixture), with no inner loop. At
test time it is fine-tuned with SGD at `inner_lr` on the K support points.
"""

import jax
import jax.numpy as jnp

from metalearn.algorithms.base import (
    Algorithm,
    make_init,
    make_predict,
    make_sgd_adapt_step,
    start_from_meta_params,
)
from metalearn.inner import make_model_loss
from metalearn.models import Model
from metalearn.tasks import TaskFamily


def make_pretrained(
    model: Model, task: TaskFamily, inner_lr: float, inner_steps: int
) -> Algorithm:
    """Builds the pretrain-then-fine-tune baseline; `inner_steps` is unused."""
    del inner_steps
    loss_fn = make_model_loss(model, task.loss)

    def pooled_loss(params, model_state, tasks):
        inputs = jnp.concatenate([tasks.support_inputs, tasks.query_inputs], axis=1)
        targets = jnp.concatenate([tasks.support_targets, tasks.query_targets], axis=1)
        pooled = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731  [T*(K+Q), ...]
        return loss_fn(params, model_state, pooled(inputs), pooled(targets))

    value_and_grad = jax.value_and_grad(pooled_loss, has_aux=True)

    def meta_grad(meta_params, model_state, tasks):
        (loss, model_state), grads = value_and_grad(meta_params, model_state, tasks)
        return loss, grads, model_state

    return Algorithm(
        name="pretrained",
        init=make_init(model, task),
        meta_grad=meta_grad,
        adapt_init=start_from_meta_params,
        adapt_step=make_sgd_adapt_step(loss_fn, inner_lr),
        predict=make_predict(model),
    )
