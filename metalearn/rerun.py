"""`python -m metalearn.rerun <sweep dir>`: finish the jobs of a multirun that did
not finish.

A job whose process was killed from outside (a joblib worker, the kernel's
out-of-memory killer, a lost node) leaves its dir unfinished, or no dir at all when
it never started; with the joblib launcher the kill also ends the launch, so later
jobs never start. This command rebuilds the sweep's grid from the `multirun.yaml`
Hydra wrote into the sweep dir (the basic sweeper's jobs, in its order, so job `i`
is dir `i`) and runs every job that is not finished, one after the other, in its
own dir: a job with a checkpoint continues from it, any other starts afresh. Its W&B
run stays in the sweep's group. `--dry-run` prints the commands instead.
"""

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from metalearn.rundir import SWEEP_RECORD, ExitCode, State, read_state, sweep_group

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class RerunError(ValueError):
    """The sweep dir cannot be rerun; the message says why."""


def multirun_hydra(sweep_dir: Path) -> dict:
    """The `hydra` section of the sweep's `multirun.yaml`, as written."""
    path = sweep_dir / SWEEP_RECORD
    if not path.is_file():
        raise RerunError(f"{sweep_dir} is not a multirun's dir: no {SWEEP_RECORD}")
    try:
        return yaml.safe_load(path.read_text())["hydra"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise RerunError(f"cannot read {path}: {error}") from None


def sweep_jobs(hydra: dict) -> list[list[str]]:
    """The overrides of every job of a multirun, in job order, from the `hydra`
    section of its `multirun.yaml`."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    sweeper = hydra["sweeper"].get("_target_")
    if sweeper != BASIC_SWEEPER:
        raise RerunError(
            f"only the basic sweeper's grid can be rebuilt, not {sweeper}'s: "
            "rerun its jobs by hand (python -m metalearn.report lists them)"
        )
    if hydra["sweep"].get("subdir") != "${hydra.job.num}":
        raise RerunError(
            "the jobs' dirs are not named by job number (hydra.sweep.subdir)"
        )
    params = hydra["sweeper"].get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += list(hydra["overrides"]["task"])
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
        batches = BasicSweeper.split_arguments(overrides, None)
    except HydraException as error:
        raise RerunError(f"cannot rebuild the grid: {error}") from None
    return [list(job) for batch in batches for job in batch]


def unfinished(sweep_dir: Path, jobs: list[list[str]]) -> list[int]:
    """The numbers of the jobs whose dir does not say `finished`."""
    return [
        i for i in range(len(jobs)) if read_state(sweep_dir / str(i)) != State.FINISHED
    ]


def job_command(
    sweep_dir: Path, number: int, overrides: list[str], train: Path
) -> list[str]:
    """`python train.py <the job's overrides>` into the job's dir and W&B group."""
    command = [sys.executable, str(train), *overrides]
    command.append(f"hydra.run.dir={sweep_dir / str(number)}")
    if not any(o.startswith("logger=") and o != "logger=wandb" for o in overrides):
        command.append(f"logger.group={sweep_group(sweep_dir)}")
    return command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument(
        "--train", type=Path, help="the entry script (default: train.py in the dir "
        "the multirun was started from)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the commands")
    args = parser.parse_args(argv)
    sweep_dir = args.sweep_dir.absolute()
    try:
        hydra = multirun_hydra(sweep_dir)
        jobs = sweep_jobs(hydra)
    except RerunError as error:
        print(f"Cannot rerun: {error}", file=sys.stderr)
        return ExitCode.REFUSED
    started_in = hydra.get("runtime", {}).get("cwd")
    train = args.train or Path(started_in or ".") / "train.py"
    if not train.is_file():
        print(
            f"Cannot rerun: no {train}; name the entry script with --train",
            file=sys.stderr,
        )
        return ExitCode.REFUSED
    todo = unfinished(sweep_dir, jobs)
    print(f"{len(jobs) - len(todo)} of {len(jobs)} job(s) finished in {sweep_dir}")
    failed = []
    for number in todo:
        command = job_command(sweep_dir, number, jobs[number], train)
        print(f"job {number}: {shlex.join(command[1:])}", flush=True)
        if not args.dry_run and subprocess.run(command, cwd=train.parent).returncode:
            failed.append(number)
    if failed:
        print(f"{len(failed)} job(s) did not finish: {', '.join(map(str, failed))}")
        return ExitCode.FAILED
    if todo and not args.dry_run:
        print(f"Report: python -m metalearn.report {sweep_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
