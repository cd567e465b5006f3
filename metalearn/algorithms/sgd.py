"""Plain SGD retraining from scratch: the no-meta-learning baseline.

Nothing is meta-trained (the outer gradient is zero, so any outer optimiser leaves
the meta-parameters as initialised). At test time each task starts from a freshly
initialised network (its own key) trained with SGD at `inner_lr` on the support
set alone. Compare with MAML at many evaluation steps (e.g. `eval.steps=100`).
"""

import jax
import jax.numpy as jnp

from metalearn.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    MetaGradient,
    make_init,
    make_predict,
    make_sgd_adapt_step,
    mean_over_tasks,
    query_metrics,
)
from metalearn.inner import make_model_loss
from metalearn.models import Model
from metalearn.tasks import TaskFamily


@ALGORITHMS.register("sgd")
def make_sgd_baseline(
    model: Model, task: TaskFamily, inner_lr: float, inner_steps: int
) -> Algorithm:
    """Builds the SGD-from-scratch baseline; `inner_steps` is unused (no training)."""
    del inner_steps
    loss_fn = make_model_loss(model, task.loss)
    init = make_init(model, task)
    metrics_of = query_metrics(task)

    def meta_grad(meta_params, model_state, tasks, step=0):
        # Monitoring only: the untrained network's query loss; no learning signal.
        del step
        losses, (_, predictions) = jax.vmap(loss_fn, in_axes=(None, None, 0, 0))(
            meta_params, model_state, tasks.query_inputs, tasks.query_targets
        )
        metrics = jax.vmap(metrics_of)(predictions, tasks.query_targets)
        zeros = jax.tree.map(jnp.zeros_like, meta_params)
        return MetaGradient(losses.mean(), zeros, model_state, mean_over_tasks(metrics))

    def adapt_init(meta_params, key):
        del meta_params  # every task starts from scratch
        return init(key)[0]

    return Algorithm(
        name="sgd",
        init=init,
        meta_grad=meta_grad,
        adapt_init=adapt_init,
        adapt_step=make_sgd_adapt_step(loss_fn, inner_lr),
        predict=make_predict(model),
    )
