"""Task families: pure samplers of few-shot tasks from PRNG keys.

A task family is a `TaskFamily` of pure functions. `sample(key, num_support,
num_query)` draws one task as a `TaskBatch`; under `jax.vmap` over keys it draws a
batch of tasks with a leading task axis `[T, ...]`. `loss` scores a model's
predictions against targets (the inner and outer objective); `metrics` are what the
evaluation protocol reports. Regression and classification families fit the same
shape: only the arrays' trailing dimensions and the loss differ.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax


class TaskBatch(NamedTuple):
    """One task (or, with a leading axis `T`, a batch of tasks)."""

    support_inputs: jax.Array  # [K, *input_shape]
    support_targets: jax.Array  # [K, *target_shape]
    query_inputs: jax.Array  # [Q, *input_shape]
    query_targets: jax.Array  # [Q, *target_shape]


Metric = Callable[[jax.Array, jax.Array], jax.Array]


class TaskFamily(NamedTuple):
    """A distribution over tasks plus how predictions on them are scored.

    Attributes:
        name: short name used in metric keys and logs.
        sample: `(key, num_support, num_query) -> TaskBatch` for one task; the two
            counts are Python ints (they fix shapes).
        loss: `(predictions, targets) -> scalar`, minimised by inner and outer loops.
        metrics: name -> `(predictions, targets) -> scalar`, reported by evaluation.
        input_shape: shape of one input, used to initialise models.
        output_size: number of model outputs per input.
    """

    name: str
    sample: Callable[[jax.Array, int, int], TaskBatch]
    loss: Metric
    metrics: dict[str, Metric]
    input_shape: tuple[int, ...]
    output_size: int
