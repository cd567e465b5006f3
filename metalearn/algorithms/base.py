"""The one interface every meta-learning algorithm implements.

Like optax's `GradientTransformation`, an algorithm is a `NamedTuple` of pure
functions built by a `make_<algo>(model, task, inner_lr, inner_steps, *, options)`
factory registered in `ALGORITHMS`. The trainer only calls `init` and `meta_grad`;
the evaluation protocol only calls `adapt_init`, `adapt_step` and `predict` (and
reads `adapts_once`). Nothing algorithm-specific lives outside the algorithm's own
module.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from metalearn.inner import LossFn, make_adapt, make_sgd_step
from metalearn.models import Model, ModelState, Params
from metalearn.registry import Registry
from metalearn.tasks import TaskBatch, TaskFamily

MetaParams = Any  # what the outer optimiser updates: a pytree of arrays
Metrics = dict[str, jax.Array]  # name -> scalar

ALGORITHMS = Registry("algo")


class MetaGradient(NamedTuple):
    """What one meta-step's gradient computation returns."""

    loss: jax.Array  # [] the meta-loss, averaged over the task batch
    grads: MetaParams  # shaped like the meta-parameters; fed to the outer optimiser
    model_state: ModelState  # the model state after the step (mean over tasks)
    metrics: Metrics  # the task family's metrics on the query sets (mean over tasks)


class InitFn(Protocol):
    def __call__(self, key: jax.Array) -> tuple[MetaParams, ModelState]: ...


class MetaGradFn(Protocol):
    def __call__(
        self,
        meta_params: MetaParams,
        model_state: ModelState,
        tasks: TaskBatch,
        step: jax.Array | int = 0,
    ) -> MetaGradient: ...


class AdaptInitFn(Protocol):
    def __call__(self, meta_params: MetaParams, key: jax.Array) -> Params: ...


class AdaptStepFn(Protocol):
    def __call__(
        self,
        meta_params: MetaParams,
        params: Params,
        model_state: ModelState,
        inputs: jax.Array,
        targets: jax.Array,
    ) -> tuple[Params, ModelState]: ...


class PredictFn(Protocol):
    def __call__(
        self,
        params: Params,
        model_state: ModelState,
        inputs: jax.Array,
        support_inputs: jax.Array | None = None,
    ) -> jax.Array: ...


class Algorithm(NamedTuple):
    """A meta-learning algorithm as pure functions.

    Attributes:
        name: short name, used as the W&B job type.
        init: `key -> (meta_params, model_state)`.
        meta_grad: `(meta_params, model_state, tasks, step) -> MetaGradient` for
            `tasks` with a leading task axis `[T, ...]`; `step` is the meta-step
            (for schedules that change with training).
        adapt_init: `(meta_params, key) -> params`, the weights a new task starts
            from before any adaptation step.
        adapt_step: `(meta_params, params, model_state, inputs, targets) -> (params,
            model_state)`, one adaptation step on a support set `[K, ...]`.
        predict: `(params, model_state, inputs, support_inputs=None) ->
            predictions`; `support_inputs` is the task's support set, which
            non-transductive BatchNorm (`model.batch_norm=support`) normalises with.
        adapts_once: True when one `adapt_step` is the whole adaptation and more
            steps would change nothing (ProtoNets: it computes the support set's
            prototypes). Evaluation then takes it once and reports its score at
            every step 0..`eval.steps`, so the curve is flat instead of showing
            a step 0 that never saw the support set.
        pools_tasks: True when `meta_grad` pools the tasks' examples into one
            batch (pretrained: supervised training whose BatchNorm normalises
            with the whole batch), so its result depends on which tasks are
            computed together: the trainer then never splits a device's tasks
            into chunks (`train.tasks_at_once` does not apply).
    """

    name: str
    init: InitFn
    meta_grad: MetaGradFn
    adapt_init: AdaptInitFn
    adapt_step: AdaptStepFn
    predict: PredictFn
    adapts_once: bool = False
    pools_tasks: bool = False


class TaskObjective(Protocol):
    """One task's meta-objective: `(meta_params, model_state, task, step) -> (loss,
    (model_state, query predictions))`; `step` is the meta-step (for objectives
    that change with training, such as MAML++'s multi-step loss)."""

    def __call__(
        self,
        meta_params: MetaParams,
        model_state: ModelState,
        task: TaskBatch,
        step: jax.Array | int,
        /,
    ) -> tuple[jax.Array, tuple[ModelState, jax.Array]]: ...


def query_metrics(task: TaskFamily) -> Callable[[jax.Array, jax.Array], Metrics]:
    """`(predictions, targets) -> metrics`: the family's metrics other than its
    loss (the meta-loss already reports that)."""
    kept = {name: m.fn for name, m in task.metrics.items() if m.fn is not task.loss}

    def metrics(predictions: jax.Array, targets: jax.Array) -> Metrics:
        return {name: fn(predictions, targets) for name, fn in kept.items()}

    return metrics


def make_batched_meta_grad(
    task_objective: TaskObjective, task: TaskFamily
) -> MetaGradFn:
    """Averages a per-task objective over a task batch with `vmap`; differentiates it.

    Returns:
        `(meta_params, model_state, tasks [T, ...], step) -> MetaGradient`: the mean
        loss, its gradient, the model state and the query metrics averaged over
        tasks.
    """
    metrics_of = query_metrics(task)

    def one_task(meta_params, model_state, batch: TaskBatch, step):
        loss, (state, predictions) = task_objective(
            meta_params, model_state, batch, step
        )
        return loss, (state, metrics_of(predictions, batch.query_targets))

    def batch_objective(meta_params, model_state, tasks, step):
        num_tasks = jax.tree.leaves(tasks)[0].shape[0]
        losses, aux = jax.vmap(one_task, in_axes=(0, None, 0, None))(
            tile(meta_params, num_tasks), model_state, tasks, step
        )
        return jnp.mean(losses), mean_over_tasks(aux)

    value_and_grad = jax.value_and_grad(batch_objective, has_aux=True)

    def meta_grad(meta_params, model_state, tasks, step=0):
        (loss, (state, metrics)), grads = value_and_grad(
            meta_params, model_state, tasks, step
        )
        return MetaGradient(loss, grads, state, metrics)

    return meta_grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def tile(tree, count: int):
    """`tree` repeated `count` times along a new leading axis. Its gradient sums
    over that axis as a product with ones: XLA:CPU runs a sum over a leading
    axis (what `vmap` makes of a shared argument's gradient) many times slower.
    """
    return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (count, *leaf.shape)), tree)


def _tile_forward(tree, count):
    return tile(tree, count), None


def _tile_backward(count, _, cotangent):
    ones = jnp.ones((count,))
    return (jax.tree.map(lambda g: jnp.tensordot(ones, g, axes=1), cotangent),)


tile.defvjp(_tile_forward, _tile_backward)


def make_init(model: Model, task: TaskFamily) -> InitFn:
    """`key -> (params, model_state)` for `model` on `task`'s inputs."""
    sample_inputs = jnp.zeros((1, *task.input_shape))

    def init(key):
        return model.init(key, sample_inputs)

    return init


def make_predict(model: Model) -> PredictFn:
    """`(params, model_state, inputs, support_inputs=None) -> predictions`, with
    batch statistics as in training (transductive, the MAML reference code's choice
    for BatchNorm), or for `model.batch_norm == "support"` with the statistics of
    `support_inputs` (else of the last support set the state has seen)."""
    support_statistics = model.batch_norm == "support"

    def predict(params, model_state, inputs, support_inputs=None):
        if not support_statistics:
            return model.apply(params, model_state, inputs, True)[0]
        if support_inputs is not None:
            model_state = model.apply(params, model_state, support_inputs, True)[1]
        return model.apply(params, model_state, inputs, False)[0]

    return predict


def query_of(
    batch: TaskBatch,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(support_inputs, query_inputs, query_targets)`: what a query loss
    (`inner.make_query_loss`) takes of a task."""
    return batch.support_inputs, batch.query_inputs, batch.query_targets


def mean_over_tasks(tree):
    """Averages every leaf over its leading task axis."""
    return jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), tree)


def start_from_meta_params(meta_params: MetaParams, key: jax.Array) -> Params:
    """`adapt_init` of algorithms whose meta-parameters are the initial weights."""
    del key  # every task starts from the same, meta-learned weights
    return meta_params


def make_sgd_adapt_step(loss_fn: LossFn, learning_rate: float) -> AdaptStepFn:
    """`adapt_step` that takes one plain SGD step at `learning_rate`."""
    step = make_sgd_step(loss_fn)

    def adapt_step(meta_params, params, model_state, inputs, targets):
        del meta_params
        params, model_state, _ = step(
            params, learning_rate, model_state, inputs, targets
        )
        return params, model_state

    return adapt_step


def metrics_mean(metrics: Mapping[str, jax.Array]) -> Metrics:
    """Averages per-task metrics `[T]` over tasks."""
    return {name: jnp.mean(values) for name, values in metrics.items()}


def split_head(model: Model, params: Params) -> tuple[Params, Params]:
    """(body, head): the same tree with `None` where the other part's leaves are."""
    return split_by(model.head(params), params)


def split_by(mask: Any, params: Params) -> tuple[Params, Params]:
    """(unmarked, marked) by a bool pytree `mask` shaped like `params`: the same
    tree with `None` where the other part's leaves are (`merge_head` joins them)."""
    unmarked = jax.tree.map(lambda m, p: None if m else p, mask, params)
    marked = jax.tree.map(lambda m, p: p if m else None, mask, params)
    return unmarked, marked


def merge_head(body: Params, head: Params) -> Params:
    """Inverse of `split_head`: the body's leaves where it has them, else the head's."""
    return jax.tree.map(
        lambda b, h: h if b is None else b, body, head, is_leaf=lambda n: n is None
    )


def make_partial_adapt(
    fixed_mask: Callable[[Params], Any],
    loss_fn: LossFn,
    num_steps: int,
    first_order: bool = False,
    remat: bool = False,
) -> Callable:
    """`make_adapt` that changes only the leaves `fixed_mask(params)` leaves
    unmarked: `(params, lr, state, inputs, targets) -> (params, state)`. The marked
    leaves are held fixed and get no inner gradient at all."""

    def adapt(params, learning_rate, model_state, inputs, targets):
        trained, fixed = split_by(fixed_mask(params), params)

        def partial_loss(trained, state, inputs, targets):
            return loss_fn(merge_head(trained, fixed), state, inputs, targets)

        adapt_trained = make_adapt(partial_loss, num_steps, first_order, remat)
        trained, model_state = adapt_trained(
            trained, learning_rate, model_state, inputs, targets
        )
        return merge_head(trained, fixed), model_state

    return adapt


def make_head_adapt(
    model: Model,
    loss_fn: LossFn,
    num_steps: int,
    first_order: bool = False,
    remat: bool = False,
) -> Callable:
    """`make_adapt` that changes only the model's head: `(params, lr, state,
    inputs, targets) -> (params, state)`; the body is held fixed."""
    return make_partial_adapt(body_of(model), loss_fn, num_steps, first_order, remat)


def body_of(model: Model) -> Callable[[Params], Any]:
    """`params -> bool pytree` marking everything but the model's head."""

    def body_mask(params: Params) -> Any:
        return jax.tree.map(lambda is_head: not is_head, model.head(params))

    return body_mask
