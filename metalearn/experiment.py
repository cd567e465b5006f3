"""Wiring: builds the objects a config names, runs training, writes the outputs.

The only module that turns a config into objects (`hydra.utils.instantiate` for the
optimiser); everything it calls takes plain Python values.
"""

import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import optax
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metalearn import loggers
from metalearn.algorithms import ALGORITHMS, Algorithm
from metalearn.checkpoints import Checkpointer, IncompatibleCheckpoint
from metalearn.config import Config, ConfigError, check_objective, validate
from metalearn.evaluation import flatten_scores, make_evaluate
from metalearn.models import Model, make_mlp
from metalearn.tasks import TaskFamily
from metalearn.tasks.sinusoid import make_sinusoid
from metalearn.trainer import (
    Preempted,
    Schedule,
    TrainState,
    fit,
    flat_optimizer,
    init_train_state,
    make_task_mesh,
    make_train_step,
    make_train_window,
)

TASKS = {"sinusoid": make_sinusoid}
CHECKPOINT_DIR = "checkpoints"  # inside the run's output dir


class Parts(NamedTuple):
    task: TaskFamily
    model: Model
    algorithm: Algorithm
    optimizer: optax.GradientTransformation


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain Python containers, interpolations resolved."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def _options(node: dict) -> dict:
    return {key: value for key, value in node.items() if key != "name"}


def build(config: dict) -> Parts:
    """Task, model, algorithm and optimiser named by a resolved config."""
    task = TASKS[config["task"]["name"]](**_options(config["task"]))
    model = make_mlp(output_size=task.output_size, **_options(config["model"]))
    algo_options = _options(config["algo"])
    algorithm = ALGORITHMS[config["algo"]["name"]](
        model,
        task,
        inner_lr=config["inner"]["lr"],
        inner_steps=config["inner"]["steps"],
        **algo_options,
    )
    optimizer = flat_optimizer(
        instantiate(config["optimizer"], learning_rate=config["outer"]["lr"])
    )
    return Parts(task, model, algorithm, optimizer)


def make_logger(
    config: dict,
    output_dir: Path,
    group: str | None,
    name: str | None,
    job_type: str,
    start_step: int = 0,
    resume_meta: dict | None = None,
) -> loggers.Fanout:
    """Local files and a progress bar, plus W&B with `logger=wandb`; from
    `start_step` on, continuing the W&B run named in `resume_meta` if any."""
    chosen: list[loggers.Logger] = [
        loggers.LocalFiles(output_dir, start_step),
        loggers.ProgressBar(config["outer"]["steps"], start_step),
    ]
    options = config["logger"]
    if options["name"] == "wandb":
        chosen.append(
            loggers.WandbRun(
                output_dir,
                project=options["project"],
                entity=options["entity"],
                mode=options["mode"],
                config=config,
                group=options["group"] or group,
                name=name,
                job_type=job_type,
                tags=options["tags"],
                run_id=(resume_meta or {}).get(loggers.WANDB_RUN_ID),
            )
        )
    return loggers.Fanout(chosen)


def make_evaluation(
    parts: Parts, evaluation: dict, adapt_key: jax.Array
) -> Callable[[TrainState], dict[str, float]]:
    """The configured protocol at `eval.k` shots (keys `eval/<metric>@step<i>`) and
    at each of `eval.extra_k` (keys `eval/<metric>_k<K>@step<i>`)."""
    tasks_key = jax.random.key(evaluation["seed"])
    shots = {"": evaluation["k"]} | {f"_k{k}": k for k in evaluation["extra_k"]}
    protocols = {
        suffix: make_evaluate(
            parts.algorithm,
            parts.task,
            num_tasks=evaluation["num_tasks"],
            num_support=k,
            num_query=evaluation["num_query"],
            num_steps=evaluation["steps"],
            tasks_per_batch=evaluation["tasks_per_batch"],
        )
        for suffix, k in shots.items()
    }

    def evaluate(state: TrainState) -> dict[str, float]:
        metrics = {}
        for suffix, protocol in protocols.items():
            scores = protocol(
                state.meta_params, state.model_state, tasks_key, adapt_key
            )
            metrics |= flatten_scores(*scores, suffix)
        return metrics

    return evaluate


# Keys that never change a run's numbers: they may differ between a run and its
# resumption. (`outer.steps` may grow or shrink: step keys do not depend on it.)
RESUMABLE_KEYS = (
    "logger",
    "train.log_every",
    "train.sample_ahead",
    "train.compile_cache",
    "checkpoint",
    "eval.every",
    "eval.tasks_per_batch",
    "outer.steps",
)
CONFIG_FILE = "config.json"  # the resolved config, written when a run starts


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat = {}
    for key, value in node.items():
        flat |= _flatten(value, f"{prefix}.{key}" if prefix else key)
    return flat


def maths_differences(saved: dict, current: dict) -> list[str]:
    """`key: saved -> current` for every key that changes a run's numbers."""
    old, new = _flatten(saved), _flatten(current)
    return [
        f"{key}: {old.get(key)} -> {new.get(key)}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
        and not any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)
    ]


def load_saved_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The resolved config a run in `run_dir` started with; `ConfigError` if the dir
    holds no run with a checkpoint."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        config = None
    if config is None or not has_checkpoint(Path(run_dir)):
        raise ConfigError(
            f"resume={run_dir} is not allowed: it must be the output dir of a run "
            f"that saved a checkpoint ({CONFIG_FILE} and {CHECKPOINT_DIR}/<step>/)"
        )
    return config


def has_checkpoint(run_dir: Path) -> bool:
    directory = run_dir / CHECKPOINT_DIR
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def config_for_resume(run_dir: str, overrides: list[str]) -> dict[str, Any]:
    """The config to continue the run in `run_dir`: the one it started with, plus
    command-line `overrides` that cannot change its numbers (`RESUMABLE_KEYS`).
    Keys of the fixed sections (those not chosen from a group: inner, outer, eval,
    train, checkpoint) added to metalearn since the run started take their
    defaults; a run whose checkpoint no longer fits the training state is still
    refused when it is restored."""
    saved = load_saved_config(run_dir)
    defaults = OmegaConf.to_container(OmegaConf.structured(Config))
    for section, keys in defaults.items():
        if isinstance(keys, dict):  # group choices (task, model, ...) are "???"
            saved[section] = {**keys, **saved.get(section, {})}
    config = OmegaConf.create(saved)
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key == "resume" or key.startswith("hydra"):
            continue
        resumable = any(key.startswith(k + ".") or key == k for k in RESUMABLE_KEYS)
        if not resumable or "." not in key:  # a group choice such as logger=none
            raise ConfigError(
                f"{override} is not allowed with resume=: a resumed run keeps the "
                "config it started with; only these keys may change (values, not "
                f"groups): {', '.join(RESUMABLE_KEYS)}"
            )
        OmegaConf.update(config, key, yaml.safe_load(value), force_add=False)
    return OmegaConf.to_container(config, resolve=True)


def _restore_or_start(
    config: dict, parts: Parts, output_dir: Path, checkpointer: Checkpointer, key
) -> tuple[TrainState, dict[str, Any]]:
    """A fresh state, or the latest checkpoint when `output_dir` holds this run.

    Saves `config` as the run's `config.json` either way (a resume may have changed
    keys that do not alter the numbers, such as `outer.steps`).
    """
    # one compiled program (cached on disk) instead of many small eager ones
    state = jax.jit(init_train_state, static_argnums=(0, 1))(
        parts.algorithm, parts.optimizer, key
    )
    saved_config = output_dir / CONFIG_FILE
    meta: dict[str, Any] = {}
    latest = checkpointer.latest_step()  # lists the checkpoint dir: read it once
    if latest is not None:
        saved = json.loads(saved_config.read_text()) if saved_config.exists() else {}
        differences = maths_differences(saved, config)
        if differences:
            raise ConfigError(
                f"{output_dir} holds a run with another config; refusing to resume "
                "it with changes that alter its numbers:\n  " + "\n  ".join(differences)
            )
        if latest > config["outer"]["steps"]:
            raise ConfigError(
                f"outer.steps={config['outer']['steps']} is not allowed: the run in "
                f"{output_dir} is already at step {latest}"
            )
        try:
            state, meta = checkpointer.restore(state)
        except IncompatibleCheckpoint as error:
            raise ConfigError(str(error)) from error
    loggers.write_json_atomically(saved_config, config)
    return state, meta


class _StopFlag:
    """Turns SIGTERM/SIGINT into a request to stop at the next window boundary."""

    def __init__(self):
        self.raised: int | None = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            # outside the main thread signals cannot be caught: leave them alone
            with contextlib.suppress(ValueError):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run(
    cfg: DictConfig | dict,
    output_dir: str | os.PathLike,
    group: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Trains and evaluates the configured experiment; returns its summary.

    Writes `config.json`, `history.jsonl`, `status.json`, checkpoints and at the
    end `summary.json` into `output_dir`, plus a W&B run when `logger=wandb`. When
    `output_dir` already holds a checkpoint of the same run (a resume, or a requeued
    cluster job), training continues from it, into the same W&B run. The summary's
    `objective` is `eval/<eval.objective>`, the value sweepers minimise.

    Raises:
        ConfigError: before any output, for a value out of range, or for a config
            that differs from the one `output_dir` was started with.
        NonFiniteError: the meta-loss or a parameter became NaN/inf.
        Preempted: SIGTERM/SIGINT arrived; a checkpoint was saved first.
    """
    config = resolve(cfg) if isinstance(cfg, DictConfig) else cfg
    validate(config)
    use_compile_cache(config["train"]["compile_cache"])
    parts = build(config)
    evaluation = config["eval"]
    check_objective(
        evaluation["objective"], list(parts.task.metrics), evaluation["steps"]
    )
    mesh = task_mesh(config)
    output_dir = Path(output_dir)
    train_key, eval_adapt_key = jax.random.split(jax.random.key(config["seed"]))
    checkpointer = Checkpointer(
        output_dir / CHECKPOINT_DIR, config["checkpoint"]["keep"]
    )
    try:
        state, meta = _restore_or_start(
            config, parts, output_dir, checkpointer, train_key
        )
    except ConfigError:
        checkpointer.close()
        raise
    start_step = int(state.step)  # read now: training donates the state's buffers
    logger = make_logger(
        config, output_dir, group, name, parts.algorithm.name, start_step, meta
    )
    summary: dict[str, Any] = {}
    exit_code = 1
    try:
        with _StopFlag() as stop:
            _, summary = fit(
                state,
                _make_window(config, parts, mesh),
                _schedule(config),
                evaluate=make_evaluation(parts, evaluation, eval_adapt_key),
                on_metrics=lambda step, metrics: logger.log(metrics, step),
                checkpoint=lambda s: checkpointer.save(s, logger.resume_meta()),
                should_stop=lambda: stop.raised is not None,
            )
        if start_step:  # resumed: the windows before the checkpoint count too
            before = loggers.read_history(output_dir / loggers.HISTORY_FILE)
            summary = {**(before[-1] if before else {}), **summary}
            summary.pop("step", None)
        summary["objective"] = summary[f"eval/{evaluation['objective']}"]
        logger.wait_started()  # W&B that never started fails the run, here
        exit_code = 0
    except Preempted:
        exit_code = loggers.PREEMPTED_EXIT_CODE
        raise
    finally:
        checkpointer.close()
        logger.finish(summary, exit_code)
    return summary


def task_mesh(config: dict) -> jax.sharding.Mesh | None:
    """The device mesh for the task batch, or None on one device."""
    available = jax.device_count()
    wanted = config["train"]["devices"] or available
    if wanted > available:
        raise ConfigError(
            f"train.devices={wanted} is not allowed: only {available} device(s) are "
            "visible (0 uses all of them)"
        )
    if wanted == 1:
        return None
    if config["outer"]["batch"] % wanted:
        raise ConfigError(
            f"outer.batch={config['outer']['batch']} is not allowed on {wanted} "
            f"devices: it must be a multiple of {wanted} (or set train.devices)"
        )
    return make_task_mesh(wanted)


def use_compile_cache(directory: str | None) -> None:
    """Turns JAX's persistent compilation cache on (every program, however quick to
    compile) in `directory`, or off for None."""
    jax.config.update("jax_compilation_cache_dir", directory)
    if directory:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def _make_window(config: dict, parts: Parts, mesh: jax.sharding.Mesh | None):
    return make_train_window(
        make_train_step(
            parts.algorithm,
            parts.task,
            parts.optimizer,
            tasks_per_step=config["outer"]["batch"],
            num_support=config["inner"]["k"],
            num_query=config["outer"]["num_query"],
            mesh=mesh,
        ),
        # a window never needs more steps' tasks than it runs
        sample_ahead=min(config["train"]["sample_ahead"], config["train"]["log_every"]),
    )


def _schedule(config: dict) -> Schedule:
    return Schedule(
        num_steps=config["outer"]["steps"],
        log_every=config["train"]["log_every"],
        eval_every=config["eval"]["every"],
        checkpoint_every=config["checkpoint"]["every"],
    )
