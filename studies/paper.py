"""Reproduce a paper's curves: run its study, then draw its figures and table.

    python studies/paper.py tutorial     # the maml-jax tutorial's figures
    python studies/paper.py maml         # the MAML paper's sinusoid figures and table
    python studies/paper.py maml --sweep-dir multirun/paper_maml/<date>/<time>  # redraw
    python studies/paper.py omniglot --budget-minutes 15   # Table 1, 15 min per run
    python studies/paper.py mini_imagenet                 # Table 1's miniImageNet rows
    python studies/paper.py compare_omniglot              # every algorithm, ~1 h of CPU

Each study is a sweep (`conf/sweep/paper_<study>.yaml`, a Hydra multirun whose jobs
are W&B runs) plus its figure code (`studies/<family>.py`). Extra arguments are
Hydra overrides for every job (e.g. `outer.steps=1000`). Figures go to
docs/figures/ (override with --out) and are logged to the study's W&B runs; the
table is printed.
"""

import argparse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import omniglot
import sinusoid
from runs import REPO, run_sweep


class Study(NamedTuple):
    sweep: str  # conf/sweep/<sweep>.yaml
    figures: Callable[[Path, Path], str]  # (sweep dir, out dir) -> table


STUDIES = {
    "tutorial": Study("paper_tutorial", sinusoid.tutorial_figures),
    "maml": Study("paper_maml", sinusoid.maml_figures),
    "omniglot": Study("paper_omniglot", omniglot.omniglot_figures),
    "mini_imagenet": Study("paper_mini_imagenet", omniglot.mini_imagenet_figures),
    "compare_omniglot": Study("compare_omniglot", omniglot.comparison_figures),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument(
        "--sweep-dir",
        type=Path,
        help="where the study's runs go; if it already holds them, only redraw",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        help="train each run for at most this many minutes (train.max_minutes)",
    )
    parser.add_argument("overrides", nargs="*", help="extra overrides for every job")
    args = parser.parse_intermixed_args()
    study = STUDIES[args.study]
    sweep_dir = args.sweep_dir
    if sweep_dir is None:
        stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S.%f")
        sweep_dir = REPO / "multirun" / study.sweep / stamp
    overrides = list(args.overrides)
    if args.budget_minutes is not None:
        overrides.append(f"train.max_minutes={args.budget_minutes}")
    if not (sweep_dir / "multirun.yaml").exists():
        run_sweep(study.sweep, sweep_dir.absolute(), overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    print(study.figures(sweep_dir, args.out))
    print(f"figures in {args.out}, runs in {sweep_dir}")


if __name__ == "__main__":
    main()
