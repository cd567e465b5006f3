"""Wiring: builds the objects a config names, runs training, writes the outputs.

The only module that turns a config into objects (`hydra.utils.instantiate` for the
optimiser); everything it calls takes plain Python values.
"""

import os
from typing import Any, NamedTuple

import jax
import optax
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from metalearn import loggers
from metalearn.algorithms import ALGORITHMS, Algorithm
from metalearn.config import check_objective, validate
from metalearn.evaluation import flatten_scores, make_evaluate
from metalearn.models import Model, make_mlp
from metalearn.tasks import TaskFamily
from metalearn.tasks.sinusoid import make_sinusoid
from metalearn.trainer import (
    Schedule,
    fit,
    init_train_state,
    make_train_step,
    make_train_window,
)

TASKS = {"sinusoid": make_sinusoid}


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
    optimizer = instantiate(config["optimizer"], learning_rate=config["outer"]["lr"])
    return Parts(task, model, algorithm, optimizer)


def make_logger(
    config: dict, output_dir: str, group: str | None, name: str | None, job_type: str
) -> loggers.Fanout:
    chosen: list[loggers.Logger] = [
        loggers.LocalFiles(output_dir),
        loggers.ProgressBar(config["outer"]["steps"]),
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
            )
        )
    return loggers.Fanout(chosen)


def run(
    cfg: DictConfig,
    output_dir: str | os.PathLike,
    group: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Trains and evaluates the configured experiment; returns its summary.

    The summary's `objective` is `eval/<eval.objective>`, the value sweepers minimise.

    Writes `history.jsonl` and `summary.json` into `output_dir`, plus a W&B run
    when `logger=wandb`. Raises `ConfigError` before doing anything if a value is
    out of range.
    """
    config = resolve(cfg)
    validate(config)
    parts = build(config)
    inner, outer, evaluation = config["inner"], config["outer"], config["eval"]
    check_objective(
        evaluation["objective"], list(parts.task.metrics), evaluation["steps"]
    )
    evaluate = make_evaluate(
        parts.algorithm,
        parts.task,
        num_tasks=evaluation["num_tasks"],
        num_support=evaluation["k"],
        num_query=evaluation["num_query"],
        num_steps=evaluation["steps"],
        tasks_per_batch=evaluation["tasks_per_batch"],
    )
    eval_tasks_key = jax.random.key(evaluation["seed"])
    train_key, eval_adapt_key = jax.random.split(jax.random.key(config["seed"]))
    train_window = make_train_window(
        make_train_step(
            parts.algorithm,
            parts.task,
            parts.optimizer,
            tasks_per_step=outer["batch"],
            num_support=inner["k"],
            num_query=outer["num_query"],
        )
    )
    schedule = Schedule(
        outer["steps"], config["train"]["log_every"], evaluation["every"]
    )
    logger = make_logger(config, str(output_dir), group, name, parts.algorithm.name)
    summary: dict[str, Any] = {}
    exit_code = 1
    try:
        state = init_train_state(parts.algorithm, parts.optimizer, train_key)
        _, summary = fit(
            state,
            train_window,
            schedule,
            evaluate=lambda s: flatten_scores(
                *evaluate(s.meta_params, s.model_state, eval_tasks_key, eval_adapt_key)
            ),
            on_metrics=lambda step, metrics: logger.log(metrics, step),
        )
        summary["objective"] = summary[f"eval/{evaluation['objective']}"]
        exit_code = 0
    finally:
        logger.finish(summary, exit_code)
    return summary
