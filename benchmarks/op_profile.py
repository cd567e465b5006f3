"""Where a meta-step's time goes: XLA's operations of a preset's training program,
from JAX's profiler, summed by kind.

    python benchmarks/op_profile.py            # 20-way 1-shot, second order
    python benchmarks/op_profile.py experiment=maml_paper_omniglot_5w1s algo=fomaml

The arguments after the options are `train.py` overrides (default: the MAML paper's
Omniglot 20-way 1-shot preset, second order, `algo.adapt_batch_norm=true`: the speed
table's maths). The training window is built and compiled as `train.py` builds it,
run once untimed, then `--steps` meta-steps under `jax.profiler.trace`. Each
operation's time is summed over the threads that ran it, so the operations' time /
wall time is how many threads were inside an operation at a time: an upper bound on
the cores computing, since a thread waiting inside an operation (for the pool's
other threads) counts too. The process's CPU time / wall time (the profiler's own
work included) is printed beside it. Matrix products are XLA:CPU's
`dot`s and the YNNPACK kernels it hands them to (`ynn_fusion`, which may carry
elementwise work fused into them); the rest is data movement (copies and transposes,
slices, pads, concatenations) and elementwise work. Control flow (`while`) and the
host's waits are left out: they contain or overlap the operations; so is the
all-reduce that sums the devices' meta-gradients (listed on its own), which is
mostly one device waiting for the other.

Prints a table and writes it to `--out`.
"""

import argparse
import collections
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

from throughput import command_line, machine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT = [
    "experiment=maml_paper_omniglot_20w1s",
    "algo=maml",
    "algo.adapt_batch_norm=true",
]
MATRIX_PRODUCTS = ("ynn_fusion", "dot")
NOT_OPERATIONS = re.compile(  # control flow, the runtime's own spans, Python's,
    # and the devices' wait for each other inside an all-reduce
    r"^(while|conditional|call)(\.\d+)?$"
    r"|^(ThunkExecutor|ThreadpoolListener|Slinky|PjRt|Execute|Rendezvous)|[ ($:]"
)
BETWEEN_DEVICES = ("all-reduce",)  # mostly one device waiting for the other


def kind_of(name: str) -> str:
    """An operation's kind: its name without the number XLA appends."""
    return re.sub(r"[.\d]+$", "", name)


def operation_times(events: list[dict]) -> tuple[collections.Counter, float]:
    """Microseconds per operation name, summed over a trace's complete events on
    the runtime's threads (not Python's), leaving out what is not one operation
    (control flow, the runtime's own spans); and the microseconds from the first
    operation's start to the last one's end."""
    python = {
        (event.get("pid"), event.get("tid"))
        for event in events
        if event.get("ph") == "M"
        and event.get("name") == "thread_name"
        and event.get("args", {}).get("name") == "python"
    }
    times: collections.Counter = collections.Counter()
    first, last = float("inf"), float("-inf")
    for event in events:
        name = event.get("name", "")
        if (
            event.get("ph") == "X"
            and (event.get("pid"), event.get("tid")) not in python
            and not NOT_OPERATIONS.search(name)
        ):
            times[name] += event.get("dur", 0)
            first = min(first, event["ts"])
            last = max(last, event["ts"] + event.get("dur", 0))
    return times, last - first


def truncated(span: float, wall: float) -> bool:
    """Whether operations from the first one's start to the last one's end, `span`
    seconds, fall well short of the traced run's `wall` seconds: the profiler keeps
    a bounded number of events and drops the rest."""
    return wall - span > max(0.1 * wall, 0.05)


def profile(
    overrides: list[str], steps: int
) -> tuple[float, float, collections.Counter]:
    """Wall seconds per meta-step, the process's CPU seconds per meta-step, and the
    operations' microseconds per meta-step."""
    import jax
    import jax.numpy as jnp
    from ours import compiled_training

    _, _, compiled, state, data, _ = compiled_training(overrides)
    state, metrics = compiled(state, data, jnp.int32(2))  # warm-up
    jax.device_get(metrics)
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            start, cpu_start = time.perf_counter(), time.process_time()
            state, metrics = compiled(state, data, jnp.int32(steps))
            jax.device_get(metrics)
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
        paths = list(Path(folder).rglob("*.trace.json.gz"))
        if len(paths) != 1:
            raise SystemExit(
                f"jax.profiler.trace wrote {len(paths)} Perfetto traces, not one"
            )
        with gzip.open(paths[0]) as file:
            trace = json.load(file)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    times, span = operation_times(events)
    if truncated(span / 1e6, wall):
        raise SystemExit(
            f"--steps {steps}: the trace holds only the first {span / 1e6:.2f} s of "
            f"{wall:.2f} s (the profiler keeps a bounded number of events); trace "
            "fewer meta-steps"
        )
    return (
        wall / steps,
        cpu / steps,
        collections.Counter({name: t / steps for name, t in times.items()}),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="meta-steps traced")
    parser.add_argument("--top", type=int, default=12, help="kinds listed")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_op_profile.md")
    parser.add_argument("overrides", nargs="*", help="train.py overrides")
    args = parser.parse_args()
    overrides = args.overrides or DEFAULT
    if args.data_root:
        overrides = [*overrides, f"data.root={args.data_root}"]
    wall, cpu, times = profile(overrides, args.steps)
    kinds: collections.Counter = collections.Counter()
    for name, t in times.items():
        kinds[kind_of(name)] += t
    between = sum(kinds.pop(k, 0.0) for k in BETWEEN_DEVICES)
    busy = sum(kinds.values())
    products = sum(kinds[k] for k in MATRIX_PRODUCTS)

    def row(label: str, micros: float) -> str:
        return f"| {label} | {micros / 1e3:.1f} | {100 * micros / busy:.0f}% |"

    text = "\n".join(
        [
            "# Where a meta-step's time goes",
            "",
            f"`{command_line('op_profile.py')}` "
            f"({' '.join(overrides)}) on {machine()}; "
            f"{args.steps} meta-steps traced.",
            "",
            f"{1 / wall:.2f} meta-steps/s under the profiler ({wall * 1e3:.0f} ms "
            f"each); the process used {cpu / wall:.2f} cores (CPU time over wall "
            f"time); its operations ran {busy / 1e3:.0f} ms of thread time per "
            f"meta-step, {busy / 1e6 / wall:.2f} threads inside an operation at a "
            "time (an upper bound on the cores computing).",
            "",
            "| operations | ms per meta-step (all threads) | share |",
            "|---|---|---|",
            row("matrix products (`ynn_fusion`, `dot`)", products),
            row("everything else", busy - products),
            f"| (the devices' all-reduce, mostly waiting) | {between / 1e3:.1f} | |",
            *[row(f"`{kind}`", t) for kind, t in kinds.most_common(args.top)],
        ]
    )
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
