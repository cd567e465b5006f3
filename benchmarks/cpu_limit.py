"""How close the Omniglot presets run to this CPU's limit: FLOPs per meta-step times
meta-steps/s, against the rate the CPU multiplies matrices at.

    python benchmarks/cpu_limit.py            # writes RESULTS_cpu_limit.md
    python benchmarks/cpu_limit.py --quick

For the MAML paper's Omniglot 5-way 1-shot and 20-way 1-shot presets, second and
first order (`algo.adapt_batch_norm=true`, the speed table's maths):

- GFLOP per meta-step: XLA's cost analysis of one meta-gradient of the whole
  meta-batch (all tasks vmapped in one program, so nothing hides in a loop that the
  analysis counts once); the presets compute the same products one task at a time.
- meta-steps/s: the speed table's run of ours (`omniglot_speed.ours`:
  `benchmarks/ours.py` on the preset as it is, one device per core, one task at a
  time), compilation excluded; medians of `--repeats` runs.
- Two yardsticks: JAX's float32 matrix product of large square matrices (the
  CPU's practical peak, both cores), and its rate at the shapes of the network's
  convolutions on one task's support images (im2col: images x output pixels rows,
  9 x input channels inner, 64 filters), weighted by their FLOPs: what a
  meta-step would run at if all of its FLOPs ran at the forward convolutions'
  rates. It is a reference, not a bound: the backward pass's products have other
  shapes, and the first layer's (inner size 9) is not done as a matrix product
  (`metalearn.models.narrow_patch_product`).

Needs the prepared Omniglot data (`python -m metalearn.data omniglot`).
"""

import argparse
import statistics
import time
from pathlib import Path

from omniglot_speed import ORDERS, WORKLOADS, Workload, ours
from throughput import command_line, machine

HERE = Path(__file__).resolve().parent
SIDES = (14, 7, 4, 2)  # conv4's output sides on 28 px images (stride 2)
FILTERS = 64
SQUARE = 2048  # the large matrix product's side


def gflop_per_step(workload: Workload, order: str, root) -> float:
    """XLA's FLOP count of one meta-gradient of the preset's meta-batch, in GFLOP
    (the maths `omniglot_speed.ours` times)."""
    import jax
    from ours import config_and_parts

    from metalearn.trainer import init_train_state

    overrides = [f"experiment={workload.experiment}", "algo.adapt_batch_norm=true"]
    overrides += ["algo=fomaml" if order == "first" else "algo=maml"]
    overrides += [f"data.root={root}"] if root else []
    # one device: only the program's FLOPs are wanted
    config, parts = config_and_parts(overrides, set_devices=False)
    state = init_train_state(parts.algorithm, parts.optimizer, jax.random.key(0))
    family = parts.tasks.train
    keys = jax.random.split(jax.random.key(1), config.outer.batch)
    tasks = jax.vmap(
        lambda key: family.sample(
            key, family.data, config.inner.k, config.outer.num_query
        )
    )(keys)

    def meta_grad(meta_params, model_state, tasks):
        return parts.algorithm.meta_grad(meta_params, model_state, tasks, 0).grads

    compiled = (
        jax.jit(meta_grad).lower(state.meta_params, state.model_state, tasks).compile()
    )
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older JAX: one dict per program
        analysis = analysis[0]
    return analysis["flops"] / 1e9


def matmul_gflops(rows: int, inner: int, columns: int, seconds: float = 1.0) -> float:
    """JAX's float32 `[rows, inner] @ [inner, columns]` rate in GFLOP/s: the median
    of five timings of as many products as fill `seconds / 5`."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (rows, inner), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (inner, columns), jnp.float32)
    product = jax.jit(jnp.matmul)
    product(a, b).block_until_ready()
    start = time.perf_counter()
    product(a, b).block_until_ready()
    repeats = max(1, int(seconds / 5 / max(time.perf_counter() - start, 1e-6)))
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            result = product(a, b)
        result.block_until_ready()
        rates.append(
            2 * rows * inner * columns * repeats / (time.perf_counter() - start)
        )
    return statistics.median(rates) / 1e9


def conv_shapes(images: int) -> list[tuple[int, int, int]]:
    """The im2col matrix products of conv4's four convolutions on `images` images."""
    channels = [1, FILTERS, FILTERS, FILTERS]
    return [
        (images * side * side, 9 * c, FILTERS)
        for side, c in zip(SIDES, channels, strict=True)
    ]


def shape_limited_gflops(images: int, seconds: float) -> tuple[float, list[str]]:
    """The FLOP-weighted rate of the convolutions' products on `images` images, and
    a description of each shape's rate."""
    shapes = conv_shapes(images)
    rates = [matmul_gflops(*shape, seconds=seconds) for shape in shapes]
    flops = [2 * r * k * n for r, k, n in shapes]
    total_time = sum(f / rate for f, rate in zip(flops, rates, strict=True))
    described = [
        f"{r}x{k}x{n}: {rate:.0f}"
        for (r, k, n), rate in zip(shapes, rates, strict=True)
    ]
    return sum(flops) / total_time, described


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="5-way meta-steps")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="5 steps, short timings")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_cpu_limit.md")
    args = parser.parse_args()
    steps, repeats = (5, 1) if args.quick else (args.steps, args.repeats)
    seconds = 0.2 if args.quick else 2.0
    start = time.perf_counter()

    speeds = {}  # first, in subprocesses, with nothing else running here
    for name, workload in WORKLOADS.items():
        timed = max(2, steps // workload.cost)
        for order in ORDERS:
            runs = [
                ours(workload, order, timed, False, args.data_root)["steps_per_s"]
                for _ in range(repeats)
            ]
            speeds[name, order] = statistics.median(runs)
    peak = matmul_gflops(SQUARE, SQUARE, SQUARE, seconds)
    limits = {
        name: shape_limited_gflops(w.ways * w.shots, seconds)
        for name, w in WORKLOADS.items()
    }
    rows = []
    for (name, order), steps_per_s in speeds.items():
        gflop = gflop_per_step(WORKLOADS[name], order, args.data_root)
        achieved = gflop * steps_per_s
        shape_limit = limits[name][0]
        rows.append(
            f"| {name} | {order} | {gflop:.1f} | {steps_per_s:.2f} | {achieved:.0f} "
            f"| {100 * achieved / peak:.0f}% | {shape_limit:.0f} "
            f"| {100 * achieved / shape_limit:.0f}% |"
        )
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# How close to this CPU's limit: Omniglot MAML",
            "",
            f"`{command_line('cpu_limit.py')}` on "
            f"{machine()}; meta-steps/s over {steps} meta-steps per 5-way run "
            f"and a fifth of that per 20-way run, "
            f"{'one run' if repeats == 1 else f'medians of {repeats} runs'} each "
            f"({(time.perf_counter() - start) / 60:.0f} min in all).",
            "",
            f"Float32 matrix product, {SQUARE}x{SQUARE}x{SQUARE}: {peak:.0f} GFLOP/s. "
            "At the convolutions' im2col shapes on one task's support images "
            "(rows x inner x columns: GFLOP/s): "
            + "; ".join(f"{name}: {', '.join(limits[name][1])}" for name in WORKLOADS)
            + ".",
            "",
            "| workload | order | GFLOP per meta-step | meta-steps/s | GFLOP/s "
            f"| of {peak:.0f} GFLOP/s | at the conv shapes' rate, GFLOP/s "
            "| of that rate |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
