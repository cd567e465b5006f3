"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

The meta-parameters are an embedding network: the model's body, without its head
(`model.embed` on `model.body` of its weights; conv4's four conv blocks). A task's
"adapted parameters" are its prototypes, the mean embedding of each class's support
examples; a query's logit for a class is the negative squared Euclidean distance
of its embedding to that class's prototype. The meta-loss is the task family's
loss of these logits on the query set, differentiated through the prototypes.

There is no inner gradient step: `inner.lr` and `inner.steps` are unused, and
adaptation is the one `adapt_step` that computes the prototypes (`adapts_once`),
so evaluation reports the same score at every step 0..`eval.steps`.
Classification only: a regression task has no classes to average.
"""

import jax
import jax.numpy as jnp

from metalearn.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    make_batched_meta_grad,
)
from metalearn.models import Model, ModelState, Params
from metalearn.tasks import TaskBatch, TaskFamily


def prototypes(features: jax.Array, labels: jax.Array, ways: int) -> jax.Array:
    """Mean of each class's `features [M, D]` (int `labels [M]` in 0..ways-1) ->
    `[ways, D]`."""
    one_hot = jax.nn.one_hot(labels, ways, dtype=features.dtype)  # [M, ways]
    return (one_hot.T @ features) / one_hot.sum(axis=0)[:, None]


def negative_squared_distances(features: jax.Array, centres: jax.Array) -> jax.Array:
    """Logits `[Q, ways]`: `-||features[q] - centres[c]||^2` of `features [Q, D]`
    and `centres [ways, D]`."""
    return -jnp.sum(jnp.square(features[:, None, :] - centres[None]), axis=-1)


@ALGORITHMS.register("protonet", classification_only=True)
def make_protonet(
    model: Model, task: TaskFamily, inner_lr: float, inner_steps: int
) -> Algorithm:
    """Builds Prototypical Networks on `model`'s body; `inner_lr` and `inner_steps`
    are unused (no inner gradient steps).

    Args:
        model: the network; its `embed` (the body, without the head) is
            meta-learned.
        task: the meta-training task family, classification (`output_size` ways).
        inner_lr: unused.
        inner_steps: unused.
    """
    del inner_lr, inner_steps
    if task.num_classes is None:
        raise ValueError(
            f"protonet classifies; task {task.name} is regression (no classes)"
        )
    ways = task.output_size
    sample_inputs = jnp.zeros((1, *task.input_shape))

    def init(key):
        params, model_state = model.init(key, sample_inputs)
        return model.body(params), model_state

    def embedding_size() -> int:
        def embed_from(key):
            net, model_state = init(key)
            return model.embed(net, model_state, sample_inputs)

        return jax.eval_shape(embed_from, jax.random.key(0)).shape[-1]

    def adapt(net: Params, model_state: ModelState, inputs, targets) -> Params:
        centres = prototypes(model.embed(net, model_state, inputs), targets, ways)
        return {"net": net, "prototypes": centres}

    def predict(params, model_state, inputs, support_inputs=None):
        del support_inputs  # query and support are embedded with their own statistics
        features = model.embed(params["net"], model_state, inputs)
        return negative_squared_distances(features, params["prototypes"])

    def task_objective(meta_params, model_state, batch: TaskBatch, step):
        del step  # the same objective at every meta-step
        params = adapt(
            meta_params, model_state, batch.support_inputs, batch.support_targets
        )
        logits = predict(params, model_state, batch.query_inputs)
        return task.loss(logits, batch.query_targets), (model_state, logits)

    def adapt_init(meta_params, key):
        del key  # no prototypes before the support set is seen
        return {"net": meta_params, "prototypes": jnp.zeros((ways, features))}

    def adapt_step(meta_params, params, model_state, inputs, targets):
        del params  # the prototypes depend on the support set alone
        return adapt(meta_params, model_state, inputs, targets), model_state

    features = embedding_size()
    return Algorithm(
        name="protonet",
        init=init,
        meta_grad=make_batched_meta_grad(task_objective, task),
        adapt_init=adapt_init,
        adapt_step=adapt_step,
        predict=predict,
        adapts_once=True,
    )
