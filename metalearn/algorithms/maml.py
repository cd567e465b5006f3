"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017).

The meta-parameters are a network's initial weights. For each task, `inner_steps`
SGD steps at `inner_lr` on the support set adapt them; the meta-loss is the query
loss of the adapted weights, averaged over the task batch (one task: the tutorial's
"MAML"; several, vmapped: its "batched MAML"). The outer gradient differentiates
through the inner loop (second order) unless `first_order=True` (FOMAML, §5.2),
which treats the inner gradients as constants.
"""

from metalearn.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    make_batched_meta_grad,
    make_init,
    make_predict,
    make_sgd_adapt_step,
    start_from_meta_params,
)
from metalearn.inner import make_adapt, make_model_loss
from metalearn.models import Model
from metalearn.tasks import TaskBatch, TaskFamily


@ALGORITHMS.register("maml")
def make_maml(
    model: Model,
    task: TaskFamily,
    inner_lr: float,
    inner_steps: int,
    *,
    first_order: bool = False,
    remat: bool = False,
) -> Algorithm:
    """Builds (first-order) MAML for `model` on `task`.

    Args:
        model: the network whose initial weights are meta-learned.
        task: the meta-training task family (its loss is the inner and outer loss).
        inner_lr: the inner SGD step size (`inner.lr`).
        inner_steps: inner SGD steps during meta-training (`inner.steps`).
        first_order: drop second derivatives (first-order MAML).
        remat: recompute each inner step's activations in the backward pass (less
            memory for long inner loops, about one more forward pass per step).
    """
    loss_fn = make_model_loss(model, task.loss)
    adapt = make_adapt(loss_fn, inner_steps, first_order, remat)

    def task_objective(meta_params, model_state, batch: TaskBatch):
        params, state = adapt(
            meta_params,
            inner_lr,
            model_state,
            batch.support_inputs,
            batch.support_targets,
        )
        return loss_fn(params, state, batch.query_inputs, batch.query_targets)

    return Algorithm(
        name="fomaml" if first_order else "maml",
        init=make_init(model, task),
        meta_grad=make_batched_meta_grad(task_objective, task),
        adapt_init=start_from_meta_params,
        adapt_step=make_sgd_adapt_step(loss_fn, inner_lr),
        predict=make_predict(model),
    )
