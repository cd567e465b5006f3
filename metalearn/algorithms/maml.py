"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017).

The meta-parameters are a network's initial weights. For each task, `inner_steps`
SGD steps at `inner_lr` on the support set adapt them; the meta-loss is the query
loss of the adapted weights, averaged over the task batch (one task: the tutorial's
"MAML"; several, vmapped: its "batched MAML"). The outer gradient differentiates
through the inner loop (second order) unless `first_order=True` (FOMAML, §5.2),
which treats the inner gradients as constants.
"""

import jax

from metalearn.algorithms.base import Algorithm, make_batched_meta_grad
from metalearn.inner import make_adapt, make_model_loss, make_sgd_step
from metalearn.models import Model
from metalearn.tasks import TaskBatch, TaskFamily


def make_maml(
    model: Model,
    task: TaskFamily,
    inner_lr: float,
    inner_steps: int,
    first_order: bool = False,
) -> Algorithm:
    """Builds (first-order) MAML for `model` on `task`."""
    loss_fn = make_model_loss(model, task.loss)
    adapt = make_adapt(loss_fn, inner_steps, first_order)
    step = make_sgd_step(loss_fn, first_order)
    sample_inputs = jax.numpy.zeros((1, *task.input_shape))

    def init(key):
        return model.init(key, sample_inputs)

    def task_objective(meta_params, model_state, batch: TaskBatch):
        params, state = adapt(
            meta_params,
            inner_lr,
            model_state,
            batch.support_inputs,
            batch.support_targets,
        )
        return loss_fn(params, state, batch.query_inputs, batch.query_targets)

    def adapt_init(meta_params, key):
        del key  # every task starts from the meta-learned initialisation
        return meta_params

    def adapt_step(meta_params, params, model_state, inputs, targets):
        del meta_params
        params, model_state, _ = step(params, inner_lr, model_state, inputs, targets)
        return params, model_state

    def predict(params, model_state, inputs):
        return model.apply(params, model_state, inputs, True)[0]

    return Algorithm(
        name="fomaml" if first_order else "maml",
        init=init,
        meta_grad=make_batched_meta_grad(task_objective),
        adapt_init=adapt_init,
        adapt_step=adapt_step,
        predict=predict,
    )
