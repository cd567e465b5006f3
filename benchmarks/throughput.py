"""Throughput benchmark: metalearn's trainer vs a tutorial-style loop, same machine.

    python benchmarks/throughput.py          # prints a table, writes RESULTS.md
    python benchmarks/throughput.py --quick  # fewer steps, for a smoke test

Each row runs in its own process (clean compile times and peak memory):
steps/s excludes compilation, which is reported on its own; wall is the whole
process; peak RSS is the process's maximum resident memory; XLA temp is the
compiled training program's scratch memory (what grows with inner steps).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKLOADS = {  # name -> (tasks per step, K, inner lr, amplitude max)
    "tutorial (4 tasks, K=20)": (4, 20, 0.1, 0.5),
    "MAML paper (25 tasks, K=10)": (25, 10, 0.01, 5.0),
}


def measure(command: list[str]) -> dict:
    """Runs `command`; its JSON stdout plus wall time and peak RSS."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    output = process.stdout.read()
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed")
    lines = [line for line in output.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    result["process_wall_s"] = wall
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def ours(tasks, k, lr, amp, steps, *flags, inner_steps=1) -> dict:
    command = [sys.executable, str(HERE / "ours.py"), "--tasks", str(tasks)]
    command += ["--k", str(k), "--inner-lr", str(lr), "--amp-max", str(amp)]
    command += ["--steps", str(steps), "--inner-steps", str(inner_steps), *flags]
    return measure(command)


def reference(tasks, k, lr, amp, steps) -> dict:
    command = [sys.executable, str(HERE / "reference_loop.py"), "--tasks", str(tasks)]
    command += ["--k", str(k), "--inner-lr", str(lr), "--amp-max", str(amp)]
    command += ["--steps", str(steps)]
    return measure(command)


def row(name: str, r: dict) -> str:
    temp = f"{r['program_temp_mb']:.2f}" if "program_temp_mb" in r else "-"
    return (
        f"| {name} | {r['steps_per_s']:,.0f} | {r['compile_s']:.2f} | "
        f"{r['process_wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {temp} |"
    )


HEADER = [
    "| run | steps/s | compile s | wall s | peak RSS MB | XLA temp MB |",
    "|---|---|---|---|---|---|",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    ours_steps, ref_steps = (2000, 300) if args.quick else (20000, 3000)
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; `python benchmarks/throughput.py`",
        "",
        "### Ours vs the tutorial-style loop (second-order MAML, 1 inner step)",
        "",
        *HEADER,
    ]
    ratios = []
    for name, workload in WORKLOADS.items():
        mine = ours(*workload, ours_steps)
        theirs = reference(*workload, ref_steps)
        lines += [row(f"metalearn, {name}", mine), row(f"reference, {name}", theirs)]
        ratios.append((name, mine["steps_per_s"] / theirs["steps_per_s"]))
    lines += ["", "| workload | steps/s ours / reference |", "|---|---|"]
    lines += [f"| {name} | {ratio:.1f}x |" for name, ratio in ratios]

    tutorial = WORKLOADS["tutorial (4 tasks, K=20)"]
    paper = WORKLOADS["MAML paper (25 tasks, K=10)"]
    lines += ["", "### First vs second order; inner steps; remat (paper workload)", ""]
    lines += HEADER
    variants = [
        ("second order, 1 step", [], 1),
        ("first order, 1 step", ["--first-order"], 1),
    ]
    for steps in (5, 20):
        variants += [(f"second order, {steps} steps", [], steps)]
        variants += [(f"second order, {steps} steps, remat", ["--remat"], steps)]
    for name, flags, inner in variants:
        n = max(ours_steps // (5 * inner), 200)
        lines.append(row(name, ours(*paper, n, *flags, inner_steps=inner)))

    lines += ["", "### Whole process: 20000 steps of the tutorial workload", ""]
    lines += ["| command | wall s |", "|---|---|"]
    total = 2000 if args.quick else 20000
    train = [sys.executable, "train.py", f"outer.steps={total}"]
    cold = measure([*train, "logger=none", "train.compile_cache=null"])
    measure(train)  # fills the compile cache
    warm = measure(train)
    ref = reference(*tutorial, total)
    lines += [
        "| `python train.py logger=none train.compile_cache=null` (no cache) | "
        f"{cold['process_wall_s']:.1f} |",
        "| `python train.py` (W&B offline, warm compile cache) | "
        f"{warm['process_wall_s']:.1f} |",
        f"| `python benchmarks/reference_loop.py` | {ref['process_wall_s']:.1f} |",
        "| ratio `python train.py` (warm) / reference | "
        f"{warm['process_wall_s'] / ref['process_wall_s']:.2f} |",
    ]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
