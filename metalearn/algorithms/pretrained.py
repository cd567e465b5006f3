"""Pretraining on all tasks, then fine-tuning: the papers' transfer baseline.

Regression (the MAML paper's "pretrained", Finn et al. 2017, §5.1): one network is
trained jointly on every task's points (support and query, all tasks of the batch
pooled: plain regression on the task mixture), with no inner loop. At test time it
is fine-tuned with SGD at `inner_lr` on the support points.

Classification ("Baseline" of Chen et al. 2019, "A Closer Look at Few-shot
Classification"): ordinary supervised training of the network's body on every
meta-training class at once (each task's examples labelled with their family-wide
class, e.g. character and rotation), through one big linear classifier over all
classes. At test time the N-way head starts at zero (a fresh classifier) and is
fine-tuned with SGD at `inner_lr` on the support set; `finetune="all"` trains the
body too.
"""

from typing import Literal

import jax
import jax.numpy as jnp

from metalearn.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    MetaGradient,
    make_head_adapt,
    make_init,
    make_predict,
    make_sgd_adapt_step,
    start_from_meta_params,
)
from metalearn.inner import make_model_loss
from metalearn.metrics import accuracy, cross_entropy
from metalearn.models import Model
from metalearn.tasks import TaskBatch, TaskFamily


@ALGORITHMS.register("pretrained")
def make_pretrained(
    model: Model,
    task: TaskFamily,
    inner_lr: float,
    inner_steps: int,
    *,
    finetune: Literal["head", "all"] = "head",
) -> Algorithm:
    """Builds the pretrain-then-fine-tune baseline; `inner_steps` is unused.

    Args:
        model: the network.
        task: the meta-training task family.
        inner_lr: the fine-tuning SGD step size at test time.
        inner_steps: unused (no inner loop in training).
        finetune: classification only: fine-tune the fresh `head` alone (Chen et
            al.'s Baseline) or `all` the network's weights. Regression always
            fine-tunes all weights, as the MAML paper.
    """
    del inner_steps
    if task.num_classes is None:
        return _pooled_regression(model, task, inner_lr)
    return _supervised_classifier(model, task, inner_lr, finetune)


def _pooled(a: jax.Array) -> jax.Array:
    """`[T, M, ...] -> [T*M, ...]`: every task's examples as one batch."""
    return a.reshape(-1, *a.shape[2:])


def _all_examples(tasks: TaskBatch) -> tuple[jax.Array, jax.Array]:
    inputs = jnp.concatenate([tasks.support_inputs, tasks.query_inputs], axis=1)
    targets = jnp.concatenate([tasks.support_targets, tasks.query_targets], axis=1)
    return inputs, targets


def _pooled_regression(model: Model, task: TaskFamily, inner_lr: float) -> Algorithm:
    loss_fn = make_model_loss(model, task.loss)

    def pooled_loss(params, model_state, tasks):
        inputs, targets = _all_examples(tasks)
        loss, (state, _) = loss_fn(
            params, model_state, _pooled(inputs), _pooled(targets)
        )
        return loss, state

    value_and_grad = jax.value_and_grad(pooled_loss, has_aux=True)

    def meta_grad(meta_params, model_state, tasks, step=0):
        del step
        (loss, model_state), grads = value_and_grad(meta_params, model_state, tasks)
        return MetaGradient(loss, grads, model_state, {})

    return Algorithm(
        name="pretrained",
        init=make_init(model, task),
        meta_grad=meta_grad,
        adapt_init=start_from_meta_params,
        adapt_step=make_sgd_adapt_step(loss_fn, inner_lr),
        predict=make_predict(model),
        pools_tasks=True,
    )


def _supervised_classifier(
    model: Model, task: TaskFamily, inner_lr: float, finetune: str
) -> Algorithm:
    """Meta-parameters `{"net": the model's params, "classifier": {"w", "b"}}`."""
    loss_fn = make_model_loss(model, task.loss)
    init_net = make_init(model, task)

    def init(key):
        params, model_state = init_net(key)
        features = jax.eval_shape(
            model.embed, params, model_state, jnp.zeros((2, *task.input_shape))
        ).shape[-1]
        classifier = {
            "w": jnp.zeros((features, task.num_classes)),
            "b": jnp.zeros((task.num_classes,)),
        }
        return {"net": params, "classifier": classifier}, model_state

    def supervised_loss(meta_params, model_state, tasks):
        inputs, labels = _all_examples(tasks)
        # a task label indexes its task's classes: map it to the family-wide class
        labels = jnp.take_along_axis(tasks.classes, labels, axis=1)
        features = model.embed(meta_params["net"], model_state, _pooled(inputs))
        classifier = meta_params["classifier"]
        logits = features @ classifier["w"] + classifier["b"]
        labels = _pooled(labels)
        return cross_entropy(logits, labels), accuracy(logits, labels)

    value_and_grad = jax.value_and_grad(supervised_loss, has_aux=True)

    def meta_grad(meta_params, model_state, tasks, step=0):
        del step
        (loss, acc), grads = value_and_grad(meta_params, model_state, tasks)
        return MetaGradient(loss, grads, model_state, {"acc": acc})

    def adapt_init(meta_params, key):
        del key
        net = meta_params["net"]
        is_head = model.head(net)
        return jax.tree.map(lambda h, p: jnp.zeros_like(p) if h else p, is_head, net)

    if finetune == "head":
        adapt_head = make_head_adapt(model, loss_fn, 1, first_order=True)

        def adapt_step(meta_params, params, model_state, inputs, targets):
            del meta_params
            return adapt_head(params, inner_lr, model_state, inputs, targets)

    else:
        adapt_step = make_sgd_adapt_step(loss_fn, inner_lr)

    return Algorithm(
        name="pretrained",
        init=init,
        meta_grad=meta_grad,
        adapt_init=adapt_init,
        adapt_step=adapt_step,
        predict=make_predict(model),
        pools_tasks=True,
    )
