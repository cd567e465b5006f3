"""Omniglot under a 15-minute training budget on this machine: the runs an issue's
acceptance names, one after the other, and their table.

    python studies/omniglot_budget.py                  # all six (~2 h on 2 cores)
    python studies/omniglot_budget.py --only fo5w1s    # one of them
    python studies/omniglot_budget.py --tabulate-only  # the table of runs made before

Each run is `python train.py <its overrides> train.max_minutes=<M>` into
`<--runs>/<name>`, W&B offline as usual; the table (written to
`docs/figures/omniglot_budget.md`) gives the meta-steps each run got in the budget,
its speed, and the test accuracy (600 tasks, ± 95% CI) at step 0 (chance: nothing of
a test task leaks), after the paper's test steps and after 10.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

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


def run(name: str, runs_dir: Path, minutes: float) -> int:
    command = [sys.executable, str(REPO / "train.py"), *RUNS[name]]
    command += [f"train.max_minutes={minutes}", f"hydra.run.dir={runs_dir / name}"]
    print(" ".join(command[1:]), flush=True)
    return subprocess.run(command, cwd=REPO).returncode


def row(name: str, run_dir: Path) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())

    def acc(step: int | str) -> str:
        mean = 100 * summary[f"eval/acc@step{step}"]
        return f"{mean:.1f} ± {100 * summary[f'eval/acc_ci95@step{step}']:.1f}"

    paper_steps = config["eval"]["objective"].partition("@step")[2]
    order = "first" if config["algo"].get("first_order") else "second"
    if config["algo"].get("name") == "protonet":
        order = "none"  # no inner gradient steps
    steps = int(summary["train/steps"])
    return (
        f"| {name} | {config['task']['ways']}w{config['inner']['k']}s | {order} "
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
    lines += [
        row(name, runs_dir / name)
        for name in RUNS
        if (runs_dir / name / "summary.json").is_file()
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
    parser.add_argument("--tabulate-only", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    args = parser.parse_args()
    failed = []
    if not args.tabulate_only:
        names = args.only or list(RUNS)
        # a bar on a terminal only: each run is minutes of its own output
        for name in tqdm(names, desc="omniglot budget runs", unit="run", disable=None):
            if run(name, args.runs, args.minutes):
                failed.append(name)
    text = table(args.runs)
    (args.out / "omniglot_budget.md").write_text(text)
    print(text)
    if failed:
        print(f"did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
