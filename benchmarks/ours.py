"""metalearn's trainer on one workload, timed: the 'ours' rows of throughput.py.

python benchmarks/ours.py --tasks 25 --k 10 --inner-steps 1 --steps 20000
"""

import argparse
import json
import time

start = time.perf_counter()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from metalearn.algorithms import make_maml  # noqa: E402
from metalearn.models import make_mlp  # noqa: E402
from metalearn.tasks.sinusoid import make_sinusoid  # noqa: E402
from metalearn.trainer import (  # noqa: E402
    flat_optimizer,
    init_train_state,
    make_train_step,
    make_train_window,
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--amp-max", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--window", type=int, default=100)  # train.log_every
    parser.add_argument("--sample-ahead", type=int, default=100)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--remat", action="store_true")
    args = parser.parse_args()

    task = make_sinusoid(amp_max=args.amp_max)
    maml = make_maml(
        make_mlp([40, 40], 1),
        task,
        args.inner_lr,
        args.inner_steps,
        first_order=args.first_order,
        remat=args.remat,
    )
    optimizer = flat_optimizer(optax.adam(1e-3))  # as train.py builds it
    step = make_train_step(maml, task, optimizer, args.tasks, args.k, args.k)
    # as train.py: a window never samples more steps' tasks than it runs
    window = make_train_window(step, min(args.sample_ahead, args.window))
    state = init_train_state(maml, optimizer, jax.random.key(0))
    compile_start = time.perf_counter()
    compiled = window.lower(state, jnp.int32(1)).compile()
    compile_s = time.perf_counter() - compile_start
    memory = compiled.memory_analysis()
    loop_start = time.perf_counter()
    done = 0
    while done < args.steps:
        n = min(args.window, args.steps - done)
        state, metrics = compiled(state, jnp.int32(n))
        jax.device_get(metrics)  # the once-per-window host read the trainer does
        done += n
    loop_s = time.perf_counter() - loop_start
    print(
        json.dumps(
            {
                "steps_per_s": args.steps / loop_s,
                "compile_s": compile_s,
                "wall_s": time.perf_counter() - start,
                "program_temp_mb": memory.temp_size_in_bytes / 2**20,
                "final_meta_loss": float(metrics["train/meta_loss"]),
            }
        )
    )


if __name__ == "__main__":
    main()
