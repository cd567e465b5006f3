"""Builds what a typed config names: task families, model, algorithm, optimiser,
the training window, the evaluation and the loggers.

Part of the wiring layer: the one place that turns config values into objects.
Everything it calls takes plain Python values.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import optax

from metalearn import figures
from metalearn.algorithms import Algorithm
from metalearn.config import GROUPS, Config, ConfigError, check_objective, options_of
from metalearn.evaluation import (
    EvaluateFn,
    adaptation_curve,
    flatten_scores,
    make_evaluate,
    support_of,
)
from metalearn.loggers import Fanout, LocalFiles, Logger, ProgressBar, RunInfo
from metalearn.models import Model
from metalearn.optimizers import flat_optimizer
from metalearn.registry import OptionError
from metalearn.runtime import on_first_device, program_bytes
from metalearn.tasks import TaskFamily, TaskSplits
from metalearn.trainer import (
    Schedule,
    TrainState,
    TrainWindow,
    make_train_step,
    make_train_window,
    tasks_at_once_for,
)

SAMPLE_BUDGET_BYTES = 16 * 2**20  # sampled tasks held at once (sample_ahead, eval)


class Parts(NamedTuple):
    tasks: TaskSplits
    model: Model
    algorithm: Algorithm
    optimizer: optax.GradientTransformation


def create(group: str, component: Any, *args: Any) -> Any:
    """`GROUPS[group].create(component.name, *args, **options)`, its option errors
    as `ConfigError`s naming the key (`task.ways=1 is not allowed: ...`)."""
    try:
        return GROUPS[group].create(component.name, *args, **options_of(component))
    except OptionError as error:
        raise ConfigError(f"{group}.{error}") from None


def build(config: Config) -> Parts:
    """Task families, model, algorithm and outer optimiser named by `config` (and
    the logger's options checked: it is made later, once the run dir is ours)."""
    try:
        GROUPS["logger"].check_choices(config.logger.name, **options_of(config.logger))
    except OptionError as error:
        raise ConfigError(f"logger.{error}") from None
    tasks = create("task", config.task, Path(config.data.root))
    train = tasks.train
    model = create("model", config.model, train.input_shape, train.output_size)
    check_algo_fits_task(config, train)
    if model.batch_norm in ("per_step", "support") and config.algo.name == "protonet":
        raise ConfigError(
            f"model.batch_norm={model.batch_norm} is not allowed with algo=protonet:"
            " it embeds support and query sets with their own batch statistics "
            "(transductive or none)"
        )
    if model.batch_norm == "per_step" and config.algo.name != "maml":
        raise ConfigError(
            f"model.batch_norm=per_step is not allowed with algo={config.algo.name}:"
            " per-step BatchNorm is a MAML++ option of algo=maml (or fomaml)"
        )
    algorithm = create(
        "algo", config.algo, model, train, config.inner.lr, config.inner.steps
    )
    optimizer = create(
        "optimizer", config.optimizer, config.outer.lr, config.outer.steps
    )
    if config.outer.clip_value is not None:
        optimizer = optax.chain(optax.clip(config.outer.clip_value), optimizer)
    check_examples_per_class(config, tasks)
    check_objective(
        config.eval.objective, _metric_names(config, tasks.test), config.eval.steps
    )
    return Parts(tasks, model, algorithm, flat_optimizer(optimizer))


def check_algo_fits_task(config: Config, family: TaskFamily) -> None:
    """Raises `ConfigError` for a classification-only algorithm (registered with
    `classification_only=True`, e.g. protonet) on a regression task."""
    name = config.algo.name
    if GROUPS["algo"].metadata(name).get("classification_only") and (
        family.num_classes is None
    ):
        tasks = GROUPS["task"]
        allowed = [t for t in tasks if tasks.metadata(t)["headline"] == "acc"]
        raise ConfigError(
            f"algo={name} is not allowed with task={config.task.name}: it classifies, "
            f"choose a classification task ({', '.join(allowed)})"
        )


def check_examples_per_class(config: Config, tasks: TaskSplits) -> None:
    """Raises `ConfigError` when a task would need more examples of a class than
    the dataset has (support plus query, per class)."""
    uses = [
        (
            tasks.train,
            "inner.k",
            config.inner.k,
            "outer.num_query",
            config.outer.num_query,
        ),
        (tasks.test, "eval.k", config.eval.k, "eval.num_query", config.eval.num_query),
    ] + [
        (tasks.test, "eval.extra_k", k, "eval.num_query", config.eval.num_query)
        for k in config.eval.extra_k
    ]
    for family, k_key, k, q_key, q in uses:
        limit = family.examples_per_class
        if limit is not None and k + q > limit:
            which = (
                "a class"
                if family.smallest_class is None
                else f"class {family.smallest_class}"
            )
            raise ConfigError(
                f"{k_key}={k} is not allowed with {q_key}={q}: {which} of "
                f"task={family.name} has only {limit} examples, so {k_key} + "
                f"{q_key} must be <= {limit}"
            )


def _metric_names(config: Config, family: TaskFamily) -> list[str]:
    extra = [f"{m}_k{k}" for m in family.metrics for k in config.eval.extra_k]
    return [*family.metrics, *extra]


def tasks_bytes(
    family: TaskFamily, num_tasks: int, num_support: int, num_query: int
) -> int:
    """Bytes of `num_tasks` sampled tasks (what sampling ahead holds per step)."""
    shapes = jax.eval_shape(
        jax.vmap(lambda key: family.sample(key, family.data, num_support, num_query)),
        jax.random.split(jax.random.key(0), num_tasks),
    )
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes))


def sample_ahead(config: Config, family: TaskFamily) -> int:
    """`train.sample_ahead`, or as many steps as fit in `SAMPLE_BUDGET_BYTES`; never
    more than a window runs (`train.log_every`)."""
    chosen = config.train.sample_ahead
    if chosen is None:
        step_bytes = tasks_bytes(
            family, config.outer.batch, config.inner.k, config.outer.num_query
        )
        chosen = max(1, SAMPLE_BUDGET_BYTES // step_bytes)
    return min(chosen, config.train.log_every)


def make_training_window(
    config: Config, parts: Parts, mesh: jax.sharding.Mesh | None = None
) -> TrainWindow:
    """The compiled `(state, data, num_steps) -> (state, metrics)` that `train.py`
    runs (`benchmarks/ours.py` times exactly this)."""
    step = make_train_step(
        parts.algorithm,
        parts.tasks.train,
        parts.optimizer,
        tasks_per_step=config.outer.batch,
        num_support=config.inner.k,
        num_query=config.outer.num_query,
        mesh=mesh,
        tasks_at_once=tasks_at_once_for(
            config.train.tasks_at_once, jax.default_backend()
        ),
    )
    return make_train_window(step, sample_ahead(config, parts.tasks.train))


def schedule(config: Config) -> Schedule:
    return Schedule(
        num_steps=config.outer.steps,
        log_every=config.train.log_every,
        eval_every=config.eval.every,
        checkpoint_every=config.checkpoint.every,
    )


def eval_tasks_per_batch(config: Config, family: TaskFamily) -> int:
    """`eval.tasks_per_batch`, or as many tasks as keep one chunk's sampled tasks
    under `SAMPLE_BUDGET_BYTES`."""
    chosen = config.eval.tasks_per_batch
    if chosen is None:
        task_bytes = tasks_bytes(family, 1, config.eval.k, config.eval.num_query)
        chosen = max(1, SAMPLE_BUDGET_BYTES // task_bytes)
    return min(chosen, config.eval.num_tasks)


Evaluation = Callable[..., dict[str, float]]


def make_evaluation(config: Config, parts: Parts, adapt_key: jax.Array) -> Evaluation:
    """`evaluate(state, **options) -> metrics`: the configured protocol at `eval.k`
    shots (keys `eval/<metric>@step<i>`) and at each of `eval.extra_k` (keys
    `eval/<metric>_k<K>@step<i>`), on the test family's data. `options` go to each
    protocol (`should_stop`; `on_chunk` counts the tasks done over all of them)."""
    family = parts.tasks.test
    tasks_key = jax.random.key(config.eval.seed)
    shots = {"": config.eval.k} | {f"_k{k}": k for k in config.eval.extra_k}
    protocols: dict[str, EvaluateFn] = {
        suffix: make_evaluate(
            parts.algorithm,
            family,
            num_tasks=config.eval.num_tasks,
            num_support=k,
            num_query=config.eval.num_query,
            num_steps=config.eval.steps,
            tasks_per_batch=eval_tasks_per_batch(config, family),
        )
        for suffix, k in shots.items()
    }

    def evaluate(state: TrainState, **options: Any) -> dict[str, float]:
        state = on_first_device(state)  # where the chunk programs were compiled
        metrics: dict[str, float] = {}
        on_chunk = options.pop("on_chunk", None)
        for index, (suffix, protocol) in enumerate(protocols.items()):
            if on_chunk is not None:  # tasks done over all protocols
                base = index * config.eval.num_tasks
                options["on_chunk"] = lambda done, base=base: on_chunk(base + done)
            scores = protocol(
                state.meta_params,
                state.model_state,
                family.data,
                tasks_key,
                adapt_key,
                **options,
            )
            metrics |= flatten_scores(scores, suffix)
        return metrics

    def bytes_needed(state: TrainState) -> int:
        """Memory of the largest chunk program (compiled now, before training)."""
        state = on_first_device(state)  # the state may be replicated over a mesh
        return max(
            program_bytes(
                p.compile_chunk(state.meta_params, state.model_state, family.data)
            )
            for p in protocols.values()
        )

    evaluate.bytes_needed = bytes_needed  # type: ignore[attr-defined]
    return evaluate


FigureFn = Callable[[TrainState], dict[str, str]]


def make_prediction_figure(
    config: Config, parts: Parts, adapt_key: jax.Array, figure_dir: Path
) -> FigureFn | None:
    """`draw(state) -> {"figures/predictions": png path}`: one held-out task (from
    `eval.seed`), adapted 0..`eval.steps` steps and drawn; None for tasks with
    no such figure (regression beyond 1-D inputs)."""
    family, algorithm = parts.tasks.test, parts.algorithm
    regression = family.num_classes is None
    if regression and family.input_shape != (1,):
        return None
    steps = config.eval.steps
    task_key = jax.random.fold_in(jax.random.key(config.eval.seed), 1)

    @jax.jit
    def adapt_and_predict(meta_params, model_state, data):
        task = family.sample(task_key, data, config.eval.k, config.eval.num_query)
        predictions = adaptation_curve(
            algorithm,
            meta_params,
            model_state,
            adapt_key,
            support_of(task),
            steps,
            lambda params, state: algorithm.predict(
                params, state, task.query_inputs, task.support_inputs
            ),
        )
        return task, predictions

    def draw(state: TrainState) -> dict[str, str]:
        task, predictions = jax.device_get(
            adapt_and_predict(state.meta_params, state.model_state, family.data)
        )
        step = int(state.step)
        if regression:
            shown = sorted({0, min(1, steps), steps})
            figure = figures.regression_fits(
                (task.support_inputs, task.support_targets),
                (task.query_inputs, task.query_targets),
                {s: predictions[s] for s in shown},
                title=f"a held-out task at meta-step {step}",
            )
        else:
            figure = figures.episode_grid(
                task.query_inputs,
                task.query_targets,
                predictions[-1].argmax(-1),
                title=f"a held-out episode after {steps} steps, meta-step {step}",
            )
        figure_dir.mkdir(parents=True, exist_ok=True)
        path = figure_dir / f"predictions_{step}.png"
        figure.savefig(path, dpi=80)
        return {"figures/predictions": str(path)}

    return draw


def make_logger(config: Config, run: RunInfo, start_step: int = 0) -> Fanout:
    """Local files and a progress bar, plus the `logger=` choice, from
    `start_step` on."""
    chosen: list[Logger] = [
        LocalFiles(run.output_dir, start_step),
        ProgressBar(config.outer.steps, start_step),
    ]
    extra = create("logger", config.logger, run)
    return Fanout(chosen if extra is None else [*chosen, extra])
