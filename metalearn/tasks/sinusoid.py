"""Sinusoid regression, the MAML paper's toy problem (Finn et al. 2017, §5.1).

A task is `y = A * sin(x - phase)` with `A ~ U[amp_min, amp_max]`,
`phase ~ U[phase_min, phase_max]` and inputs `x ~ U[x_min, x_max]`. Support and query
points are independent draws of `x` from the same task. Tasks are drawn from keys
alone, so training and evaluation use the same family (with different keys).
"""

import math
from pathlib import Path

import jax
import jax.numpy as jnp

from metalearn.metrics import MSE, mean_squared_error
from metalearn.registry import check_option
from metalearn.tasks import TASKS, TaskBatch, TaskFamily, TaskSplits


@TASKS.register("sinusoid", headline="mse")
def make_sinusoid(
    data_root: Path | None = None,
    *,
    amp_min: float = 0.1,
    amp_max: float = 5.0,
    phase_min: float = 0.0,
    phase_max: float = math.pi,
    x_min: float = -5.0,
    x_max: float = 5.0,
) -> TaskSplits:
    """Builds the sinusoid task family (the same for training and evaluation).

    Defaults are the MAML paper's distribution; the maml-jax tutorial's
    (`task=sinusoid_tutorial`) has `amp_max=0.5`.

    Args:
        data_root: unused (sinusoids need no data).
        amp_min: lowest amplitude A.
        amp_max: highest amplitude A.
        phase_min: lowest phase.
        phase_max: highest phase.
        x_min: lowest input x.
        x_max: highest input x.
    """
    del data_root
    bounds = {"amp": (amp_min, amp_max), "phase": (phase_min, phase_max)}
    for name, (low, high) in (bounds | {"x": (x_min, x_max)}).items():
        for side, value in ((f"{name}_min", low), (f"{name}_max", high)):
            check_option(math.isfinite(value), side, value, "it must be finite")
        check_option(
            low <= high, f"{name}_min", low, f"it must be <= {name}_max={high}"
        )

    def sample(key: jax.Array, data, num_support: int, num_query: int) -> TaskBatch:
        del data
        amp_key, phase_key, x_key = jax.random.split(key, 3)
        amplitude = jax.random.uniform(amp_key, (), minval=amp_min, maxval=amp_max)
        phase = jax.random.uniform(phase_key, (), minval=phase_min, maxval=phase_max)
        inputs = jax.random.uniform(
            x_key, (num_support + num_query, 1), minval=x_min, maxval=x_max
        )
        targets = amplitude * jnp.sin(inputs - phase)
        return TaskBatch(
            support_inputs=inputs[:num_support],  # [K, 1]
            support_targets=targets[:num_support],  # [K, 1]
            query_inputs=inputs[num_support:],  # [Q, 1]
            query_targets=targets[num_support:],  # [Q, 1]
        )

    family = TaskFamily(
        name="sinusoid",
        sample=sample,
        data=(),
        loss=mean_squared_error,
        metrics={"mse": MSE},
        input_shape=(1,),
        output_size=1,
    )
    return TaskSplits(train=family, test=family)
