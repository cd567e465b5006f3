"""Does the second CPU core help? Omniglot MAML meta-steps/s under each way to use it.

    python benchmarks/two_cores.py            # writes RESULTS_two_cores.md
    python benchmarks/two_cores.py --quick

XLA:CPU runs these programs mostly on one core. The ways tried, each on the MAML
paper's Omniglot 5-way 1-shot preset (meta-batch 32), second and first order, in
its own process (`benchmarks/ours.py`), medians of `--repeats` runs in turn:

- `one device`: the default (one host device; XLA's own intra-op threads);
- `2 devices`: two host devices (`JAX_NUM_CPU_DEVICES=2`), the meta-batch sharded
  over them (`train.devices=0`, all), each device's share on its own thread;
- `2 devices, no eigen threads`: the same with `--xla_cpu_multi_thread_eigen=false`,
  so the two devices' threads do not also compete for Eigen's pool;
- `two jobs side by side`: two single-device runs at once (what a sweep with the
  joblib launcher and `n_jobs=2` does): the sum of their meta-steps/s.

Needs the prepared Omniglot data (`python -m metalearn.data omniglot`).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from throughput import jax_device

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PRESET = "maml_paper_omniglot_5w1s"
SETUPS = {
    "one device": {},
    "2 devices": {"JAX_NUM_CPU_DEVICES": "2"},
    "2 devices, no eigen threads": {
        "JAX_NUM_CPU_DEVICES": "2",
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    },
}


def command(order: str, steps: int, root) -> list[str]:
    line = [sys.executable, str(HERE / "ours.py"), "--steps", str(steps)]
    line += [f"experiment={PRESET}", "algo=fomaml" if order == "first" else "algo=maml"]
    return line + ([f"data.root={root}"] if root else [])


def run(processes: int, env: dict, order: str, steps: int, root) -> float:
    """Meta-steps/s of `processes` runs started together (summed)."""
    started = [
        subprocess.Popen(
            command(order, steps, root),
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for _ in range(processes)
    ]
    total = 0.0
    for process in started:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command(order, steps, root))} failed")
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
    for order in ("second", "first"):
        ways = [(name, 1, env) for name, env in SETUPS.items()]
        ways.append(("two jobs side by side", 2, {}))
        speeds: dict[str, list[float]] = {name: [] for name, _, _ in ways}
        for _ in range(repeats):  # in turn, so drift touches every way alike
            for name, processes, env in ways:
                speeds[name].append(run(processes, env, order, steps, args.data_root))
        base = statistics.median(speeds["one device"])
        for name, _, _ in ways:
            speed = statistics.median(speeds[name])
            rows.append(f"| {order} | {name} | {speed:.2f} | {speed / base:.2f}x |")
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# The second core: Omniglot 5-way 1-shot MAML meta-steps/s",
            "",
            f"`python benchmarks/two_cores.py{' --quick' if args.quick else ''}` on "
            f"{platform.machine()} ({os.cpu_count()} cores), {jax_device()}; "
            f"{steps} meta-steps per run, medians of {repeats} runs "
            f"({(time.perf_counter() - start) / 60:.0f} min in all).",
            "",
            "| order | way | meta-steps/s | vs one device |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
