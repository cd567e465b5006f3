"""A MAML loop written the way the maml-jax tutorial writes it: the baseline of
`benchmarks/throughput.py`.

One jitted step per iteration, tasks sampled with numpy on the host every step
(`--sampling tutorial`: the tutorial's own `sample_tasks`, a Python loop over
tasks stacked with `jnp.stack`), the loss and its gradient as separate calls,
`jax.example_libraries.optimizers` Adam. Same network (haiku 1-40-40-1 ReLU,
glorot weights) and the same maths as `metalearn`'s MAML (query MSE after SGD
steps on K support points, mean over tasks).

`--sampling vectorised` draws the same distribution with whole-array numpy calls
instead: a stronger baseline than the tutorial, for comparison.

    python benchmarks/reference_loop.py --tasks 4 --k 20 --steps 20000
"""

import argparse
import json
import time
from functools import partial

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax.example_libraries import optimizers


def forward(x):
    w_init = hk.initializers.VarianceScaling(1.0, "fan_avg", "truncated_normal")
    hidden = jax.nn.relu(hk.Linear(40, w_init=w_init)(x))
    hidden = jax.nn.relu(hk.Linear(40, w_init=w_init)(hidden))
    return hk.Linear(1, w_init=w_init)(hidden)


net = hk.without_apply_rng(hk.transform(forward))


def loss(params, inputs, targets):
    return jnp.mean((net.apply(params, inputs) - targets) ** 2)


def sample_tasks(outer_batch_size, inner_batch_size, amp_max):
    """The tutorial's sampler: per-task numpy draws, stacked on device."""
    amplitudes, phases = [], []
    for _ in range(outer_batch_size):
        amplitudes.append(np.random.uniform(low=0.1, high=amp_max))
        phases.append(np.random.uniform(low=0.0, high=np.pi))

    def get_batch():
        xs, ys = [], []
        for amplitude, phase in zip(amplitudes, phases, strict=True):
            x = np.random.uniform(low=-5.0, high=5.0, size=(inner_batch_size, 1))
            xs.append(x)
            ys.append(amplitude * np.sin(x - phase))
        return jnp.stack(xs), jnp.stack(ys)

    x1, y1 = get_batch()
    x2, y2 = get_batch()
    return x1, y1, x2, y2


def sample_tasks_vectorised(outer_batch_size, inner_batch_size, amp_max):
    """The same distribution in whole-array numpy calls."""
    amplitude = np.random.uniform(0.1, amp_max, size=outer_batch_size)
    phase = np.random.uniform(0.0, np.pi, size=outer_batch_size)

    def draw():
        x = np.random.uniform(-5.0, 5.0, size=(outer_batch_size, inner_batch_size, 1))
        return x, amplitude[:, None, None] * np.sin(x - phase[:, None, None])

    x1, y1 = draw()
    x2, y2 = draw()
    return x1, y1, x2, y2


SAMPLERS = {"tutorial": sample_tasks, "vectorised": sample_tasks_vectorised}


def make_batch_maml_loss(inner_lr):
    """The tutorial's batched MAML loss: mean query loss after one SGD step."""

    def inner_update(params, x1, y1):
        grads = jax.grad(loss)(params, x1, y1)
        return jax.tree.map(lambda p, g: p - inner_lr * g, params, grads)

    def maml_loss(params, x1, y1, x2, y2):
        return loss(inner_update(params, x1, y1), x2, y2)

    def batch_maml_loss(params, x1, y1, x2, y2):
        return jnp.mean(jax.vmap(partial(maml_loss, params))(x1, y1, x2, y2))

    return batch_maml_loss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--amp-max", type=float, default=0.5)
    parser.add_argument("--sampling", choices=sorted(SAMPLERS), default="tutorial")
    args = parser.parse_args()
    start = time.perf_counter()
    batch_maml_loss = make_batch_maml_loss(args.inner_lr)
    opt_init, opt_update, get_params = optimizers.adam(step_size=1e-3)

    @jax.jit
    def step(i, opt_state, x1, y1, x2, y2):
        params = get_params(opt_state)
        grads = jax.grad(batch_maml_loss)(params, x1, y1, x2, y2)
        value = batch_maml_loss(params, x1, y1, x2, y2)
        return opt_update(i, grads, opt_state), value

    np.random.seed(0)
    sample = SAMPLERS[args.sampling]
    opt_state = opt_init(net.init(jax.random.PRNGKey(0), jnp.zeros((1, 1))))
    compile_start = time.perf_counter()
    opt_state, value = step(0, opt_state, *sample(args.tasks, args.k, args.amp_max))
    value.block_until_ready()
    compile_s = time.perf_counter() - compile_start
    loop_start = time.perf_counter()
    for i in range(1, args.steps):
        batch = sample(args.tasks, args.k, args.amp_max)
        opt_state, value = step(i, opt_state, *batch)
    value.block_until_ready()
    loop_s = time.perf_counter() - loop_start
    result = {
        "steps_per_s": (args.steps - 1) / loop_s,
        "compile_s": compile_s,
        "wall_s": time.perf_counter() - start,
        "final_meta_loss": float(value),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
