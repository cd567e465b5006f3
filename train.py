"""Meta-train and evaluate: `python train.py [overrides]`, `python train.py -m ...`.

See README.md for the config keys. This file only connects Hydra to
`metalearn.experiment.run`.
"""

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from metalearn.config import ConfigError, register_configs

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

    hydra_config = HydraConfig.get()
    group, name = run_identity(hydra_config)
    try:
        summary = experiment.run(cfg, hydra_config.runtime.output_dir, group, name)
    except ConfigError as error:
        print(f"Invalid config:\n{error}", file=sys.stderr)
        if hydra_config.mode == RunMode.MULTIRUN:
            raise  # this job fails; Hydra goes on with the others
        sys.exit(2)
    return summary["objective"]


if __name__ == "__main__":
    main()
