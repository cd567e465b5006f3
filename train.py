"""Meta-train and evaluate: `python train.py [overrides]`, `python train.py -m ...`.

See README.md for the config keys. This file only connects Hydra to
`metalearn.experiment.run`.
"""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from metalearn.config import ConfigError, register_configs
from metalearn.loggers import STATUS_FILE, LoggerError, write_json_atomically

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")

register_configs()


def run_identity(hydra_config: DictConfig) -> tuple[str | None, str]:
    """W&B group (one per multirun, from its sweep dir) and run name (overrides)."""
    name = hydra_config.job.override_dirname or "default"
    if hydra_config.mode != RunMode.MULTIRUN:
        return None, name
    sweep_dir = Path(hydra_config.sweep.dir).absolute()
    return f"{sweep_dir.parent.name}_{sweep_dir.name}", name


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Runs one job; returns its objective (`eval.objective`) for sweepers."""
    # imported here, after Hydra parsed the command line, so --help stays fast
    from metalearn import experiment
    from metalearn.trainer import NonFiniteError, Preempted

    for chatty in ("absl", "jax._src.xla_bridge"):  # orbax's and JAX's INFO lines
        logging.getLogger(chatty).setLevel(logging.WARNING)
    hydra_config = HydraConfig.get()
    group, name = run_identity(hydra_config)
    output_dir = hydra_config.runtime.output_dir
    try:
        config = cfg
        if cfg.resume is not None:
            if hydra_config.mode == RunMode.MULTIRUN:
                raise ConfigError("resume= is not allowed in a multirun (-m)")
            overrides = list(hydra_config.overrides.task)
            config = experiment.config_for_resume(cfg.resume, overrides)
            output_dir = cfg.resume  # even if hydra.run.dir points elsewhere
            group = name = None  # the resumed W&B run keeps its own
        summary = experiment.run(config, output_dir, group, name)
    except ConfigError as error:
        stop(hydra_config, output_dir, error, f"Invalid config:\n{error}", exit_code=2)
    except LoggerError as error:
        stop(hydra_config, output_dir, error, f"Logger failed: {error}", exit_code=2)
    except NonFiniteError as error:
        stop(hydra_config, output_dir, error, f"Training stopped: {error}", exit_code=1)
    except Preempted as error:
        # the whole process stops (in a multirun too: Ctrl-C means stop the sweep)
        hint = f"resume with: python train.py resume={output_dir}"
        print(f"Interrupted: {error}; {hint}", file=sys.stderr)
        sys.exit(3)
    return summary["objective"]


def stop(hydra_config, output_dir: str, error: Exception, message: str, exit_code: int):
    """Ends a failed job: a short message, no traceback, a non-zero exit code.

    In a multirun the job is marked failed and the error raised, so that Hydra
    records it and goes on with the other jobs.
    """
    print(message, file=sys.stderr)
    if hydra_config.mode == RunMode.MULTIRUN:
        status = Path(output_dir) / STATUS_FILE
        if not status.exists() or "running" in status.read_text():
            write_json_atomically(status, {"state": "failed", "error": message})
        raise error
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
