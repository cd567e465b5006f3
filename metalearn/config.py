"""The config schema: one home for every key's type, default, help and range check.

Two kinds of keys:

- the run's own sections (`inner`, `outer`, `eval`, `train`, `checkpoint`, `data`,
  `seed`, `resume`): the dataclasses below, each field made with `setting(default,
  help, check)`;
- the options of the chosen components (`task.*`, `model.*`, `algo.*`,
  `optimizer.*`, `logger.*`): derived from the registered factories' keyword-only
  parameters (`metalearn.registry`), so a factory's signature is their home.

`register_configs` stores the whole schema in Hydra's ConfigStore, so a misspelt
key, a wrong type or an unknown option fails when the config is composed. `typed`
turns a composed config into `Config` objects; `validate` checks the ranges of the
run's own sections (the factories check their own options when they are built).
`config_reference` renders every key as the Markdown table of `docs/config.md`.

Part of the wiring layer: only the entry point and the modules that turn configs
into objects import this.
"""

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from metalearn.algorithms import ALGORITHMS
from metalearn.data import default_data_root
from metalearn.loggers import LOGGERS
from metalearn.metrics import objective_goal
from metalearn.models import MODELS
from metalearn.optimizers import OPTIMIZERS
from metalearn.registry import Registry, plain_type
from metalearn.tasks import TASKS

GROUPS: dict[str, Registry] = {
    "task": TASKS,
    "model": MODELS,
    "algo": ALGORITHMS,
    "optimizer": OPTIMIZERS,
    "logger": LOGGERS,
}
INT32_MAX = 2**31 - 1


class ConfigError(ValueError):
    """A config value outside its allowed range; the message names the key."""


Check = Callable[[Any], str | None]  # value -> what is allowed, or None if fine


def positive(value: float) -> str | None:
    if not (math.isfinite(value) and value > 0):
        return "it must be a finite number > 0"
    return None


def at_least(low: int, high: int = INT32_MAX) -> Check:
    """An integer in [low, high] (high defaults to what an int32 step counter holds)."""

    def check(value: int) -> str | None:
        if value < low:
            return f"it must be an integer >= {low}"
        if value > high:
            return f"it must be an integer between {low} and {high}"
        return None

    return check


def optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def each(check: Check) -> Check:
    def check_all(values: list) -> str | None:
        problems = [problem for v in values if (problem := check(v))]
        return f"every value: {problems[0]}" if problems else None

    return check_all


def setting(
    default: Any, help: str, check: Check | None = None, shown: str | None = None
) -> Any:
    """A schema field: its default, help text and range check; `shown` is how
    docs/config.md writes a default that is an interpolation."""
    metadata = {"help": help, "check": check, "shown": shown}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class InnerConfig:
    lr: float = setting(0.1, "inner (adaptation) SGD step size", positive)
    steps: int = setting(1, "inner SGD steps during meta-training", at_least(0, 10_000))
    k: int = setting(
        20,
        "K: support examples per task (regression: points; classification: "
        "examples per class, the shots)",
        at_least(1),
    )


@dataclass
class OuterConfig:
    lr: float = setting(0.001, "outer optimiser's learning rate", positive)
    steps: int = setting(20000, "meta-steps (meta-iterations)", at_least(1))
    batch: int = setting(
        4,
        "tasks per meta-step (1: the tutorial's MAML; more: batched MAML, vmapped)",
        at_least(1),
    )
    num_query: int = setting(
        "${inner.k}",
        "query examples per task in the meta-loss (classification: per class)",
        at_least(1),
        shown="inner.k",
    )
    clip_value: float | None = setting(
        None,
        "clip each meta-gradient element to [-clip_value, clip_value] before the "
        "outer optimiser (the MAML reference code uses 10 on miniImageNet; null: "
        "no clipping)",
        optional(positive),
    )


@dataclass
class EvalConfig:
    every: int = setting(
        5000,
        "meta-steps between evaluations (0: only at the end); always at the end",
        at_least(0),
    )
    num_tasks: int = setting(
        1000, "held-out tasks (fixed: drawn from eval.seed)", at_least(2)
    )
    k: int = setting(
        "${inner.k}",
        "support examples per held-out task (classification: per class)",
        at_least(1),
        shown="inner.k",
    )
    extra_k: list[int] = setting(
        [], "also score at these K (keys eval/<metric>_k<K>@step<i>)", each(at_least(1))
    )
    num_query: int = setting(
        100,
        "query examples per held-out task (classification: per class)",
        at_least(1),
    )
    steps: int = setting(
        10,
        "adaptation steps at evaluation; scores after 0..steps are reported",
        at_least(0, 10_000),
    )
    seed: int = setting(
        0, "seed of the held-out tasks, independent of seed", at_least(0)
    )
    tasks_per_batch: int | None = setting(
        None,
        "held-out tasks sampled and adapted at once (null: as many as keep one "
        "chunk's sampled tasks under 16 MB; lower it to bound memory)",
        optional(at_least(1)),
    )
    figures: bool = setting(
        True,
        "draw a held-out task's predictions at each evaluation (a fit for 1-D "
        "regression, the query images with their labels for images) into "
        "figures/ of the run dir and its W&B run",
    )
    objective: str = setting(
        "${default_objective:${task.name},${eval.steps}}",
        "the score train.py returns to sweepers, <metric>@step<i> (default: the "
        "task's headline metric after eval.steps steps); its metric says whether "
        "Optuna minimises or maximises it",
        shown="<headline metric>@step<eval.steps>",
    )


@dataclass
class TrainConfig:
    log_every: int = setting(
        100, "meta-steps per metrics window (one device-to-host read each)", at_least(1)
    )
    sample_ahead: int | None = setting(
        None,
        "meta-steps whose tasks are sampled in one vectorised call (null: as many "
        "as fit in 16 MB, at most train.log_every); changes the speed, never the "
        "numbers",
        optional(at_least(1)),
    )
    max_minutes: float | None = setting(
        None,
        "end training after this many minutes of training (compilation and "
        "evaluation not counted; kept to about one meta-step), then evaluate and "
        "save as at a normal end (null: no limit)",
        optional(positive),
    )
    compile_cache: str | None = setting(
        "${oc.env:METALEARN_COMPILE_CACHE,.cache/jax}",
        "JAX's persistent compilation cache, shared by runs (null: off)",
        shown="$METALEARN_COMPILE_CACHE, else .cache/jax",
    )
    devices: int = setting(
        0,
        "devices the task batch is split over (0: as many visible devices as "
        "split outer.batch evenly)",
        at_least(0),
    )
    cpu_devices: int | None = setting(
        None,
        "host devices JAX makes of the CPU, fixed when JAX first computes in a "
        "process (later runs in it keep them, with a warning; 0: one per core, the "
        "fastest for image tasks with one task at a time; null: JAX's default, "
        "one, or $JAX_NUM_CPU_DEVICES)",
        optional(at_least(0)),
    )
    tasks_at_once: int | None = setting(
        0,
        "tasks whose meta-gradients are computed together (vmapped); each device "
        "loops over its share of outer.batch in chunks of this many and averages "
        "them (0: all at once; null: 1 on a CPU, 0 elsewhere). Changes speed and "
        "memory, not the numbers beyond float rounding; algo=pretrained, which "
        "pools a meta-step's tasks into one batch, always takes them at once",
        optional(at_least(0)),
    )


@dataclass
class CheckpointConfig:
    every: int = setting(
        5000,
        "meta-steps between checkpoints (0: only at the end); always at the end",
        at_least(0),
    )
    keep: int = setting(2, "most recent checkpoints kept", at_least(1))


@dataclass
class DataConfig:
    root: str = setting(
        "${default_data_root:}",
        "where prepared datasets live (`python -m metalearn.data`)",
        shown="$METALEARN_DATA, else $XDG_CACHE_HOME/metalearn or ~/.cache/metalearn",
    )


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
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = setting(
        0, "seed of initialisation and of the training tasks", at_least(0, 2**32 - 1)
    )
    resume: str | None = setting(
        None, "a run's output dir: continue that run there (README: resume)"
    )


SECTIONS = ("inner", "outer", "eval", "train", "checkpoint", "data")


def component_schema(group: str, name: str) -> type:
    """The dataclass typing `<group>.*` when `<group>=<name>`: `name` plus the
    factory's options."""
    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=name))]
    for option in GROUPS[group].options(name):
        fields.append((option.name, plain_type(option.annotation), option.default))
    return dataclasses.make_dataclass(f"{group}_{name}", fields)


def register_configs() -> None:
    """Stores the schema as `schema` and each option's as `schema/<group>/<name>`.

    YAML options extend theirs with `defaults: [/schema/<group>/<name>@_here_]`, so
    a misspelt key inside an option file is rejected too. Also registers the
    resolvers the config uses.
    """
    resolvers: dict[str, Callable[..., Any]] = {
        # ${if_resume:${resume},a,b}: a when resuming a run, else b
        "if_resume": lambda resume, then, otherwise: (
            otherwise if resume is None else then
        ),
        "default_data_root": lambda: str(default_data_root()),
        "default_objective": lambda task, steps: (
            f"{TASKS.metadata(task)['headline']}@step{steps}"
        ),
        # "minimize" or "maximize": what Optuna does with an objective
        "objective_direction": lambda objective: (
            "maximize" if objective_goal(objective) == "max" else "minimize"
        ),
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for group, registry in GROUPS.items():
        for name in registry:
            store.store(
                group=f"schema/{group}", name=name, node=component_schema(group, name)
            )


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain Python containers, interpolations resolved."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return cast(dict[str, Any], plain)


def typed(config: DictConfig | dict[str, Any]) -> Config:
    """A composed config (or its plain form, e.g. a saved `config.json`) as `Config`
    objects; raises `ConfigError` for a key the schema does not have (a `+key`
    override, or a saved key this version no longer knows)."""
    plain = to_plain(config) if isinstance(config, DictConfig) else config
    schema = OmegaConf.structured(Config)
    for group in GROUPS:
        name = plain[group]["name"]
        if name not in GROUPS[group]:
            raise ConfigError(
                f"{group}={name} is not allowed: choose one of "
                f"{', '.join(GROUPS[group])}"
            )
        schema[group] = OmegaConf.structured(component_schema(group, name))
    unknown = unknown_keys(schema, plain)
    if unknown:
        raise ConfigError(
            "\n".join(f"{key} is not a config key (misspelt?)" for key in unknown)
        )
    return cast(Config, OmegaConf.to_object(OmegaConf.merge(schema, plain)))


def unknown_keys(schema: DictConfig, plain: dict[str, Any], prefix: str = "") -> list:
    """Keys of `plain` that `schema` lacks, as dotted paths."""
    unknown = []
    for key, value in plain.items():
        path = f"{prefix}{key}"
        if key not in schema:
            unknown.append(path)
        elif isinstance(value, dict) and isinstance(schema[key], DictConfig):
            unknown += unknown_keys(schema[key], value, path + ".")
    return unknown


def validate(config: Config) -> None:
    """Raises `ConfigError` naming every key of the run's own sections whose value
    is out of range (component options are checked by their factories)."""
    problems = []
    for section in SECTIONS:
        problems += _problems(getattr(config, section), f"{section}.")
    problems += _problems(config, "", only=("seed",))
    if problems:
        raise ConfigError("\n".join(problems))


def _problems(node: Any, prefix: str, only: tuple[str, ...] = ()) -> list[str]:
    problems = []
    for spec in dataclasses.fields(node):
        check = spec.metadata.get("check")
        if check is None or (only and spec.name not in only):
            continue
        value = getattr(node, spec.name)
        if (allowed := check(value)) is not None:
            problems.append(f"{prefix}{spec.name}={value} is not allowed: {allowed}")
    return problems


def check_objective(objective: str, metrics: list[str], num_steps: int) -> None:
    """Raises `ConfigError` unless `objective` is `<metric>@step<i>` that eval makes."""
    allowed = f"<metric>@step<i> with metric in {metrics} and 0 <= i <= {num_steps}"
    metric, _, step = objective.partition("@step")
    if metric not in metrics or not step.isdigit() or int(step) > num_steps:
        raise ConfigError(f"eval.objective={objective} is not allowed: use {allowed}")


def options_of(component: Any) -> dict[str, Any]:
    """A typed component config's options (every field but `name`)."""
    return {
        spec.name: getattr(component, spec.name)
        for spec in dataclasses.fields(component)
        if spec.name != "name"
    }


def config_reference(conf_dir: Path | None = None) -> str:
    """Every config key as Markdown: the run's sections, then each group's options
    (the text of `docs/config.md`); with `conf_dir`, also every option file and
    preset there, by its first comment line."""
    lines = [
        "# Config reference",
        "",
        "Generated from the schema by `python -m metalearn.config conf >",
        "docs/config.md` (a test checks it is current). Override any key on the",
        "command line, `python train.py inner.lr=0.01`; choose a group option with",
        "`python train.py algo=fomaml`.",
        "",
        "## The run's keys",
        "",
        "| key | default | meaning |",
        "| --- | --- | --- |",
    ]
    for section in (*SECTIONS, None):
        node = Config if section is None else type(getattr(Config(), section))
        for spec in dataclasses.fields(node):
            if "help" not in spec.metadata:
                continue
            key = spec.name if section is None else f"{section}.{spec.name}"
            default = spec.default
            if spec.default_factory is not dataclasses.MISSING:
                default = spec.default_factory()
            shown = spec.metadata.get("shown")
            shown = f"`{shown}`" if shown else _show(default)
            lines.append(f"| `{key}` | {shown} | {spec.metadata['help']} |")
    for group, registry in GROUPS.items():
        lines += ["", f"## `{group}=`", ""]
        for name in registry:
            lines += [f"### `{group}={name}`", ""]
            options = registry.options(name)
            if not options:
                lines += ["No options.", ""]
                continue
            lines += ["| key | default | meaning |", "| --- | --- | --- |"]
            for option in options:
                lines.append(
                    f"| `{group}.{option.name}` | {_show(option.default)} | "
                    f"{option.help} |"
                )
            lines.append("")
    if conf_dir is not None:
        lines += _option_files(conf_dir)
    return "\n".join(lines).rstrip() + "\n"


def _option_files(conf_dir: Path) -> list[str]:
    """Per config group folder, each YAML option with its first comment line."""
    lines = ["", "## Option files and presets (`conf/`)", ""]
    lines += ["| choose | what it is |", "| --- | --- |"]
    for folder in sorted(p for p in conf_dir.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.yaml")):
            comment = next(
                (
                    line
                    for line in path.read_text().splitlines()
                    if line.startswith("# ") and not line.startswith("# @package")
                ),
                "# ",
            )[2:]
            what = comment.split(": ", 1)[-1].replace("|", "\\|")
            lines.append(f"| `{folder.name}={path.stem}` | {what} |")
    return lines


def _show(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value}`"


if __name__ == "__main__":
    import sys

    print(config_reference(Path(sys.argv[1]) if len(sys.argv) > 1 else None), end="")
