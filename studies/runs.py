"""What every study needs: run its sweep, read its finished runs back, restore
their trained weights, and log its figures to their W&B runs."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
import yaml
from tqdm import tqdm

from metalearn import loggers
from metalearn.build import Parts, build
from metalearn.checkpoints import Checkpointer
from metalearn.config import Config, typed
from metalearn.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    HYDRA_DIR,
    SUMMARY_FILE,
    read_history,
)
from metalearn.trainer import init_train_state

REPO = Path(__file__).resolve().parents[1]


class Run(NamedTuple):
    path: Path
    config: Config
    summary: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def algo(self) -> str:
        return self.config.algo.name


def run_sweep(sweep: str, sweep_dir: Path, overrides: list[str]) -> None:
    """`python train.py -m sweep=<sweep>` into `sweep_dir`, extra `overrides` on
    every job."""
    command = [sys.executable, str(REPO / "train.py"), "-m", f"sweep={sweep}"]
    command += [f"hydra.sweep.dir={sweep_dir}", *overrides]
    subprocess.run(command, check=True, cwd=REPO)


def load_run(path: str | Path) -> Run:
    path = Path(path)
    config = typed(json.loads((path / CONFIG_FILE).read_text()))
    summary = json.loads((path / SUMMARY_FILE).read_text())
    return Run(path, config, summary, read_history(path / HISTORY_FILE))


def runs_by(sweep_dir: Path, key: str = "variant") -> dict[str, Run]:
    """The sweep's finished runs by the value of override `key`."""
    runs = {}
    for job in sorted(p for p in sweep_dir.iterdir() if (p / HYDRA_DIR).is_dir()):
        overrides = yaml.safe_load((job / HYDRA_DIR / "overrides.yaml").read_text())
        values = dict(o.partition("=")[::2] for o in overrides or [])
        runs[values[key]] = load_run(job)
    return runs


def load_trained(run: Run) -> tuple[Parts, Any, Any]:
    """The run's parts and its final (meta-parameters, model state)."""
    parts = build(run.config)
    template = init_train_state(parts.algorithm, parts.optimizer, jax.random.key(0))
    checkpointer = Checkpointer(run.path / CHECKPOINT_DIR)
    state, _ = checkpointer.restore(template)
    checkpointer.close()
    return parts, state.meta_params, state.model_state


def attach_figures(run: Run, figures: dict[str, Path]) -> bool:
    """Logs `figures` (name -> PNG) to the run's W&B run, if it had one."""
    options = run.config.logger
    run_dirs = sorted((run.path / "wandb").glob("*run-*-*"))
    mode = loggers.wandb_mode(getattr(options, "mode", None))
    if options.name != "wandb" or mode == "disabled" or not run_dirs:
        return False
    run_id = run_dirs[0].name.rsplit("-", 1)[1]
    images = {f"figures/{name}": path for name, path in figures.items()}
    loggers.attach_images(
        run.path,
        run_id,
        images,
        options.project,
        mode,
        options.entity,
        step=run.history[-1]["step"] if run.history else None,
    )
    return True


def attach_everywhere(runs: dict[str, Run], figures: dict[str, Path]) -> None:
    """Logs the study's figures to each of its W&B runs (when W&B was on)."""
    # each W&B run is reopened to log to it: seconds per run, shown on a terminal
    bar = tqdm(runs.values(), desc="logging figures to W&B runs", unit="run",
               leave=False, disable=None)  # fmt: skip
    for run in bar:
        attach_figures(run, figures)
