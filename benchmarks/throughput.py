"""Throughput benchmark: metalearn's trainer vs a tutorial-style loop, same machine.

    python benchmarks/throughput.py          # prints a table, writes RESULTS.md
    python benchmarks/throughput.py --quick  # fewer steps, for a smoke test

Each row runs in its own process (clean compile times and peak memory):
steps/s excludes compilation, which is reported on its own; wall is the whole
process; peak RSS is the process's maximum resident memory; XLA temp is the
compiled training program's scratch memory (what grows with inner steps).
The head-to-head rows and the whole-process timings run `--repeats` times,
interleaved (ours, reference, ours, ...), and report the median: a shared
machine's speed drifts by tens of percent between runs.
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
        # its own error is on stderr just above
        raise SystemExit(f"{' '.join(command)} failed")
    lines = [line for line in output.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    result["process_wall_s"] = wall
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def ours(tasks, k, lr, amp, steps, *overrides, inner_steps=1) -> dict:
    command = [sys.executable, str(HERE / "ours.py"), "--steps", str(steps)]
    command += ["task=sinusoid", f"task.amp_max={amp}", f"outer.batch={tasks}"]
    command += [f"inner.k={k}", f"inner.lr={lr}", f"inner.steps={inner_steps}"]
    return measure([*command, *overrides])


def reference(tasks, k, lr, amp, steps, sampling="tutorial") -> dict:
    command = [sys.executable, str(HERE / "reference_loop.py"), "--tasks", str(tasks)]
    command += ["--k", str(k), "--inner-lr", str(lr), "--amp-max", str(amp)]
    command += ["--steps", str(steps), "--sampling", sampling]
    return measure(command)


def command_line(script: str) -> str:
    """How `script` (a file in benchmarks/) was run, its arguments included, for a
    results file to quote."""
    return " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]])


def machine() -> str:
    """What a benchmark ran on, and when: e.g. 'x86_64 (2 cores), JAX 0.10.2 on
    cpu, AMD EPYC with AVX-512, 2026-12-03'."""
    return f"{platform.machine()} ({os.cpu_count()} cores), {jax_device()}, " + (
        cpu_and_date()
    )


def cpu_and_date() -> str:
    """The CPU's model name, whether it has AVX-512, and today's date."""
    model, avx512 = platform.processor() or platform.machine(), False
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                avx512 = "avx512f" in value.split()
                break
    extension = " with AVX-512" if avx512 else ""
    return f"{model}{extension}, {time.strftime('%Y-%m-%d')}"


def jax_device() -> str:
    """JAX's version and what it runs on, e.g. 'JAX 0.10.2 on cpu'."""
    probe = (
        "import jax; d = jax.devices()[0]; "
        "print(jax.__version__, '|', d.platform, '|', d.device_kind)"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    version, platform_name, kind = (part.strip() for part in output.split("|"))
    return f"JAX {version} on {platform_name if platform_name == 'cpu' else kind}"


def runs_label(repeats: int) -> str:
    return "one run each" if repeats == 1 else f"medians of {repeats} interleaved runs"


def median_of(runs: list[dict]) -> dict:
    """Each number's median over repeated runs (peak RSS: the largest)."""
    merged = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    merged["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    return merged


def interleaved(repeats: int, **commands) -> dict[str, dict]:
    """Runs each named zero-argument command `repeats` times, in turn; medians."""
    runs = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            runs[name].append(command())
    return {name: median_of(results) for name, results in runs.items()}


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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--skip-whole-process",
        action="store_true",
        help="leave out the train.py timings (for a machine without Hydra and W&B)",
    )
    args = parser.parse_args()
    ours_steps, ref_steps = (2000, 300) if args.quick else (20000, 3000)
    repeats = 1 if args.quick else args.repeats
    lines = [
        f"Machine: {machine()}; `{command_line('throughput.py')}`",
        "",
        "### Ours vs the tutorial-style loop (second-order MAML, 1 inner step; "
        f"{runs_label(repeats)})",
        "",
        *HEADER,
    ]
    ratios = []
    for name, workload in WORKLOADS.items():
        runs = interleaved(
            repeats,
            ours=lambda w=workload: ours(*w, ours_steps),
            tutorial=lambda w=workload: reference(*w, ref_steps),
            vectorised=lambda w=workload: reference(*w, ref_steps, "vectorised"),
        )
        lines += [
            row(f"metalearn, {name}", runs["ours"]),
            row(f"reference, {name}", runs["tutorial"]),
            row(f"reference with vectorised sampling, {name}", runs["vectorised"]),
        ]
        ours_speed = runs["ours"]["steps_per_s"]
        ratios.append(
            (
                name,
                ours_speed / runs["tutorial"]["steps_per_s"],
                ours_speed / runs["vectorised"]["steps_per_s"],
            )
        )
    lines += [
        "",
        "| workload | steps/s ours / reference | ours / reference with "
        "vectorised sampling |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {a:.1f}x | {b:.1f}x |" for name, a, b in ratios]

    tutorial = WORKLOADS["tutorial (4 tasks, K=20)"]
    paper = WORKLOADS["MAML paper (25 tasks, K=10)"]
    lines += [
        "",
        "### First vs second order; inner steps; remat (paper workload; one run each)",
        "",
    ]
    lines += HEADER
    variants = [
        ("second order, 1 step", [], 1),
        ("first order, 1 step", ["algo.first_order=true"], 1),
    ]
    for steps in (5, 20):
        variants += [(f"second order, {steps} steps", [], steps)]
        remat = ["algo.remat=true"]
        variants += [(f"second order, {steps} steps, remat", remat, steps)]
    for name, flags, inner in variants:
        n = max(ours_steps // (5 * inner), 200)
        lines.append(row(name, ours(*paper, n, *flags, inner_steps=inner)))

    if args.skip_whole_process:
        return finish(lines, args.out)
    total = 2000 if args.quick else 20000
    lines += [
        "",
        f"### Whole process: {total} steps of the tutorial workload (no-cache row: "
        f"one run; the others: {runs_label(repeats)})",
        "",
    ]
    lines += ["| command | wall s |", "|---|---|"]
    train = [sys.executable, "train.py", f"outer.steps={total}"]
    cold = measure([*train, "train.compile_cache=null"])
    measure(train)  # fills the compile cache
    runs = interleaved(
        repeats,
        warm=lambda: measure(train),
        tutorial=lambda: reference(*tutorial, total),
        vectorised=lambda: reference(*tutorial, total, "vectorised"),
    )
    warm = runs["warm"]["process_wall_s"]
    lines += [
        "| `python train.py train.compile_cache=null` (W&B offline, no cache) | "
        f"{cold['process_wall_s']:.1f} |",
        f"| `python train.py` (W&B offline, warm compile cache) | {warm:.1f} |",
        "| `python benchmarks/reference_loop.py` | "
        f"{runs['tutorial']['process_wall_s']:.1f} |",
        "| `python benchmarks/reference_loop.py --sampling vectorised` | "
        f"{runs['vectorised']['process_wall_s']:.1f} |",
        "| ratio `python train.py` (warm) / reference | "
        f"{warm / runs['tutorial']['process_wall_s']:.2f} |",
        "| ratio `python train.py` (warm) / reference with vectorised sampling | "
        f"{warm / runs['vectorised']['process_wall_s']:.2f} |",
    ]
    finish(lines, args.out)


def finish(lines: list[str], out: Path) -> None:
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
