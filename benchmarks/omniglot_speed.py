"""Omniglot MAML speed: metalearn vs learn2learn (PyTorch) on one machine, same maths.

    python benchmarks/omniglot_speed.py          # writes RESULTS_omniglot.md
    python benchmarks/omniglot_speed.py --quick  # a few steps, one run each

Workloads: the MAML paper's Omniglot 5-way 1-shot (meta-batch 32, 1 inner step at
0.4) and 20-way 1-shot (meta-batch 16, 5 inner steps at 0.1), 1 query image per
class, Adam 1e-3, second and first order. For each, three runs in turn, each in
its own process, repeated `--repeats` times (medians; a shared machine's speed
drifts between runs): ours (`benchmarks/ours.py experiment=...
algo.adapt_batch_norm=true`: its inner loop adapts BatchNorm's offsets, as
learn2learn's does) with `algo.remat` off and on, and the peer
(`benchmarks/peer_l2l.py`: learn2learn's MAML, clone/adapt per task, episodes
sampled on the host; tests/test_peer.py checks it computes our meta-gradient).
Meta-steps/s exclude our compilation and the peer's warm-up steps, both reported
on their own; wall is the whole process; peak RSS the process's maximum resident
memory (the largest of the runs).
Then our evaluation throughput: 600 test tasks adapted 3 and 10 steps from the
initial weights, in compiled chunks of tasks (their compilation apart).

Needs the prepared Omniglot data (`python -m metalearn.data omniglot`) and the
`peers` extra (benchmarks/PEERS.md).
"""

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from throughput import command_line, jax_device, machine, measure, runs_label

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


class Workload(NamedTuple):
    label: str
    experiment: str  # conf/experiment/ preset with the same settings
    ways: int
    shots: int
    query: int
    batch: int
    inner_steps: int
    inner_lr: float
    cost: int  # a meta-step's cost relative to 5-way 1-shot (fewer steps timed)


WORKLOADS = {
    "5w1s": Workload(
        label="5-way 1-shot, meta-batch 32, 1 inner step",
        experiment="maml_paper_omniglot_5w1s",
        ways=5,
        shots=1,
        query=1,
        batch=32,
        inner_steps=1,
        inner_lr=0.4,
        cost=1,
    ),
    "20w1s": Workload(
        label="20-way 1-shot, meta-batch 16, 5 inner steps",
        experiment="maml_paper_omniglot_20w1s",
        ways=20,
        shots=1,
        query=1,
        batch=16,
        inner_steps=5,
        inner_lr=0.1,
        cost=5,
    ),
}
ORDERS = ("second", "first")
EVAL_STEPS = (3, 10)


def ours(workload: Workload, order: str, steps: int, remat: bool, root) -> dict:
    return ours_on(workload.experiment, order, steps, remat, root)


def ours_on(
    preset: str, order: str, steps: int, remat: bool, root, *overrides: str
) -> dict:
    """`benchmarks/ours.py` on `experiment=<preset>` in the given order, measured."""
    command = [sys.executable, str(HERE / "ours.py"), "--steps", str(steps)]
    command += [f"experiment={preset}", *overrides]
    command += ["algo=fomaml" if order == "first" else "algo=maml"]
    command += ["algo.adapt_batch_norm=true"]  # the peer's maths
    command += [f"algo.remat={str(remat).lower()}"]
    command += [f"data.root={root}"] if root else []
    return measure(command)


def peer(
    workload: Workload,
    order: str,
    steps: int,
    warmup: int,
    root,
    threads=None,
    device="cpu",
) -> dict:
    w = workload
    command = [sys.executable, str(HERE / "peer_l2l.py"), "--steps", str(steps)]
    command += ["--ways", str(w.ways), "--shots", str(w.shots)]
    command += ["--query", str(w.query), "--batch", str(w.batch)]
    command += ["--inner-steps", str(w.inner_steps), "--inner-lr", str(w.inner_lr)]
    command += ["--order", order, "--warmup", str(warmup)]
    command += ["--data-root", str(root)] if root else []
    command += ["--threads", str(threads)] if threads else []
    command += ["--device", device]
    return measure(command)


def ours_eval(workload: Workload, steps: int, tasks: int, root) -> dict:
    command = [sys.executable, str(HERE / "omniglot_speed.py"), "--ours-eval"]
    command += [f"experiment={workload.experiment}", f"eval.num_tasks={tasks}"]
    command += [f"eval.steps={steps}", f"eval.objective=acc@step{steps}"]
    command += [f"data.root={root}"] if root else []
    return measure(command)


def interleaved(repeats: int, **commands) -> dict[str, dict]:
    """Runs each named zero-argument command `repeats` times, in turn: each
    number's median (peak RSS: the largest); other fields from the first run."""
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            runs[name].append(command())
    merged = {}
    for name, results in runs.items():
        merged[name] = dict(results[0])
        for key, value in results[0].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                merged[name][key] = statistics.median(r[key] for r in results)
        merged[name]["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    return merged


def train_header(gpu: bool) -> list[str]:
    """The meta-training table's header; `gpu` adds a peak GPU memory column."""
    return [
        "| workload | order | run | meta-steps/s | compile / warm-up s | wall s "
        "| peak RSS MB |" + (" peak GPU MB |" if gpu else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if gpu else ""),
    ]


def gpu_mb(run: dict) -> str:
    """A run's peak GPU memory (ours: JAX's, the peer's: torch's) for the table,
    '-' for a run on the CPU."""
    peak = run.get("peak_device_mb")
    return "-" if peak is None else f"{peak:.0f}"


def check_both_on_gpu() -> None:
    """Exits with a one-line message unless JAX computes on a GPU and torch sees
    CUDA: `--peer-device cuda` is for a GPU beside a GPU."""
    device = jax_device()
    if device.endswith(" on cpu"):
        raise SystemExit(f"--peer-device cuda: {device}, not on a GPU")
    probe = [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"]
    seen = subprocess.run(probe, capture_output=True, text=True).stdout.strip()
    if seen != "True":
        raise SystemExit("--peer-device cuda: torch sees no CUDA GPU")


def training_rows(workload, order, ours_off, ours_on, peer_run, gpu) -> list[str]:
    """Table rows of one workload and order: ours, ours with remat, the peer."""
    warmup = f"{peer_run['warmup_s']:.2f} (first {int(peer_run['warmup_steps'])})"
    runs = [
        ("metalearn", ours_off, f"{ours_off['compile_s']:.2f}"),
        ("metalearn, `algo.remat=true`", ours_on, f"{ours_on['compile_s']:.2f}"),
        ("learn2learn", peer_run, warmup),
    ]
    return [
        f"| {workload} | {order} | {name} | {r['steps_per_s']:.2f} | {first} | "
        f"{r['process_wall_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        + (f" {gpu_mb(r)} |" if gpu else "")
        for name, r, first in runs
    ]


def ratio_row(workload, order, ours_off, ours_on, peer_run) -> str:
    speed = peer_run["steps_per_s"]
    return (
        f"| {workload} | {order} | {ours_off['steps_per_s'] / speed:.1f}x | "
        f"{ours_on['steps_per_s'] / speed:.1f}x |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=100,
        help="meta-steps timed per 5-way run (20-way: a fifth as many)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="peer's warm-up steps")
    parser.add_argument(
        "--peer-threads",
        type=int,
        default=None,
        help="torch threads (default: torch's own choice, one per core)",
    )
    parser.add_argument(
        "--peer-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the peer's torch runs (cuda: on a GPU, beside JAX's GPU runs)",
    )
    parser.add_argument("--eval-tasks", type=int, default=600)
    parser.add_argument(
        "--quick", action="store_true", help="3 meta-steps, 20 eval tasks, one run each"
    )
    parser.add_argument(
        "--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS)
    )
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_omniglot.md")
    parser.add_argument("--ours-eval", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_eval:  # a child process: our evaluation, timed
        return print(json.dumps(time_ours_eval(args.overrides)))
    steps, repeats, warmup = args.steps, args.repeats, args.warmup
    eval_tasks = args.eval_tasks
    if args.quick:
        steps, repeats, warmup, eval_tasks = 3, 1, 1, 20
    root = args.data_root
    workloads = {name: WORKLOADS[name] for name in args.workloads}

    if args.peer_device == "cuda":
        check_both_on_gpu()
    measured, info = [], {}
    for name, workload in workloads.items():
        n = max(1, steps // workload.cost)
        for order in ORDERS:
            runs = interleaved(
                repeats,
                off=functools.partial(ours, workload, order, n, False, root),
                on=functools.partial(ours, workload, order, n, True, root),
                peer=functools.partial(
                    peer,
                    workload,
                    order,
                    n,
                    warmup,
                    root,
                    args.peer_threads,
                    args.peer_device,
                ),
            )
            info = runs["peer"]
            measured.append((name, order, runs["off"], runs["on"], runs["peer"]))
    gpu = any(run.get("peak_device_mb") for row in measured for run in row[2:])
    training = [line for row in measured for line in training_rows(*row, gpu)]
    ratios = [ratio_row(*row) for row in measured]
    evaluation = [
        "| workload | adaptation steps | tasks/s | compile s | tasks per chunk |",
        "|---|---|---|---|---|",
    ]
    for name, workload in workloads.items():
        for eval_steps in EVAL_STEPS:
            r = ours_eval(workload, eval_steps, eval_tasks, root)
            evaluation.append(
                f"| {name} | {eval_steps} | {r['tasks_per_s']:.0f} | "
                f"{r['compile_s']:.2f} | {r['tasks_per_chunk']} |"
            )

    versions = info["versions"]
    lines = [
        f"Machine: {machine()}; torch {versions['torch']} on {info['device']} "
        f"({info['torch_threads']} threads), learn2learn {versions['learn2learn']}; "
        f"Python {versions['python']}; numpy {versions['numpy']}",
        "",
        f"`{command_line('omniglot_speed.py')}`",
        "",
        f"### Meta-training ({runs_label(repeats)}; meta-steps timed per run: "
        + ", ".join(f"{max(1, steps // w.cost)} for {k}" for k, w in workloads.items())
        + ")",
        "",
        "Workloads: " + "; ".join(f"{k} = {w.label}" for k, w in workloads.items()),
        "(1 query image per class, Adam 1e-3, conv4 with 64 filters). Compile: our "
        "training window's compilation; warm-up: the peer's first meta-steps.",
        "",
        *train_header(gpu),
        *training,
        "",
        "| workload | order | meta-steps/s ours / learn2learn | ours with remat / "
        "learn2learn |",
        "|---|---|---|---|",
        *ratios,
        "",
        f"### Our evaluation ({eval_tasks} test tasks from the initial weights, "
        "one compiled program per chunk of tasks)",
        "",
        *evaluation,
    ]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


def time_ours_eval(overrides: list[str]) -> dict:
    """Our evaluation protocol as `train.py` builds it (`make_evaluation`), timed:
    its chunk programs compiled first, then one full evaluation."""
    import jax
    from ours import config_and_parts

    from metalearn.build import eval_tasks_per_batch, make_evaluation
    from metalearn.trainer import init_train_state

    config, parts = config_and_parts(overrides)
    state = init_train_state(parts.algorithm, parts.optimizer, jax.random.key(0))
    evaluate = make_evaluation(config, parts, jax.random.key(1))
    start = time.perf_counter()
    evaluate.bytes_needed(state)  # compiles (and keeps) the chunk programs
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate(state)
    eval_s = time.perf_counter() - start
    return {
        "tasks_per_s": config.eval.num_tasks / eval_s,
        "eval_s": eval_s,
        "compile_s": compile_s,
        "tasks_per_chunk": eval_tasks_per_batch(config, parts.tasks.test),
        "accuracy": metrics[f"eval/acc@step{config.eval.steps}"],
    }


if __name__ == "__main__":
    main()
