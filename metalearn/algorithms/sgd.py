"""Plain SGD retraining from scratch: the no-meta-learning baseline.

Nothing is meta-trained (the outer gradient is zero, so any outer optimiser leaves
the meta-parameters as initialised). At test time each task starts from a freshly
initialised network (its own key) trained with SGD at `inner_lr` on the K support
points. Compare with MAML at many evaluation steps (e.g. `eval.steps=100`).
"""

import jax
import jax.numpy as jnp

from metalearn.algorithms.base import (
    Algorithm,
    make_init,
    make_predict,
    make_sgd_adapt_step,
)
from metalearn.inner import make_model_loss
from metalearn.models import Model
from metalearn.tasks import TaskFamily


def make_sgd_baseline(
    model: Model, task: TaskFamily, inner_lr: float, inner_steps: int
) -> Algorithm:
    """Builds the SGD-from-scratch baseline; `inner_steps` is unused (no training)."""
    del inner_steps
    loss_fn = make_model_loss(model, task.loss)
    init = make_init(model, task)

    def meta_grad(meta_params, model_state, tasks):
        # Monitoring only: the untrained network's query loss; no learning signal.
        losses, _ = jax.vmap(loss_fn, in_axes=(None, None, 0, 0))(
            meta_params, model_state, tasks.query_inputs, tasks.query_targets
        )
        return losses.mean(), jax.tree.map(jnp.zeros_like, meta_params), model_state

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
