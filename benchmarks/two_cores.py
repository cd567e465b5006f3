"""Does the second CPU core help? Omniglot MAML meta-steps/s under each way to use it.

    python benchmarks/two_cores.py            # writes RESULTS_two_cores.md
    python benchmarks/two_cores.py --quick

Each way runs the MAML paper's Omniglot 5-way 1-shot (meta-batch 32, 1 inner step)
and 20-way 1-shot (meta-batch 16, 5 inner steps) presets, second and first order,
in its own process (`benchmarks/ours.py`), medians of `--repeats` runs in turn:

- `1 device, all at once`: one host device (JAX's default), the meta-batch's
  tasks vmapped together (`train.cpu_devices=null train.tasks_at_once=0`; what
  the presets did before);
- `1 device, one at a time`: one device looping over the tasks
  (`train.tasks_at_once=1`);
- `2 devices, all at once`: two host devices (`train.cpu_devices=2`), the
  meta-batch sharded over them, each vmapping its share;
- `2 devices, one at a time`: two host devices, each looping over its share one
  task at a time (`train.cpu_devices=2 train.tasks_at_once=1`: what the presets
  do on a 2-core CPU);
- `two jobs side by side`: two runs of the first way at once (what a sweep with
  the joblib launcher and `n_jobs=2` does): the sum of their meta-steps/s.

Needs the prepared Omniglot data (`python -m metalearn.data omniglot`).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from throughput import command_line, machine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PRESETS = {"5w1s": "maml_paper_omniglot_5w1s", "20w1s": "maml_paper_omniglot_20w1s"}
STEPS = {"5w1s": 1.0, "20w1s": 0.2}  # of --steps: a 20-way meta-step is ~5x longer
ALGO = {"second": "maml", "first": "fomaml"}
BASE = "1 device, all at once"
SETUPS = {
    BASE: ["train.cpu_devices=null", "train.tasks_at_once=0"],
    "1 device, one at a time": ["train.cpu_devices=null", "train.tasks_at_once=1"],
    "2 devices, all at once": ["train.cpu_devices=2", "train.tasks_at_once=0"],
    "2 devices, one at a time": ["train.cpu_devices=2", "train.tasks_at_once=1"],
}


def command(workload: str, order: str, steps: int, overrides, root) -> list[str]:
    line = [sys.executable, str(HERE / "ours.py"), "--steps", str(steps)]
    line += [f"experiment={PRESETS[workload]}", f"algo={ALGO[order]}", *overrides]
    line += ["train.log_every=" + str(max(1, steps // 3))]
    return line + ([f"data.root={root}"] if root else [])


def run(processes: int, line: list[str]) -> float:
    """Meta-steps/s of `processes` runs of `line` started together (summed)."""
    started = [
        subprocess.Popen(line, cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    total = 0.0
    for process in started:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(line)} failed (its error is above)")
        total += json.loads(output.strip().splitlines()[-1])["steps_per_s"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="meta-steps timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5 steps, one repeat")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_two_cores.md")
    args = parser.parse_args()
    steps, repeats = (5, 1) if args.quick else (args.steps, args.repeats)
    start = time.perf_counter()
    rows = []
    ways = [(name, 1, overrides) for name, overrides in SETUPS.items()]
    ways.append(("two jobs side by side", 2, SETUPS[BASE]))
    for workload in PRESETS:
        timed = max(2, round(steps * STEPS[workload]))
        for order in ("second", "first"):
            speeds: dict[str, list[float]] = {name: [] for name, _, _ in ways}
            for _ in range(repeats):  # in turn, so drift touches every way alike
                for name, processes, overrides in ways:
                    line = command(workload, order, timed, overrides, args.data_root)
                    speeds[name].append(run(processes, line))
            base = statistics.median(speeds[BASE])
            for name, _, _ in ways:
                speed = statistics.median(speeds[name])
                rows.append(
                    f"| {workload} | {order} | {name} | {speed:.2f} | "
                    f"{speed / base:.2f}x |"
                )
                print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# The second core: Omniglot MAML meta-steps/s",
            "",
            f"`{command_line('two_cores.py')}` on "
            f"{machine()}; {steps} meta-steps per 5-way run and a fifth of that "
            f"per 20-way run, medians of {repeats} runs "
            f"({(time.perf_counter() - start) / 60:.0f} min in all).",
            "",
            "| workload | order | way | meta-steps/s | vs the first way |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
