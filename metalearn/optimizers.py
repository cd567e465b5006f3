"""The outer (meta-) optimisers: optax transformations chosen by name.

Each factory registers in `OPTIMIZERS` and takes the outer learning rate, the
number of meta-steps (for learning-rate schedules) and its options. Every
optimiser can anneal its learning rate with an optax schedule (`schedule`).
"""

import math
from typing import Literal

import optax

from metalearn.registry import Registry, check_option

OPTIMIZERS = Registry("optimizer")
ScheduleName = Literal["constant", "cosine"]


def learning_rate_schedule(
    learning_rate: float, total_steps: int, schedule: ScheduleName, min_lr: float
) -> float | optax.Schedule:
    """The constant `learning_rate`, or optax's cosine decay from it to `min_lr`
    over `total_steps` (SGDR without restarts, as MAML++ anneals its meta-lr)."""
    check_option(min_lr >= 0, "min_lr", min_lr, "it must be >= 0")
    if schedule == "constant":
        return learning_rate
    check_option(min_lr <= learning_rate, "min_lr", min_lr, "it must be <= outer.lr")
    return optax.cosine_decay_schedule(
        learning_rate, total_steps, alpha=min_lr / learning_rate
    )


def _check_decay(name: str, value: float) -> None:
    check_option(0 <= value < 1, name, value, "it must be in [0, 1)")


def _check_eps(eps: float) -> None:
    check_option(math.isfinite(eps) and eps > 0, "eps", eps, "it must be > 0")


@OPTIMIZERS.register("adam")
def make_adam(
    learning_rate: float,
    total_steps: int,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    schedule: ScheduleName = "constant",
    min_lr: float = 0.0,
) -> optax.GradientTransformation:
    """Adam (optax.adam).

    Args:
        learning_rate: the outer learning rate (`outer.lr`).
        total_steps: meta-steps of the run (`outer.steps`).
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator, > 0.
        schedule: `constant` learning rate, or `cosine` annealing to `min_lr`.
        min_lr: the learning rate `cosine` ends at.
    """
    _check_decay("b1", b1)
    _check_decay("b2", b2)
    _check_eps(eps)
    lr = learning_rate_schedule(learning_rate, total_steps, schedule, min_lr)
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


@OPTIMIZERS.register("adamw")
def make_adamw(
    learning_rate: float,
    total_steps: int,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    schedule: ScheduleName = "constant",
    min_lr: float = 0.0,
) -> optax.GradientTransformation:
    """AdamW, Adam with decoupled weight decay (optax.adamw).

    Args:
        learning_rate: the outer learning rate (`outer.lr`).
        total_steps: meta-steps of the run (`outer.steps`).
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator, > 0.
        weight_decay: decoupled weight decay, >= 0.
        schedule: `constant` learning rate, or `cosine` annealing to `min_lr`.
        min_lr: the learning rate `cosine` ends at.
    """
    _check_decay("b1", b1)
    _check_decay("b2", b2)
    _check_eps(eps)
    check_option(weight_decay >= 0, "weight_decay", weight_decay, "it must be >= 0")
    lr = learning_rate_schedule(learning_rate, total_steps, schedule, min_lr)
    return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd")
def make_sgd(
    learning_rate: float,
    total_steps: int,
    *,
    momentum: float | None = None,
    nesterov: bool = False,
    schedule: ScheduleName = "constant",
    min_lr: float = 0.0,
) -> optax.GradientTransformation:
    """SGD with optional (Nesterov) momentum (optax.sgd).

    Args:
        learning_rate: the outer learning rate (`outer.lr`).
        total_steps: meta-steps of the run (`outer.steps`).
        momentum: momentum decay in [0, 1), or null for none.
        nesterov: Nesterov momentum.
        schedule: `constant` learning rate, or `cosine` annealing to `min_lr`.
        min_lr: the learning rate `cosine` ends at.
    """
    if momentum is not None:
        _check_decay("momentum", momentum)
    lr = learning_rate_schedule(learning_rate, total_steps, schedule, min_lr)
    return optax.sgd(lr, momentum=momentum, nesterov=nesterov)


@OPTIMIZERS.register("rmsprop")
def make_rmsprop(
    learning_rate: float,
    total_steps: int,
    *,
    decay: float = 0.9,
    eps: float = 1e-8,
    momentum: float | None = None,
    centered: bool = False,
    schedule: ScheduleName = "constant",
    min_lr: float = 0.0,
) -> optax.GradientTransformation:
    """RMSProp (optax.rmsprop).

    Args:
        learning_rate: the outer learning rate (`outer.lr`).
        total_steps: meta-steps of the run (`outer.steps`).
        decay: decay of the squared-gradient average, in [0, 1).
        eps: added to the denominator, > 0.
        momentum: momentum decay in [0, 1), or null for none.
        centered: centred RMSProp.
        schedule: `constant` learning rate, or `cosine` annealing to `min_lr`.
        min_lr: the learning rate `cosine` ends at.
    """
    _check_decay("decay", decay)
    _check_eps(eps)
    if momentum is not None:
        _check_decay("momentum", momentum)
    lr = learning_rate_schedule(learning_rate, total_steps, schedule, min_lr)
    return optax.rmsprop(lr, decay=decay, eps=eps, momentum=momentum, centered=centered)


def flat_optimizer(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformation:
    """`optimizer` applied to all meta-parameters as one vector (`optax.flatten`).

    Small networks have many small parameter arrays; one fused update instead of one
    per array is a measurable share of a sinusoid meta-step on CPU. Right for every
    element-wise optimiser (Adam, AdamW, SGD, RMSProp); a layer-wise one (LARS,
    LAMB) would need the arrays kept apart.
    """
    return optax.flatten(optimizer)
