"""Hydra callbacks, registered in `conf/config.yaml` under `hydra.callbacks`.

Hydra creates a run's output dir before any of our code runs; an unwritable path
would end in its traceback. This check runs first and stops with a short message.
"""

import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def _require_writable(key: str, directory: str) -> None:
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        print(
            f"{key}={directory}: cannot write the output dir ({error.strerror}); "
            "choose a writable path",
            file=sys.stderr,
        )
        sys.exit(2)


class OutputDirCheck(Callback):
    """Exits with a one-line error when the run or sweep dir cannot be written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _require_writable("hydra.sweep.dir", config.hydra.sweep.dir)
