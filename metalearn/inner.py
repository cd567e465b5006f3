"""The differentiable inner loop: SGD on a task's support set, as a `lax.scan`.

Compile time does not grow with the number of steps, and the whole loop is
differentiable, so an outer gradient through it is second-order MAML. With
`first_order=True` the inner gradients are treated as constants (first-order MAML).
"""

from collections.abc import Callable
from typing import Any

import jax

from metalearn.models import Model, ModelState, Params

# (params, state, inputs, targets) -> (loss, (new state, predictions))
LossFn = Callable[
    [Params, ModelState, jax.Array, jax.Array],
    tuple[jax.Array, tuple[ModelState, jax.Array]],
]
StepFn = Callable[
    [Params, Any, ModelState, jax.Array, jax.Array],
    tuple[Params, ModelState, jax.Array],
]


def make_model_loss(model: Model, task_loss: Callable) -> LossFn:
    """`(params, state, inputs, targets) -> (loss, (new_state, predictions))` of a
    model on a task's examples."""

    def loss(params, state, inputs, targets):
        predictions, state = model.apply(params, state, inputs, True)
        return task_loss(predictions, targets), (state, predictions)

    return loss


def make_sgd_step(loss_fn: LossFn, first_order: bool = False) -> StepFn:
    """One SGD step `(params, lr, state, inputs, targets) -> (params, state, loss)`.

    `lr` is a scalar or a pytree shaped like `params` (per-parameter rates, as in
    Meta-SGD); `loss` is the loss before the step.
    """
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params, learning_rate, state, inputs, targets):
        (loss, (state, _)), grads = value_and_grad(params, state, inputs, targets)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        if not _same_structure(learning_rate, params):
            learning_rate = jax.tree.map(lambda _: learning_rate, params)
        params = jax.tree.map(lambda p, lr, g: p - lr * g, params, learning_rate, grads)
        return params, state, loss

    return step


def _same_structure(tree: Any, other: Any) -> bool:
    structure: Any = jax.tree.structure(tree)  # PyTreeDef's stub lacks __eq__
    return bool(structure == jax.tree.structure(other))


def make_adapt(
    loss_fn: LossFn, num_steps: int, first_order: bool = False, remat: bool = False
) -> Callable[[Params, Any, ModelState, jax.Array, jax.Array], tuple[Params, Any]]:
    """`num_steps` SGD steps: `(params, lr, state, inputs, targets) -> (params, state)`.

    `num_steps` is closed over because it fixes the scan's length. With `remat`,
    each step's activations are recomputed in the backward pass instead of stored
    (`jax.checkpoint` on the scan body): a differentiated loop then keeps only each
    step's weights, at the price of about one more forward pass per step.
    """
    step = make_sgd_step(loss_fn, first_order)

    def adapt(params, learning_rate, state, inputs, targets):
        def body(carry, _):
            params, state = carry
            params, state, loss = step(params, learning_rate, state, inputs, targets)
            return (params, state), loss

        (params, state), _ = jax.lax.scan(
            jax.checkpoint(body) if remat else body,
            (params, state),
            None,
            length=num_steps,
        )
        return params, state

    return adapt
