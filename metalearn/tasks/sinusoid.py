"""Sinusoid regression, the MAML paper's toy problem (Finn et al. 2017, §5.1).

A task is `y = A * sin(x - phase)` with `A ~ U[amp_min, amp_max]`,
`phase ~ U[phase_min, phase_max]` and inputs `x ~ U[x_min, x_max]`. Support and query
points are independent draws of `x` from the same task.
"""

import jax
import jax.numpy as jnp

from metalearn.tasks import TaskBatch, TaskFamily


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over points (and outputs) of the squared error."""
    return jnp.mean(jnp.square(predictions - targets))


def make_sinusoid(
    amp_min: float = 0.1,
    amp_max: float = 5.0,
    phase_min: float = 0.0,
    phase_max: float = jnp.pi,
    x_min: float = -5.0,
    x_max: float = 5.0,
) -> TaskFamily:
    """Builds the sinusoid task family.

    Defaults are the MAML paper's distribution; the maml-jax tutorial's uses
    `amp_max=0.5`.
    """

    def sample(key: jax.Array, num_support: int, num_query: int) -> TaskBatch:
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

    return TaskFamily(
        name="sinusoid",
        sample=sample,
        loss=mean_squared_error,
        metrics={"mse": mean_squared_error},
        input_shape=(1,),
        output_size=1,
    )
