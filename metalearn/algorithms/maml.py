"""MAML: Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), and the
options of MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019).

The meta-parameters are a network's initial weights. For each task, `inner_steps`
SGD steps at `inner_lr` on the support set adapt them; the meta-loss is the query
loss of the adapted weights, averaged over the task batch (one task: the tutorial's
"MAML"; several, vmapped: its "batched MAML"). The outer gradient differentiates
through the inner loop (second order) unless `first_order=True` (FOMAML, §5.2),
which treats the inner gradients as constants.

BatchNorm's offset (and scale) are meta-learned and left alone by the inner loop
(`adapt_batch_norm=False`), as in the MAML reference code (cbfinn/maml), whose
BatchNorm variables live outside the weights its inner loop differentiates;
`adapt_batch_norm=True` adapts them with the other weights, as learn2learn does.

MAML++'s options, each its own switch: the multi-step loss (`multi_step_loss`),
learned per-layer per-step inner learning rates (`learned_lrs`), per-step
BatchNorm weights (`model.batch_norm=per_step`), derivative-order annealing
(`first_order_epochs`); its cosine-annealed outer learning rate is
`optimizer.schedule=cosine`. MAML++ counts training in epochs of `epoch_steps`
meta-steps.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from metalearn.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    make_batched_meta_grad,
    make_init,
    make_partial_adapt,
    make_predict,
    merge_head,
    query_of,
    split_by,
    start_from_meta_params,
)
from metalearn.inner import (
    make_model_loss,
    make_query_loss,
    make_stepwise_adapt,
)
from metalearn.models import Model, Params
from metalearn.registry import check_option
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
    multi_step_loss: bool = False,
    multi_step_loss_epochs: int = 10,
    learned_lrs: bool = False,
    first_order_epochs: int = 0,
    epoch_steps: int = 500,
    adapt_batch_norm: bool = False,
) -> Algorithm:
    """Builds (first-order) MAML for `model` on `task`, with MAML++'s options.

    Args:
        model: the network whose initial weights are meta-learned.
        task: the meta-training task family (its loss is the inner and outer loss).
        inner_lr: the inner SGD step size (`inner.lr`).
        inner_steps: inner SGD steps during meta-training (`inner.steps`).
        first_order: drop second derivatives (first-order MAML).
        remat: recompute each inner step's activations in the backward pass (less
            memory for long inner loops, about one more forward pass per step).
        multi_step_loss: MAML++'s multi-step loss: the meta-loss is a weighted sum
            of the query loss after every inner step; the weights start equal and
            move toward the last step over `multi_step_loss_epochs`, after which
            only the last step counts.
        multi_step_loss_epochs: epochs (of `epoch_steps` meta-steps) over which the
            multi-step loss anneals to the last step (MAML++: 10).
        learned_lrs: MAML++'s LSLR: one inner learning rate per parameter array
            and inner step, starting at `inner.lr`, meta-learned (not for
            per-step BatchNorm weights, which the inner loop leaves alone).
        first_order_epochs: MAML++'s derivative-order annealing: first order for
            the first `first_order_epochs` epochs, then second order (0: second
            order throughout; MAML++'s `first_order_to_second_order_epoch` N is
            N + 1 here).
        epoch_steps: meta-steps in an epoch, the unit of `multi_step_loss_epochs`
            and `first_order_epochs` (MAML++: 500).
        adapt_batch_norm: also adapt BatchNorm's offset (and scale) in the inner
            loop, as learn2learn does; false (the MAML reference code): they are
            meta-learned only. Per-step BatchNorm is never adapted.
    """
    check_option(epoch_steps >= 1, "epoch_steps", epoch_steps, "it must be >= 1")
    check_option(
        multi_step_loss_epochs >= 1,
        "multi_step_loss_epochs",
        multi_step_loss_epochs,
        "it must be >= 1",
    )
    check_option(
        first_order_epochs >= 0, "first_order_epochs", first_order_epochs, ">= 0"
    )
    check_option(
        not (first_order and first_order_epochs),
        "first_order_epochs",
        first_order_epochs,
        "it must be 0 with algo.first_order=true (first order throughout)",
    )
    per_step = model.batch_norm == "per_step"
    if not (multi_step_loss or learned_lrs or first_order_epochs or per_step):
        return _make_plain_maml(
            model, task, inner_lr, inner_steps, first_order, remat, adapt_batch_norm
        )
    return _make_mamlpp(
        model,
        task,
        inner_lr,
        inner_steps,
        first_order=first_order,
        remat=remat,
        msl_epochs=multi_step_loss_epochs if multi_step_loss else 0,
        learned_lrs=learned_lrs,
        first_order_steps=first_order_epochs * epoch_steps,
        epoch_steps=epoch_steps,
        adapt_batch_norm=adapt_batch_norm,
    )


def _make_plain_maml(
    model: Model,
    task: TaskFamily,
    inner_lr: float,
    inner_steps: int,
    first_order: bool,
    remat: bool,
    adapt_batch_norm: bool,
) -> Algorithm:
    return make_partial_maml(
        "fomaml" if first_order else "maml",
        model,
        task,
        fixed_in_inner_loop(model, adapt_batch_norm),
        inner_lr,
        inner_steps,
        first_order,
        remat,
    )


def make_partial_maml(
    name: str,
    model: Model,
    task: TaskFamily,
    fixed_mask: Callable[[Params], Any],
    inner_lr: float,
    inner_steps: int,
    first_order: bool,
    remat: bool,
) -> Algorithm:
    """MAML whose inner loop leaves alone the leaves that `fixed_mask(params)`
    marks (they are meta-learned in the outer loop only): plain MAML's BatchNorm
    parameters, ANIL's whole body. The same inner step adapts at evaluation."""
    loss_fn = make_model_loss(model, task.loss)
    query_loss = make_query_loss(model, task.loss)
    adapt = make_partial_adapt(fixed_mask, loss_fn, inner_steps, first_order, remat)
    adapt_one_step = make_partial_adapt(fixed_mask, loss_fn, 1, first_order=True)

    def adapt_step(meta_params, params, model_state, inputs, targets):
        del meta_params
        return adapt_one_step(params, inner_lr, model_state, inputs, targets)

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

    return Algorithm(
        name=name,
        init=make_init(model, task),
        meta_grad=make_batched_meta_grad(task_objective, task),
        adapt_init=start_from_meta_params,
        adapt_step=adapt_step,
        predict=make_predict(model),
    )


def fixed_in_inner_loop(model: Model, adapt_batch_norm: bool):
    """`params -> bool pytree` marking what the inner loop leaves alone: the
    BatchNorm parameters unless `adapt_batch_norm`, else nothing."""
    if not adapt_batch_norm:
        return model.is_batch_norm
    return lambda params: jax.tree.map(lambda _: False, params)


def multi_step_loss_weights(
    step: jax.Array | int, num_steps: int, anneal_epochs: int, epoch_steps: int
) -> jax.Array:
    """MAML++'s per-step loss weights `[num_steps]` at meta-step `step`.

    In epoch `e = step // epoch_steps`, every step but the last weighs
    `max(1/S - e/(S * anneal_epochs), 0.03/S)` and the last `min(1/S + e(S-1)/(S *
    anneal_epochs), 1 - 0.03(S-1)/S)` (they sum to 1); from epoch
    `anneal_epochs` on, only the last step counts (MAML++ then stops computing
    the other steps' losses). Traceable: `step` may be a traced integer.
    """
    epoch = jnp.asarray(step) // epoch_steps
    decay = 1.0 / num_steps / anneal_epochs
    floor = 0.03 / num_steps
    early = jnp.maximum(1.0 / num_steps - epoch * decay, floor)
    last = jnp.minimum(
        1.0 / num_steps + epoch * (num_steps - 1) * decay,
        1.0 - (num_steps - 1) * floor,
    )
    annealing = jnp.append(jnp.full((num_steps - 1,), early), last)
    final_only = jnp.zeros((num_steps,)).at[-1].set(1.0)
    return jnp.where(epoch < anneal_epochs, annealing, final_only)


def tile_per_step(model: Model, params: Params, num_steps: int) -> Params:
    """`params` with each BatchNorm parameter repeated `[num_steps, ...]` (one copy
    per inner step: MAML++'s per-step BatchNorm weights and biases)."""
    return jax.tree.map(
        lambda is_bn, p: jnp.broadcast_to(p, (num_steps, *p.shape)) if is_bn else p,
        model.is_batch_norm(params),
        params,
    )


def _make_mamlpp(
    model: Model,
    task: TaskFamily,
    inner_lr: float,
    inner_steps: int,
    *,
    first_order: bool,
    remat: bool,
    msl_epochs: int,
    learned_lrs: bool,
    first_order_steps: int,
    epoch_steps: int,
    adapt_batch_norm: bool,
) -> Algorithm:
    """MAML with MAML++'s options: an inner loop that knows its step index.

    The inner loop adapts every weight but BatchNorm's, which are meta-learned
    only (MAML++'s `enable_inner_loop_optimizable_bn_params` is false; with
    `adapt_batch_norm` and without per-step BatchNorm, it adapts them too): the
    meta-parameters split into `(adapted, fixed)` trees.
    """
    per_step = model.batch_norm == "per_step"
    loss_fn = make_model_loss(model, task.loss)
    query_loss = make_query_loss(model, task.loss)
    init_weights = make_init(model, task)
    last = inner_steps - 1

    def at_step(params: Params, i) -> Params:
        """The model's weights at inner step `i` (its row of per-step leaves)."""
        if not per_step:
            return params
        return jax.tree.map(
            lambda is_bn, p: p[i] if is_bn else p, model.is_batch_norm(params), params
        )

    def weights_of(meta_params):
        return meta_params["params"] if learned_lrs else meta_params

    fixed = fixed_in_inner_loop(model, adapt_batch_norm and not per_step)

    def split(params: Params) -> tuple[Params, Params]:
        """(what the inner loop adapts, what it leaves alone)."""
        return split_by(fixed(params), params)

    def rates_of(meta_params):
        if learned_lrs:
            return meta_params["lrs"]
        lr = jnp.full((inner_steps,), inner_lr)
        return jax.tree.map(lambda _: lr, split(weights_of(meta_params))[0])

    def init(key):
        params, model_state = init_weights(key)
        if per_step:
            params = tile_per_step(model, params, inner_steps)
        if not learned_lrs:
            return params, model_state
        rate = jnp.full((inner_steps,), inner_lr)
        lrs = jax.tree.map(lambda _: rate, split(params)[0])
        return {"params": params, "lrs": lrs}, model_state

    def make_task_objective(first_order: bool):
        def task_objective(meta_params, model_state, batch: TaskBatch, step):
            adapted, fixed = split(weights_of(meta_params))

            def step_loss(adapted, state, inputs, targets, i):
                weights = at_step(merge_head(adapted, fixed), i)
                return loss_fn(weights, state, inputs, targets)

            def query_after(adapted, state, i):
                weights = at_step(merge_head(adapted, fixed), i)
                return query_loss(weights, state, *query_of(batch))

            adapt = make_stepwise_adapt(
                step_loss,
                inner_steps,
                first_order,
                remat,
                query_after if msl_epochs else None,
            )
            adapted, state, per_step_query = adapt(
                adapted,
                rates_of(meta_params),
                model_state,
                batch.support_inputs,
                batch.support_targets,
            )
            if not msl_epochs:
                return query_after(adapted, state, last)
            losses, (states, predictions) = per_step_query
            weights = multi_step_loss_weights(
                step, inner_steps, msl_epochs, epoch_steps
            )
            final_state = jax.tree.map(lambda s: s[-1], states)
            return jnp.dot(weights, losses), (final_state, predictions[-1])

        return task_objective

    second = make_batched_meta_grad(make_task_objective(first_order), task)
    meta_grad = second
    if first_order_steps:
        first = make_batched_meta_grad(make_task_objective(True), task)

        def meta_grad(meta_params, model_state, tasks, step=0):
            return jax.lax.cond(
                step < first_order_steps,
                first,
                second,
                meta_params,
                model_state,
                tasks,
                step,
            )

    def adapt_init(meta_params, key):
        """The adaptation state: the weights and the inner steps taken."""
        del key
        return {"params": weights_of(meta_params), "step": jnp.zeros((), jnp.int32)}

    def adapt_step(meta_params, adapted, model_state, inputs, targets):
        """One inner step with the current step's weights and rate; past
        `inner_steps` (a longer evaluation) the last step's are reused."""
        i = jnp.minimum(adapted["step"], last)
        trained, fixed = split(adapted["params"])

        def step_loss(trained, state):
            weights = at_step(merge_head(trained, fixed), i)
            return loss_fn(weights, state, inputs, targets)

        (_, (state, _)), grads = jax.value_and_grad(step_loss, has_aux=True)(
            trained, model_state
        )
        rates = jax.tree.map(lambda lr: lr[i], rates_of(meta_params))
        trained = jax.tree.map(lambda p, lr, g: p - lr * g, trained, rates, grads)
        params = merge_head(trained, fixed)
        return {"params": params, "step": adapted["step"] + 1}, state

    plain_predict = make_predict(model)

    def predict(adapted, model_state, inputs, support_inputs=None):
        """After `n` steps, the weights of step `n - 1` (the row the query uses
        in training after that step; step 0's before any)."""
        i = jnp.clip(adapted["step"] - 1, 0, last)
        weights = at_step(adapted["params"], i)
        return plain_predict(weights, model_state, inputs, support_inputs)

    return Algorithm(
        name="fomaml" if first_order else "maml",
        init=init,
        meta_grad=meta_grad,
        adapt_init=adapt_init,
        adapt_step=adapt_step,
        predict=predict,
    )
