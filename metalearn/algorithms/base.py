"""The one interface every meta-learning algorithm implements.

Like optax's `GradientTransformation`, an algorithm is a `NamedTuple` of pure
functions built by a `make_<algo>(...)` factory. The trainer only calls `init` and
`meta_grad`; the evaluation protocol only calls `adapt_init`, `adapt_step` and
`predict`. Nothing algorithm-specific lives outside the algorithm's own module.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metalearn.inner import LossFn, make_sgd_step
from metalearn.models import Model, ModelState, Params
from metalearn.tasks import TaskBatch, TaskFamily

MetaParams = Any  # what the outer optimiser updates: a pytree of arrays


class Algorithm(NamedTuple):
    """A meta-learning algorithm as pure functions.

    Attributes:
        name: short name, used as the W&B job type.
        init: `key -> (meta_params, model_state)`.
        meta_grad: `(meta_params, model_state, tasks) -> (meta_loss, grads,
            model_state)` for `tasks` with a leading task axis `[T, ...]`; `grads`
            is shaped like `meta_params` and is fed to the outer optimiser.
        adapt_init: `(meta_params, key) -> params`, the weights a new task starts
            from before any adaptation step.
        adapt_step: `(meta_params, params, model_state, inputs, targets) -> (params,
            model_state)`, one adaptation step on a support set `[K, ...]`.
        predict: `(params, model_state, inputs) -> predictions`.
    """

    name: str
    init: Callable[[jax.Array], tuple[MetaParams, ModelState]]
    meta_grad: Callable[
        [MetaParams, ModelState, TaskBatch], tuple[jax.Array, MetaParams, ModelState]
    ]
    adapt_init: Callable[[MetaParams, jax.Array], Params]
    adapt_step: Callable[
        [MetaParams, Params, ModelState, jax.Array, jax.Array],
        tuple[Params, ModelState],
    ]
    predict: Callable[[Params, ModelState, jax.Array], jax.Array]


TaskObjective = Callable[
    [MetaParams, ModelState, TaskBatch], tuple[jax.Array, ModelState]
]


def make_batched_meta_grad(task_objective: TaskObjective) -> Callable:
    """Averages a per-task objective over a task batch with `vmap`; differentiates it.

    Args:
        task_objective: `(meta_params, model_state, task) -> (loss, model_state)` for
            one task.

    Returns:
        `(meta_params, model_state, tasks [T, ...]) -> (mean loss, grads,
        model_state averaged over tasks)`.
    """

    def batch_objective(meta_params, model_state, tasks):
        losses, states = jax.vmap(task_objective, in_axes=(None, None, 0))(
            meta_params, model_state, tasks
        )
        return jnp.mean(losses), mean_over_tasks(states)

    value_and_grad = jax.value_and_grad(batch_objective, has_aux=True)

    def meta_grad(meta_params, model_state, tasks):
        (loss, model_state), grads = value_and_grad(meta_params, model_state, tasks)
        return loss, grads, model_state

    return meta_grad


def make_init(model: Model, task: TaskFamily) -> Callable:
    """`key -> (params, model_state)` for `model` on `task`'s inputs."""
    sample_inputs = jnp.zeros((1, *task.input_shape))

    def init(key):
        return model.init(key, sample_inputs)

    return init


def make_predict(model: Model) -> Callable:
    """`(params, model_state, inputs) -> predictions`, batch statistics as in training
    (transductive, the MAML reference code's choice for BatchNorm)."""

    def predict(params, model_state, inputs):
        return model.apply(params, model_state, inputs, True)[0]

    return predict


def mean_over_tasks(tree):
    """Averages every leaf over its leading task axis."""
    return jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), tree)


def start_from_meta_params(meta_params: MetaParams, key: jax.Array) -> Params:
    """`adapt_init` of algorithms whose meta-parameters are the initial weights."""
    del key  # every task starts from the same, meta-learned weights
    return meta_params


def make_sgd_adapt_step(loss_fn: LossFn, learning_rate: float) -> Callable:
    """`adapt_step` that takes one plain SGD step at `learning_rate`."""
    step = make_sgd_step(loss_fn)

    def adapt_step(meta_params, params, model_state, inputs, targets):
        del meta_params
        params, model_state, _ = step(
            params, learning_rate, model_state, inputs, targets
        )
        return params, model_state

    return adapt_step
