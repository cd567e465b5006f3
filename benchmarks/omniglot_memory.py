"""Memory of Omniglot's 20-way presets (5 inner steps, meta-batch 16): the training
program, second and first order, with and without `algo.remat`, as the presets run it
on a CPU (a device per core, each looping over its tasks one at a time) and all tasks
at once on one device (as on a GPU); and one evaluation chunk's program against
`eval.tasks_per_batch`, the numbers behind its rule.

    python benchmarks/omniglot_memory.py --data-root /tmp/mldata   # ~20 min on 2 cores

Training rows run `benchmarks/ours.py` for a few meta-steps in a fresh process
each: the compiled window's memory as XLA accounts it (arguments, outputs and
scratch; per device) and the process's peak RSS. Evaluation rows compile (without
running) the chunk program `train.py` builds for 10 adaptation steps at each chunk
size, and fit its memory to `fixed + per_task * tasks_per_batch`. Writes
`benchmarks/RESULTS_memory.md`.
"""

import argparse
import json
import platform
import sys
from pathlib import Path

from omniglot_speed import ours_on
from throughput import command_line, machine, measure

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PRESETS = {
    "20w1s": "maml_paper_omniglot_20w1s",
    "20w5s": "maml_paper_omniglot_20w5s",
}
CHUNKS = (1, 16, 64, 256)
# how the training program runs: (label, overrides)
WAYS_TO_RUN = {
    "the preset: a device per core, 1 task at a time": [],
    "1 device, all tasks at once": ["train.cpu_devices=1", "train.tasks_at_once=0"],
}
EVAL_STEPS = 10


def chunk_memory(overrides: list[str]) -> dict:
    """A child process: the evaluation chunk program's memory (MB) for each
    chunk size in `CHUNKS`, compiled as `train.py` builds it, and the chunk size
    `train.py` picks when `eval.tasks_per_batch` is null."""
    import jax
    from hydra import compose, initialize_config_dir

    from metalearn.build import build, eval_tasks_per_batch, make_evaluation
    from metalearn.config import register_configs, typed
    from metalearn.trainer import init_train_state

    register_configs()

    def config_with(*extra: str):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            chosen = [*overrides, *extra, "logger=none", f"eval.steps={EVAL_STEPS}"]
            chosen += [f"eval.objective=acc@step{EVAL_STEPS}", "eval.num_tasks=600"]
            return typed(compose("config", overrides=chosen))

    config = config_with()
    parts = build(config)
    state = init_train_state(parts.algorithm, parts.optimizer, jax.random.key(0))
    result: dict = {"default": eval_tasks_per_batch(config, parts.tasks.test)}
    for size in CHUNKS:
        chunk_config = config_with(f"eval.tasks_per_batch={size}")
        evaluate = make_evaluation(chunk_config, parts, jax.random.key(1))
        result[str(size)] = evaluate.bytes_needed(state) / 2**20
    return result


def fit(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares `fixed + per_task * size` through (size, MB) points."""
    mean_size = sum(points) / len(points)
    mean_mb = sum(points.values()) / len(points)
    covariance = sum((s - mean_size) * (mb - mean_mb) for s, mb in points.items())
    slope = covariance / sum((s - mean_size) ** 2 for s in points)
    return mean_mb - slope * mean_size, slope


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2, help="meta-steps timed")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_memory.md")
    parser.add_argument("--chunk-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk_memory:  # a child process
        return print(json.dumps(chunk_memory(args.overrides)))
    root = args.data_root

    train_rows = [
        "| preset | order | `algo.remat` | run as | devices | program MB per device "
        "| scratch MB per device | peak RSS MB | meta-steps/s | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, preset in PRESETS.items():
        for order in ("second", "first"):
            for remat in (False, True):
                for way, overrides in WAYS_TO_RUN.items():
                    r = ours_on(
                        preset, order, args.steps, remat, root,
                        "train.log_every=1", *overrides,
                    )  # fmt: skip
                    train_rows.append(
                        f"| {name} | {order} | {str(remat).lower()} | {way} | "
                        f"{r['devices']} | {r['program_mb']:.0f} | "
                        f"{r['program_temp_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                        f"{r['steps_per_s']:.2f} | {r['compile_s']:.1f} |"
                    )
    eval_rows = [
        "| preset | "
        + " | ".join(f"{size} tasks MB" for size in CHUNKS)
        + " | fixed MB | MB per task | default chunk (its MB) |",
        "|---|" + "---|" * (len(CHUNKS) + 3),
    ]
    for name, preset in PRESETS.items():
        command = [sys.executable, __file__, "--chunk-memory", f"experiment={preset}"]
        command += [f"data.root={root}"] if root else []
        r = measure(command)
        points = {size: r[str(size)] for size in CHUNKS}
        fixed, per_task = fit(points)
        default = r["default"]
        eval_rows.append(
            f"| {name} | "
            + " | ".join(f"{mb:.0f}" for mb in points.values())
            + f" | {fixed:.0f} | {per_task:.2f} | {default} "
            f"(~{fixed + per_task * default:.0f}) |"
        )

    lines = [
        f"Machine: {machine()}; Python {platform.python_version()}",
        "",
        f"`{command_line('omniglot_memory.py')}`",
        "",
        f"### Training ({args.steps} meta-steps timed per run, one fresh process each)",
        "",
        "Program MB: the compiled training window as XLA accounts it (arguments, "
        "outputs and scratch), per device; scratch: its temporaries alone; peak "
        "RSS: the whole process, every device, data and compiler included. "
        "`algo.adapt_batch_norm=true` (the peer's maths, as the speed table).",
        "",
        *train_rows,
        "",
        f"### Evaluation: one chunk's program, {EVAL_STEPS} adaptation steps",
        "",
        "Compiled, not run. Fixed and per-task MB: a least-squares line through the "
        "chunk sizes. Default chunk: what `eval.tasks_per_batch=null` picks (sampled "
        "tasks of a chunk under 16 MB).",
        "",
        *eval_rows,
    ]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
