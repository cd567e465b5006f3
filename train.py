"""Meta-train and evaluate: `python train.py [overrides]`, `python train.py -m ...`.

See README.md for the config keys. This file only connects Hydra to
`metalearn.experiment.run`.
"""

import contextlib
import logging
import math
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from metalearn.config import ConfigError, register_configs, typed
from metalearn.data import DataError
from metalearn.loggers import LoggerError
from metalearn.rundir import (
    CONFIG_FILE,
    HISTORY_FILE,
    HYDRA_DIR,
    ExitCode,
    OutputError,
    RunDirBusy,
    State,
    has_checkpoint,
    read_state,
    started_here,
    sweep_group,
    write_status,
)
from metalearn.runtime import MemoryLimitError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")
log = logging.getLogger("metalearn")

register_configs()


def run_identity(hydra_config: DictConfig) -> tuple[str | None, str]:
    """W&B group (one per multirun, from its sweep dir) and run name (overrides)."""
    name = hydra_config.job.override_dirname or "default"
    if hydra_config.mode != RunMode.MULTIRUN:
        return None, name
    return sweep_group(Path(hydra_config.sweep.dir)), name


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Runs one job; returns its objective (`eval.objective`) for sweepers."""
    # imported here, after Hydra parsed the command line, so --help stays fast
    from metalearn import experiment, resume
    from metalearn.trainer import NonFiniteError, Preempted

    hydra_config = HydraConfig.get()
    group, name = run_identity(hydra_config)
    output_dir = hydra_config.runtime.output_dir
    records = hydra_records(cfg, hydra_config)
    try:
        if cfg.resume is not None:
            if hydra_config.mode == RunMode.MULTIRUN:
                raise ConfigError("resume= is not allowed in a multirun (-m)")
            overrides = list(hydra_config.overrides.task)
            config = resume.config_for_resume(cfg.resume, overrides)
            output_dir = cfg.resume  # even if hydra.run.dir points elsewhere
            group = name = records = None  # it keeps its W&B run and .hydra/
        else:
            config = typed(cfg)
        summary = experiment.run(config, output_dir, group, name, records)
        for line in experiment.summary_lines(summary, config, Path(output_dir)):
            log.info(line)
    except ConfigError as error:
        return stop(hydra_config, output_dir, f"Invalid config:\n{error}", records)
    except DataError as error:
        return stop(hydra_config, output_dir, f"Data not ready: {error}", records)
    except (OutputError, OSError) as error:
        message = f"Output failed: {error}"
        return stop(hydra_config, output_dir, message, records, ExitCode.FAILED)
    except MemoryLimitError as error:
        return stop(hydra_config, output_dir, f"Too big: {error}", records)
    except RunDirBusy as error:
        return stop(hydra_config, output_dir, f"Refused: {error}", records)
    except resume.ResumeError as error:
        return stop(hydra_config, output_dir, f"Cannot resume: {error}", records)
    except LoggerError as error:
        return stop(hydra_config, output_dir, f"Logger failed: {error}", records)
    except NonFiniteError as error:
        message = f"Training stopped: {error}"
        return stop(hydra_config, output_dir, message, records, ExitCode.FAILED)
    except Preempted as error:
        # the whole process stops (in a multirun too: Ctrl-C means stop the sweep)
        hint = f"resume with: python train.py resume={output_dir}"
        report(f"Interrupted: {error}; {hint}")
        sys.exit(ExitCode.PREEMPTED)
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once
        report(f"Interrupted at once; outputs so far: {output_dir}")
        sys.exit(ExitCode.PREEMPTED)
    return summary["objective"]


def hydra_records(cfg: DictConfig, hydra_config: DictConfig) -> dict[str, str]:
    """Hydra's record of the job (composed config, overrides) as `.hydra/` files,
    which the run writes itself once the output dir is known to be its own."""
    return {
        f"{HYDRA_DIR}/config.yaml": OmegaConf.to_yaml(cfg),
        f"{HYDRA_DIR}/hydra.yaml": OmegaConf.to_yaml({"hydra": hydra_config}),
        f"{HYDRA_DIR}/overrides.yaml": OmegaConf.to_yaml(hydra_config.overrides.task),
    }


def stop(
    hydra_config,
    output_dir: str,
    message: str,
    records: dict[str, str] | None,
    exit_code: ExitCode = ExitCode.REFUSED,
) -> float:
    """Ends a failed job: a short message, no traceback, a non-zero exit code.

    In a multirun the job is marked failed and returns NaN (Optuna records a
    failed trial), the other jobs go on, and the sweep's summary at the end lists
    it and exits non-zero.
    """
    run_dir = Path(output_dir)
    reason = " ".join(message.split("\n"))
    mine = owns(run_dir)
    history = run_dir / HISTORY_FILE
    if mine and (
        has_checkpoint(run_dir) or history.exists() and history.stat().st_size
    ):
        message += f"\n(outputs so far: {run_dir})"
    report(message, to_file=mine)
    if mine:  # its own dir: record why, and (for the report) what it was
        with contextlib.suppress(OSError):  # a full disk may refuse even this
            write_status(run_dir, State.FAILED, error=reason)
            for relative, text in (records or {}).items():
                if not (run_dir / relative).exists():
                    (run_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                    (run_dir / relative).write_text(text)
    if hydra_config.mode == RunMode.MULTIRUN:
        return math.nan
    sys.exit(exit_code)


def owns(run_dir: Path) -> bool:
    """Whether this job may mark `run_dir` failed: it started training there, or
    the dir is its own fresh one (Hydra made it; no other run's files in it)."""
    if not run_dir.is_dir():
        return False
    fresh = not (run_dir / CONFIG_FILE).exists() and read_state(run_dir) is None
    return fresh or started_here(run_dir)


def report(message: str, to_file: bool = True) -> None:
    """A failure's message: on stderr, and in the job's log file (train.log) when
    the run dir is this job's."""
    print(message, file=sys.stderr)
    if to_file:
        for line in message.splitlines():
            log.debug(line)  # the file handler only: the console already has it


if __name__ == "__main__":
    main()
