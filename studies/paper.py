"""Reproduce a paper's curves: run its study, then draw its figures and table.

    python sweeps/paper.py tutorial     # the maml-jax tutorial's figures
    python sweeps/paper.py maml         # the MAML paper's sinusoid figures and table
    python sweeps/paper.py maml --sweep-dir multirun/paper_maml/<date>/<time>  # redraw

Extra arguments are Hydra overrides for every job (e.g. `outer.steps=1000`).

Figures go to docs/figures/ (override with --out); the MAML table is printed and
written beside them as maml_paper_table.md.
"""

import argparse
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from metalearn import paper

REPO = Path(__file__).resolve().parents[1]
STUDIES = {"tutorial": "paper_tutorial", "maml": "paper_maml"}


def run_study(config_name: str, sweep_dir: Path, extra: list[str]) -> None:
    command = [sys.executable, str(REPO / "train.py"), "-m", "--config-dir"]
    command += [str(REPO / "sweeps"), "--config-name", config_name]
    command += [f"hydra.sweep.dir={sweep_dir}", *extra]
    subprocess.run(command, check=True, cwd=REPO)


def runs_by_variant(sweep_dir: Path) -> dict[str, paper.Run]:
    runs = {}
    for job in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        variant = next(
            line.split("=", 1)[1].strip()
            for line in overrides.splitlines()
            if "variant=" in line
        )
        runs[variant] = paper.load_run(job)
    return runs


def tutorial_figures(sweep_dir: Path, out: Path) -> None:
    runs = runs_by_variant(sweep_dir)
    labelled = {
        "MAML (batch 1)": runs["maml_b1"],
        "batched MAML (batch 4)": runs["maml_b4"],
    }
    figures = {
        "meta_loss": out / "tutorial_meta_loss.png",
        "fit": out / "tutorial_fit.png",
    }
    paper.plot_meta_loss(labelled, figures["meta_loss"])
    paper.plot_fits(
        {"batched MAML": runs["maml_b4"]},
        shots=[20],
        steps=[0, 1, 2, 3, 4],
        path=figures["fit"],
        amplitude=0.4,
    )
    attach_everywhere(runs, figures)
    print(paper.results_table(labelled, k=20))


def attach_everywhere(runs: dict[str, paper.Run], figures: dict[str, Path]) -> None:
    """Logs the study's figures to each of its W&B runs (when W&B was on)."""
    for run in runs.values():
        paper.attach_figures(run, figures)


def maml_figures(sweep_dir: Path, out: Path) -> None:
    runs = runs_by_variant(sweep_dir)
    labelled = {
        "MAML (α=0.01)": runs["maml_b25"],
        "MAML (α=0.001)": runs["maml_b25_lr1e-3"],
        "pretrained": runs["pretrained"],
        "SGD retraining": runs["sgd"],
    }
    figures = {
        "fig2_fits": out / "maml_fig2_fits.png",
        "fig3_mse_vs_steps": out / "maml_fig3_mse_vs_steps.png",
    }
    paper.plot_fits(
        {
            "MAML (α=0.01)": runs["maml_b25"],
            "MAML (α=0.001)": runs["maml_b25_lr1e-3"],
            "pretrained": runs["pretrained"],
        },
        shots=[5, 10],
        steps=[0, 1, 10],
        path=figures["fig2_fits"],
        amplitude=4.0,
    )
    paper.plot_mse_vs_steps(labelled, [5, 10, 20], figures["fig3_mse_vs_steps"])
    attach_everywhere(runs, figures)
    tables = [paper.results_table(labelled, k=k) for k in (5, 10, 20)]
    text = "\n\n".join(tables) + "\n"
    (out / "maml_paper_table.md").write_text(text)
    print(text)


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
    parser.add_argument("overrides", nargs="*", help="extra overrides for every job")
    args = parser.parse_intermixed_args()
    sweep_dir = args.sweep_dir
    if sweep_dir is None:
        stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S.%f")
        sweep_dir = REPO / "multirun" / STUDIES[args.study] / stamp
    if not (sweep_dir / "multirun.yaml").exists():
        run_study(STUDIES[args.study], sweep_dir.absolute(), args.overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    {"tutorial": tutorial_figures, "maml": maml_figures}[args.study](
        sweep_dir, args.out
    )
    print(f"figures in {args.out}, runs in {sweep_dir}")


if __name__ == "__main__":
    main()
