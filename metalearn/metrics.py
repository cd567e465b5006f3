"""Losses and metrics of predictions against targets, each with its direction.

A task family names the metrics its evaluation reports (`eval/<name>@step<i>`);
whether a metric is better low or high is the metric's own fact (`Metric.goal`),
so sweepers, reports and figures never assume "lower is better". `GOALS` lists the
goal of every metric name a task family here reports.
"""

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

Goal = Literal["min", "max"]


class Metric(NamedTuple):
    """A per-task score: `fn(predictions, targets) -> scalar`, and its goal."""

    fn: Callable[[jax.Array, jax.Array], jax.Array]
    goal: Goal


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over points (and outputs) of the squared error; both `[N, D]`."""
    return jnp.mean(jnp.square(predictions - targets))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of `logits [N, C]` against int `labels [N]`."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of `labels [N]` that are the argmax of `logits [N, C]`."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


MSE = Metric(mean_squared_error, "min")
LOSS = Metric(cross_entropy, "min")
ACCURACY = Metric(accuracy, "max")

# every metric name a task family reports, and its goal
GOALS: dict[str, Goal] = {"mse": "min", "loss": "min", "acc": "max"}


def objective_goal(objective: str) -> Goal:
    """The goal of an objective `<metric>@step<i>` (or `<metric>_k<K>@step<i>`)."""
    metric = objective.partition("@")[0]
    base = metric.rsplit("_k", 1)[0] if metric not in GOALS else metric
    if base not in GOALS:
        raise ValueError(
            f"unknown metric {metric!r} in objective {objective!r}; known: "
            f"{', '.join(GOALS)}"
        )
    return GOALS[base]
