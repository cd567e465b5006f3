"""The config schema (typed, registered in Hydra's ConfigStore) and value checks.

Types and key names are enforced by Hydra when the config is composed
(`inner.lrr=0.1`, `inner.lr=abc` and `algo=nope` fail there, naming the key).
`validate` then checks value ranges on the resolved, plain-dict config and raises
`ConfigError` listing every offending key with what is allowed.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

from metalearn.models import ACTIVATIONS, WEIGHT_INITS


class ConfigError(ValueError):
    """A config value outside its allowed range; the message names the key."""


@dataclass
class InnerConfig:
    lr: float = 0.1  # SGD step size of task adaptation
    steps: int = 1  # adaptation steps during meta-training
    k: int = 20  # support points (shots) per task


@dataclass
class OuterConfig:
    lr: float = 1e-3  # outer optimiser's learning rate
    steps: int = 20000  # meta-iterations
    batch: int = 4  # tasks per meta-step
    num_query: int = II("inner.k")  # query points per task in the meta-loss


@dataclass
class EvalConfig:
    every: int = 5000  # meta-steps between evaluations (0: only at the end)
    num_tasks: int = 1000  # held-out tasks
    k: int = II("inner.k")  # support points per held-out task
    extra_k: list[int] = field(default_factory=list)  # also scored at these K
    num_query: int = 100  # query points per held-out task
    steps: int = 10  # adaptation steps; scores after 0..steps are reported
    seed: int = 0  # the held-out tasks' own seed, independent of `seed`
    tasks_per_batch: int | None = None  # tasks adapted at once (None: all)
    # what train.py returns (for sweepers such as Optuna): eval/<objective>
    objective: str = "mse@step${eval.steps}"


@dataclass
class TrainConfig:
    log_every: int = 100  # meta-steps per metrics window (one host read each)
    devices: int = 0  # devices the task batch is split over (0: all visible)
    # meta-steps whose tasks are sampled in one vectorised call, at most log_every
    # (memory: that many steps' task batches); changes the speed, never the numbers
    sample_ahead: int = 100
    # JAX's persistent compilation cache (null: off); reused by later runs
    compile_cache: str | None = "${oc.env:METALEARN_COMPILE_CACHE,.cache/jax}"


@dataclass
class CheckpointConfig:
    every: int = 5000  # meta-steps between checkpoints (0: only at the end)
    keep: int = 2  # most recent checkpoints kept


@dataclass
class Config:
    task: Any = MISSING
    model: Any = MISSING
    algo: Any = MISSING
    optimizer: Any = MISSING
    logger: Any = MISSING
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    resume: str | None = None  # a run's output dir: continue that run there


@dataclass
class SinusoidConfig:
    name: str = "sinusoid"
    amp_min: float = 0.1
    amp_max: float = 5.0
    phase_min: float = 0.0
    phase_max: float = math.pi
    x_min: float = -5.0
    x_max: float = 5.0


@dataclass
class MlpConfig:
    name: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [40, 40])
    activation: str = "relu"
    weight_init: str = "glorot"


@dataclass
class MamlConfig:
    name: str = "maml"
    first_order: bool = False  # true: first-order MAML (no second derivatives)
    remat: bool = False  # recompute inner-step activations in backward: less memory


@dataclass
class ReptileConfig:
    name: str = "reptile"


@dataclass
class MetaSgdConfig:
    name: str = "metasgd"
    first_order: bool = False
    remat: bool = False  # recompute inner-step activations in backward: less memory


@dataclass
class AnilConfig:
    name: str = "anil"
    first_order: bool = False
    remat: bool = False  # recompute inner-step activations in backward: less memory


@dataclass
class SgdBaselineConfig:
    name: str = "sgd"


@dataclass
class PretrainedConfig:
    name: str = "pretrained"


@dataclass
class AdamConfig:
    _target_: str = "optax.adam"
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8


@dataclass
class AdamWConfig:
    _target_: str = "optax.adamw"
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-4


@dataclass
class SgdConfig:
    _target_: str = "optax.sgd"
    momentum: float | None = None
    nesterov: bool = False


@dataclass
class RmspropConfig:
    _target_: str = "optax.rmsprop"
    decay: float = 0.9
    eps: float = 1e-8
    momentum: float | None = None
    centered: bool = False


@dataclass
class WandbConfig:
    name: str = "wandb"
    project: str = "metalearn"
    entity: str | None = None
    mode: str = "${oc.env:WANDB_MODE,offline}"  # offline | online | disabled
    group: str | None = None  # None: one group per multirun, none for single runs
    tags: list[str] = field(default_factory=list)


@dataclass
class NoLoggerConfig:
    name: str = "none"


SCHEMAS = {
    "task": {"sinusoid": SinusoidConfig},
    "model": {"mlp": MlpConfig},
    "algo": {
        "maml": MamlConfig,
        "reptile": ReptileConfig,
        "metasgd": MetaSgdConfig,
        "anil": AnilConfig,
        "sgd": SgdBaselineConfig,
        "pretrained": PretrainedConfig,
    },
    "optimizer": {
        "adam": AdamConfig,
        "adamw": AdamWConfig,
        "sgd": SgdConfig,
        "rmsprop": RmspropConfig,
    },
    "logger": {"wandb": WandbConfig, "none": NoLoggerConfig},
}
WANDB_MODES = ("offline", "online", "disabled")


def register_configs() -> None:
    """Stores the schema as `schema` and each option's as `schema/<group>/<name>`.

    YAML options extend theirs with `defaults: [/schema/<group>/<name>@_here_]`, so
    a misspelt key inside an option file is rejected too. Also registers the
    resolvers `conf/config.yaml` uses to send a resumed run to its own dir.
    """
    if not OmegaConf.has_resolver("if_resume"):
        # ${if_resume:${resume},a,b}: a when resuming a run, else b
        OmegaConf.register_new_resolver(
            "if_resume",
            lambda resume, then, otherwise: otherwise if resume is None else then,
        )
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            store.store(group=f"schema/{group}", name=name, node=node)


def validate(config: dict) -> None:
    """Raises `ConfigError` naming every key whose value is out of range."""
    problems = [
        *_check_positive(config, ["inner.lr", "outer.lr"]),
        *_check_at_least(
            config,
            {
                "inner.k": 1,
                "inner.steps": 0,
                "outer.batch": 1,
                "outer.steps": 1,
                "outer.num_query": 1,
                "eval.every": 0,
                "eval.num_tasks": 2,
                "eval.k": 1,
                "eval.num_query": 1,
                "eval.steps": 0,
                "train.log_every": 1,
                "train.devices": 0,
                "train.sample_ahead": 1,
                "checkpoint.every": 0,
                "checkpoint.keep": 1,
            },
        ),
        *_check_options(config),
    ]
    if any(k < 1 for k in config["eval"]["extra_k"]):
        problems.append(
            f"eval.extra_k={config['eval']['extra_k']} is not allowed: every K must "
            "be an integer >= 1"
        )
    if config["eval"]["tasks_per_batch"] is not None:
        problems += _check_at_least(config, {"eval.tasks_per_batch": 1})
    if problems:
        raise ConfigError("\n".join(problems))


def check_objective(objective: str, metrics: list[str], num_steps: int) -> None:
    """Raises `ConfigError` unless `objective` is `<metric>@step<i>` that eval makes."""
    allowed = f"<metric>@step<i> with metric in {metrics} and 0 <= i <= {num_steps}"
    metric, _, step = objective.partition("@step")
    if metric not in metrics or not step.isdigit() or int(step) > num_steps:
        raise ConfigError(f"eval.objective={objective} is not allowed: use {allowed}")


def _lookup(config: dict, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _check_positive(config: dict, keys: list[str]) -> list[str]:
    return [
        f"{key}={_lookup(config, key)} is not allowed: it must be a finite number > 0"
        for key in keys
        if not (math.isfinite(_lookup(config, key)) and _lookup(config, key) > 0)
    ]


def _check_at_least(config: dict, minimums: dict[str, int]) -> list[str]:
    return [
        f"{key}={_lookup(config, key)} is not allowed: it must be an integer >= {low}"
        for key, low in minimums.items()
        if _lookup(config, key) < low
    ]


def _check_options(config: dict) -> list[str]:
    problems = []
    task, model, logger = config["task"], config["model"], config["logger"]
    for low, high in [
        ("amp_min", "amp_max"),
        ("phase_min", "phase_max"),
        ("x_min", "x_max"),
    ]:
        if low in task and not task[low] <= task[high]:
            problems.append(
                f"task.{low}={task[low]} and task.{high}={task[high]} are not "
                f"allowed: task.{low} must be <= task.{high}"
            )
    if any(size < 1 for size in model.get("hidden_sizes", [])):
        problems.append(
            f"model.hidden_sizes={model['hidden_sizes']} is not allowed: every size "
            "must be >= 1"
        )
    if "activation" in model and model["activation"] not in ACTIVATIONS:
        problems.append(
            f"model.activation={model['activation']} is not allowed: choose one of "
            f"{', '.join(sorted(ACTIVATIONS))}"
        )
    if "weight_init" in model and model["weight_init"] not in WEIGHT_INITS:
        problems.append(
            f"model.weight_init={model['weight_init']} is not allowed: choose one of "
            f"{', '.join(WEIGHT_INITS)}"
        )
    if logger["name"] == "wandb" and logger["mode"] not in WANDB_MODES:
        problems.append(
            f"logger.mode={logger['mode']} is not allowed: choose one of "
            f"{', '.join(WANDB_MODES)} (it defaults to $WANDB_MODE, else offline)"
        )
    return problems
