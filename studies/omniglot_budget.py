"""Omniglot under a 15-minute training budget on this machine: the runs an issue's
acceptance names, one after the other, and their table.

    python studies/omniglot_budget.py                  # all six (~2 h on 2 cores)
    python studies/omniglot_budget.py --only fo5w1s    # one of them
    python studies/omniglot_budget.py --only so5w1s mamlpp5w1s --seeds 1 2
    python studies/omniglot_budget.py --tabulate-only  # the table of runs made before
    python studies/omniglot_budget.py --tabulate-only --out docs/figures  # the docs

Each run is `python train.py <its overrides> train.max_minutes=<M>` into
`<--runs>/<name>`, W&B offline as usual; the table (written to
`<--runs>/omniglot_budget.md`, or into the folder `--out` names: the docs' copy is
`--out docs/figures`) gives the meta-steps each run got in the budget,
its speed, and the test accuracy (600 tasks, ± 95% CI) at step 0 (chance: nothing of
a test task leaks), after the paper's test steps and after 10. Seed 0 runs into
`<name>`, seed s into `<name>_seed<s>`; rows run with more than one seed also get
their mean over seeds with a 95% t-interval over seeds, and MAML++ and MAML run with
the same seeds get their paired difference.
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from metalearn.report import mean_ci

REPO = Path(__file__).resolve().parents[1]

RUNS = {
    # the MAML paper's 5-way 1-shot preset (the reference code's loss scale and
    # alpha) at learn2learn's meta-lr
    "fo5w1s": ["experiment=maml_paper_omniglot_5w1s", "algo=fomaml", "outer.lr=0.003"],
    # learn2learn's recipe: alpha 0.4 on the mean cross-entropy (5x smaller steps)
    "fo5w1s_mean": [
        "experiment=maml_paper_omniglot_5w1s",
        "algo=fomaml",
        "outer.lr=0.003",
        "task.loss_scale=mean",
    ],  # fmt: skip
    "fo20w1s": ["experiment=maml_paper_omniglot_20w1s", "algo=fomaml"],
    "so5w1s": ["experiment=maml_paper_omniglot_5w1s", "algo=maml", "outer.lr=0.003"],
    # MAML++'s options (variant=mamlpp) on so5w1s's setting: issue #14's
    # "MAML++ >= plain MAML in the same budget"
    "mamlpp5w1s": [
        "experiment=maml_paper_omniglot_5w1s",
        "variant=mamlpp",
        "outer.lr=0.003",
    ],
    # Prototypical Networks on the same episodes (issue #14's acceptance: >= 97%)
    "protonet5w1s": ["experiment=maml_paper_omniglot_5w1s", "algo=protonet"],
}


def run_name(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}_seed{seed}"


def train_run(name: str, seed: int, runs_dir: Path, minutes: float) -> int:
    command = [sys.executable, str(REPO / "train.py"), *RUNS[name], f"seed={seed}"]
    run_dir = runs_dir / run_name(name, seed)
    command += [f"train.max_minutes={minutes}", f"hydra.run.dir={run_dir}"]
    print(" ".join(command[1:]), flush=True)
    return subprocess.run(command, cwd=REPO).returncode


class BudgetRun(NamedTuple):
    name: str  # its dir's name: <name in RUNS>[_seed<s>]
    summary: dict
    config: dict


def finished(runs_dir: Path) -> dict[str, dict[int, BudgetRun]]:
    """The finished runs in `runs_dir`, each read once: {name in RUNS: {seed: run}}."""
    found: dict[str, dict[int, BudgetRun]] = {}
    for path in sorted(runs_dir.glob("*/summary.json")):
        match = re.fullmatch(r"(.+?)(?:_seed([1-9]\d*))?", path.parent.name)
        if match and match[1] in RUNS:
            config = json.loads((path.parent / "config.json").read_text())
            run = BudgetRun(path.parent.name, json.loads(path.read_text()), config)
            found.setdefault(match[1], {})[int(match[2] or 0)] = run
    return {name: dict(sorted(found[name].items())) for name in RUNS if name in found}


def paper_score(run: BudgetRun) -> float:
    """Test accuracy (%) after the paper's test steps."""
    return 100 * run.summary[f"eval/{run.config['eval']['objective']}"]


def mean_t_ci(values: list[float], signed: bool = False) -> str:
    """Mean ± the half-width of a 95% t-interval over `values`, and each value."""
    form = "+.1f" if signed else ".1f"
    mean, half = mean_ci(values)
    each = ", ".join(f"{value:{form}}" for value in values)
    return f"{mean:{form}} ± {half:.1f} ({each})"


def row(run: BudgetRun) -> str:
    summary, config = run.summary, run.config

    def acc(step: int | str) -> str:
        mean = 100 * summary[f"eval/acc@step{step}"]
        return f"{mean:.1f} ± {100 * summary[f'eval/acc_ci95@step{step}']:.1f}"

    paper_steps = config["eval"]["objective"].partition("@step")[2]
    order = "first" if config["algo"].get("first_order") else "second"
    if config["algo"].get("name") == "protonet":
        order = "none"  # no inner gradient steps
    steps = int(summary["train/steps"])
    return (
        f"| {run.name} | {config['task']['ways']}w{config['inner']['k']}s | {order} "
        f"| {config['task']['loss_scale']} | {config['inner']['lr']} "
        f"| {config['outer']['lr']} | {steps:,} "
        f"| {steps / summary['train/seconds']:.2f} | {acc(0)} "
        f"| {acc(paper_steps)} (step {paper_steps}) | {acc(10)} |"
    )


def table(runs_dir: Path) -> str:
    lines = [
        "| run | setting | order | task.loss_scale | inner.lr | outer.lr "
        "| meta-steps | meta-steps/s | acc, step 0 | acc, paper's test steps "
        "| acc, 10 steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = finished(runs_dir)
    lines += [row(run) for seeds in runs.values() for run in seeds.values()]
    seeded = {name: seeds for name, seeds in runs.items() if len(seeds) > 1}
    if seeded:
        lines += [
            "",
            "| run | seeds | meta-steps | acc, paper's test steps: mean over seeds "
            "± 95% t-interval (each seed) |",
            "|---|---|---|---|",
        ]
        for name, seeds in seeded.items():
            steps = [int(run.summary["train/steps"]) for run in seeds.values()]
            scores = [paper_score(run) for run in seeds.values()]
            lines.append(
                f"| {name} | {', '.join(map(str, seeds))} "
                f"| {min(steps):,}–{max(steps):,} | {mean_t_ci(scores)} |"
            )
    plain, mamlpp = runs.get("so5w1s", {}), runs.get("mamlpp5w1s", {})
    paired = sorted(set(plain) & set(mamlpp))
    if len(paired) > 1:
        differences = [paper_score(mamlpp[s]) - paper_score(plain[s]) for s in paired]
        lines += [
            "",
            "MAML++ options minus plain MAML, paired by seed "
            f"({', '.join(map(str, paired))}): "
            f"{mean_t_ci(differences, signed=True)} points.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument(
        "--runs", type=Path, default=REPO / "multirun" / "omniglot_budget"
    )
    parser.add_argument("--only", choices=sorted(RUNS), nargs="*")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tabulate-only", action="store_true")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for omniglot_budget.md (default: the --runs folder; the docs' "
        "copy: docs/figures)",
    )
    args = parser.parse_args()
    failed = []
    if not args.tabulate_only:
        jobs = [(name, seed) for seed in args.seeds for name in args.only or RUNS]
        # a bar on a terminal only: each run is minutes of its own output
        for name, seed in tqdm(
            jobs, desc="omniglot budget runs", unit="run", disable=None
        ):
            if train_run(name, seed, args.runs, args.minutes):
                failed.append(run_name(name, seed))
    if failed:
        print(f"did not finish: {', '.join(failed)}", file=sys.stderr)
    if not finished(args.runs):
        print(f"no finished runs in {args.runs}: no table written", file=sys.stderr)
        return 1
    text = table(args.runs)
    out = (args.out or args.runs) / "omniglot_budget.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
