"""Continuing a run in its own output dir: the config it keeps, what may change.

A resumed run keeps the config it started with (its `config.json`); only keys that
cannot change its numbers may be overridden (`RESUMABLE_KEYS`). Keys added to
metalearn after the run started take their defaults. Part of the wiring layer.
"""

import dataclasses
from pathlib import Path
from typing import Any, cast

import jax
import optax
import yaml
from omegaconf import OmegaConf

from metalearn.algorithms import Algorithm
from metalearn.checkpoints import (
    Checkpointer,
    IncompatibleCheckpoint,
    NoIntactCheckpoint,
)
from metalearn.config import Config, ConfigError, typed
from metalearn.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    has_checkpoint,
    latest_step,
    read_json,
    write_json_atomically,
)
from metalearn.trainer import TrainState, init_train_state

# Keys that never change a run's numbers: they may differ between a run and its
# resumption. (`outer.steps` may grow or shrink: step keys do not depend on it.)
RESUMABLE_KEYS = (
    "logger",
    "data.root",
    "train.log_every",
    "train.sample_ahead",
    "train.max_minutes",
    "train.compile_cache",
    "train.devices",
    "train.cpu_devices",
    "train.tasks_at_once",
    "checkpoint",
    "eval.every",
    "eval.tasks_per_batch",
    "outer.steps",
)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat |= _flatten(value, f"{prefix}.{key}" if prefix else key)
    return flat


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def plain(config: Config) -> dict[str, Any]:
    """The typed config as the plain dict a run saves (its `config.json`)."""
    return dataclasses.asdict(config)


def maths_differences(saved: Config, current: Config) -> list[str]:
    """`key: saved -> current` for every key that changes a run's numbers."""
    old, new = _flatten(plain(saved)), _flatten(plain(current))
    return [
        f"{key}: {old.get(key)} -> {new.get(key)}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and not _resumable(key)
    ]


def migrate(saved: dict[str, Any]) -> dict[str, Any]:
    """A `config.json` of an older version in today's form: its optimiser named
    by `name` (older runs named it by an optax `_target_`); a MAML run from before
    `algo.adapt_batch_norm` keeps adapting BatchNorm, as it did when it started."""
    optimizer = saved.get("optimizer", {})
    if "_target_" in optimizer:
        target = optimizer.pop("_target_")
        optimizer.setdefault("name", target.rsplit(".", 1)[-1])
    algo = saved.get("algo", {})
    if algo.get("name") == "maml":
        algo.setdefault("adapt_batch_norm", True)
    return saved


def load_saved_config(run_dir: Path) -> Config:
    """The config the run in `run_dir` started with; `ConfigError` if the dir
    holds no run with a checkpoint."""
    saved = read_json(run_dir / CONFIG_FILE)
    if not saved or not has_checkpoint(run_dir):
        raise ConfigError(
            f"resume={run_dir} is not allowed: it must be the output dir of a run "
            f"that saved a checkpoint ({CONFIG_FILE} and {CHECKPOINT_DIR}/<step>/)"
        )
    return typed(migrate(saved))


def config_for_resume(run_dir: str | Path, overrides: list[str]) -> Config:
    """The config to continue the run in `run_dir`: the one it started with, plus
    command-line `overrides` that cannot change its numbers (`RESUMABLE_KEYS`)."""
    config = OmegaConf.structured(load_saved_config(Path(run_dir)))
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key == "resume" or key.startswith("hydra"):
            continue
        if not _resumable(key) or "." not in key:  # a group choice: logger=none
            raise ConfigError(
                f"{override} is not allowed with resume=: a resumed run keeps the "
                "config it started with; only these keys may change (values, not "
                f"groups): {', '.join(RESUMABLE_KEYS)}"
            )
        try:
            OmegaConf.update(config, key, yaml.safe_load(value), force_add=False)
        except Exception as error:  # noqa: BLE001 - OmegaConf's own messages
            raise ConfigError(f"{override} is not allowed: {error}") from None
    return cast(Config, OmegaConf.to_object(config))


class ResumeError(RuntimeError):
    """The run's checkpoints cannot be restored (all damaged, or of another
    layout); the message says which and why."""


def check_run_dir(config: Config, output_dir: Path) -> None:
    """Refuses (reading only) an `output_dir` that holds a run with another config,
    or one already past `outer.steps`; a dir of the same run may be continued.

    Raises:
        ConfigError: naming the keys whose values differ.
    """
    saved = read_json(output_dir / CONFIG_FILE)
    if not saved:
        return
    differences = maths_differences(typed(migrate(saved)), config)
    if differences:
        raise ConfigError(
            f"{output_dir} holds a run with another config; refusing to resume "
            "it with changes that alter its numbers:\n  " + "\n  ".join(differences)
        )
    latest = latest_step(output_dir)
    if latest is not None and latest > config.outer.steps:
        raise ConfigError(
            f"outer.steps={config.outer.steps} is not allowed: the run in "
            f"{output_dir} is already at step {latest}"
        )


def restore_or_start(
    config: Config,
    algorithm: Algorithm,
    optimizer: optax.GradientTransformation,
    output_dir: Path,
    checkpointer: Checkpointer,
    key: jax.Array,
) -> tuple[TrainState, dict[str, Any]]:
    """A fresh training state, or the latest checkpoint's (and its metadata) when
    `output_dir` holds this run (`check_run_dir` first). Saves `config` as the
    run's `config.json` either way (a resume may have changed keys that do not
    alter the numbers, such as `outer.steps`).

    Raises:
        ResumeError: no checkpoint this version can restore.
    """
    # one compiled program (cached on disk) instead of many small eager ones
    state = jax.jit(init_train_state, static_argnums=(0, 1))(algorithm, optimizer, key)
    meta: dict[str, Any] = {}
    if checkpointer.latest_step() is not None:
        try:
            state, meta = checkpointer.restore(state)
        except (IncompatibleCheckpoint, NoIntactCheckpoint) as error:
            raise ResumeError(str(error)) from None
    write_json_atomically(output_dir / CONFIG_FILE, plain(config))
    return state, meta
