"""Hydra callbacks, registered in `conf/config.yaml` under `hydra.callbacks`.

They run before Hydra creates or writes anything for a run or a sweep, so a run
that is refused here leaves no trace: an unwritable output dir, a `resume=` of a
dir that holds no run (nothing is created there), a multirun into a sweep dir that
holds another sweep (its `multirun.yaml` is kept). At the end of a multirun one
line per job says how it ended, and how to get the report.
"""

import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from metalearn.rundir import (
    CONFIG_FILE,
    HYDRA_DIR,
    STATUS_FILE,
    SUMMARY_FILE,
    SWEEP_RECORD,
    ExitCode,
    State,
    has_checkpoint,
    read_json,
    read_state,
)


def _refuse(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(ExitCode.REFUSED)


def _require_writable(key: str, directory: str) -> None:
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        _refuse(
            f"{key}={directory}: cannot write the output dir ({error.strerror}); "
            "choose a writable path"
        )


def _require_run(directory: str) -> None:
    """`resume=` must name a run's output dir; nothing is created if it does not."""
    path = Path(directory)
    if not (path / CONFIG_FILE).is_file() or not has_checkpoint(path):
        _refuse(
            f"resume={directory} is not allowed: it must be the output dir of a run "
            f"that saved a checkpoint ({CONFIG_FILE} and checkpoints/<step>/)"
        )


def _require_same_sweep(config: DictConfig) -> None:
    """A sweep dir may be reused by the same sweep (to continue its jobs), not by
    another one, which would relabel the first sweep's results."""
    record = Path(config.hydra.sweep.dir) / SWEEP_RECORD
    if not record.is_file():
        return
    before = yaml.safe_load(record.read_text())["hydra"]["overrides"]["task"]
    now = OmegaConf.to_container(config.hydra.overrides.task)
    if sorted(before or []) != sorted(now or []):
        _refuse(
            f"hydra.sweep.dir={config.hydra.sweep.dir} holds another sweep "
            f"({' '.join(before or []) or 'no overrides'}); choose a new sweep dir"
        )


class OutputDirCheck(Callback):
    """Refuses, with one line and before anything is written, what would fail or
    overwrite another run's results."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("resume") is not None:
            _require_run(config.resume)
        _require_writable("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable("hydra.sweep.dir", config.hydra.sweep.dir)
        _require_same_sweep(config)


class SweepSummary(Callback):
    """At the end of a multirun: one line per job (state, objective) and the
    command that reports the sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted(
            (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
            key=lambda p: int(p.name),
        )
        print(f"Sweep of {len(jobs)} job(s) in {sweep_dir}:")
        for job in jobs:
            print(f"  {job_line(job)}")
        print(f"Report: python -m metalearn.report {sweep_dir}")
        failed = [job.name for job in jobs if read_state(job) != State.FINISHED]
        if failed:
            print(f"{len(failed)} job(s) did not finish: {', '.join(failed)}")
            print(f"Run them again: python -m metalearn.rerun {sweep_dir}")
            sys.exit(ExitCode.FAILED)


def job_line(job: Path) -> str:
    """`<job>: <state>, objective <value> (<overrides>)` from the job's files."""
    state = read_state(job)
    summary = read_json(job / SUMMARY_FILE) or {}
    overrides = read_overrides(job)
    value = summary.get("objective")
    score = f", objective {value:.4g}" if isinstance(value, int | float) else ""
    status = read_json(job / STATUS_FILE) or {}
    why = f": {status['error']}" if "error" in status else ""
    return f"{job.name}: {state or 'not started'}{score}{why} ({overrides})"


def read_overrides(job: Path) -> str:
    path = job / HYDRA_DIR / "overrides.yaml"
    try:
        return " ".join(yaml.safe_load(path.read_text()) or []) or "no overrides"
    except (OSError, yaml.YAMLError):
        return "?"
