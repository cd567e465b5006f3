"""Runs one configured experiment: build, restore or start, train, evaluate, record.

The top of the wiring layer: `train.py` hands it the composed config, and
everything it calls takes plain Python objects.
"""

import logging
import os
from collections.abc import Mapping
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import jax
from omegaconf import DictConfig
from tqdm.auto import tqdm

from metalearn.build import (
    Parts,
    build,
    make_evaluation,
    make_logger,
    make_prediction_figure,
    make_training_window,
    schedule,
)
from metalearn.checkpoints import Checkpointer
from metalearn.config import Config, ConfigError, typed, validate
from metalearn.loggers import WANDB_RUN_ID, Fanout, RunInfo, wandb_mode
from metalearn.metrics import Goal
from metalearn.resume import check_run_dir, plain, restore_or_start
from metalearn.rundir import (
    CHECKPOINT_DIR,
    FIGURE_DIR,
    HISTORY_FILE,
    ExitCode,
    RunLock,
    read_history,
    write_text_atomically,
)
from metalearn.runtime import (
    DeviceError,
    StopFlag,
    check_fits,
    free_memory,
    on_first_device,
    program_bytes,
    replicate,
    task_mesh,
    use_compile_cache,
    use_cpu_devices,
)
from metalearn.trainer import (
    Preempted,
    TrainState,
    chunks_per_device,
    fit,
    tasks_at_once_for,
)

log = logging.getLogger(__name__)

TRAIN_SECONDS = "train_seconds"  # checkpoint metadata: training time so far


def run(
    cfg: Config | DictConfig,
    output_dir: str | os.PathLike,
    group: str | None = None,
    name: str | None = None,
    records: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Trains and evaluates the configured experiment; returns its summary.

    Writes the run dir (`metalearn.rundir`) and, with `logger=wandb`, a W&B run.
    When `output_dir` already holds a checkpoint of the same run (a resume, or a
    requeued cluster job), training continues from it, into the same W&B run. The
    summary's `objective` is `eval/<eval.objective>`, the value sweepers optimise.
    `records` (relative path -> text, e.g. Hydra's `.hydra/overrides.yaml`) are
    written into `output_dir` once it is known to hold this run, never before: a
    refused run writes nothing into another run's dir.

    Raises:
        ConfigError: before any output, for a value out of range, or for a config
            that differs from the one `output_dir` was started with.
        DataError: the task's dataset is not prepared.
        NonFiniteError: the meta-loss or a parameter became NaN/inf.
        Preempted: SIGTERM/SIGINT arrived; a checkpoint was saved first.
    """
    config = cfg if isinstance(cfg, Config) else typed(cfg)
    validate(config)
    use_compile_cache(config.train.compile_cache)
    use_cpu_devices(config.train.cpu_devices)  # before JAX first computes
    parts = build(config)
    mesh = device_mesh(config)
    output_dir = Path(output_dir)
    check_run_dir(config, output_dir)  # reads only: another run's dir is refused
    with (
        RunLock(output_dir),
        closing(
            Checkpointer(output_dir / CHECKPOINT_DIR, config.checkpoint.keep)
        ) as checkpointer,
    ):
        train_key, eval_key = jax.random.split(jax.random.key(config.seed))
        state, meta = restore_or_start(
            config,
            parts.algorithm,
            parts.optimizer,
            output_dir,
            checkpointer,
            train_key,
        )
        state = replicate(state, mesh)  # a restored state sits on one device
        for relative, text in (records or {}).items():
            (output_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(output_dir / relative, text)
        info = RunInfo(
            output_dir,
            plain(config),
            group,
            name,
            parts.algorithm.name,
            run_id=meta.get(WANDB_RUN_ID),
            goals=metric_goals(config, parts),
            objective=config.eval.objective,
        )
        logger = make_logger(config, info, int(state.step))
        return train(config, parts, mesh, state, meta, logger, checkpointer, eval_key)


def device_mesh(config: Config) -> jax.sharding.Mesh | None:
    """The mesh the task batch is split over; also checks that each device's
    share of it splits into chunks of `train.tasks_at_once`."""
    try:
        mesh = task_mesh(config.train.devices, config.outer.batch)
    except DeviceError as error:
        raise ConfigError(str(error)) from None
    devices = 1 if mesh is None else mesh.devices.size
    at_once = tasks_at_once_for(config.train.tasks_at_once, jax.default_backend())
    try:
        chunks_per_device(config.outer.batch, devices, at_once)
    except ValueError as error:
        raise ConfigError(f"train.{error} (outer.batch={config.outer.batch})") from None
    log.info(
        "meta-steps of %d tasks on %d of %d %s device(s), %s tasks at once each",
        config.outer.batch, devices, jax.device_count(), jax.default_backend(),
        at_once or "all",
    )  # fmt: skip
    return mesh


def train(
    config: Config,
    parts: Parts,
    mesh: jax.sharding.Mesh | None,
    state: TrainState,
    meta: dict[str, Any],
    logger: Fanout,
    checkpointer: Checkpointer,
    eval_key: jax.Array,
) -> dict[str, Any]:
    """Trains from `state` (fresh or restored with its checkpoint `meta`), logging,
    checkpointing and evaluating as configured; returns the run's summary."""
    output_dir = checkpointer.directory.parent
    start_step = int(state.step)  # read now: training donates the state's buffers
    evaluation = make_evaluation(config, parts, eval_key)
    draw = None
    if config.eval.figures:
        draw = make_prediction_figure(config, parts, eval_key, output_dir / FIGURE_DIR)
    eval_tasks = config.eval.num_tasks * (1 + len(config.eval.extra_k))
    seconds_before = meta.get(TRAIN_SECONDS, 0.0)
    minutes = config.train.max_minutes
    summary: dict[str, Any] = {}
    exit_code = ExitCode.FAILED
    try:
        with StopFlag() as stop:
            result = fit(
                state,
                make_training_window(config, parts, mesh),
                replicate(parts.tasks.train.data, mesh),
                schedule(config),
                evaluate=lambda s: evaluate(s, evaluation, draw, stop, eval_tasks),
                on_metrics=lambda step, metrics: logger.log(metrics, step),
                checkpoint=lambda s, seconds: checkpointer.save(
                    s, {**logger.resume_meta(), TRAIN_SECONDS: seconds_before + seconds}
                ),
                should_stop=stop,
                time_limit=None if minutes is None else minutes * 60 - seconds_before,
                check=lambda window: check_memory(window, evaluation, state, mesh),
            )
        summary = result.summary
        if start_step:  # resumed: the windows before the checkpoint count too
            before = read_history(output_dir / HISTORY_FILE)
            summary = {**(before[-1] if before else {}), **summary}
            summary.pop("step", None)
        summary = {k: v for k, v in summary.items() if not isinstance(v, str)}
        summary["train/steps"] = int(result.state.step)
        summary["train/seconds"] = seconds_before + result.train_seconds
        summary["objective"] = summary[f"eval/{config.eval.objective}"]
        logger.wait_started()  # W&B that never started fails the run, here
        exit_code = ExitCode.OK
    except BaseException as error:
        exit_code = ExitCode.PREEMPTED if isinstance(error, Preempted) else exit_code
        # the error that ended the run is the one reported: on a full disk the
        # loggers cannot write their last files either
        with suppress(Exception):
            logger.finish(summary, exit_code)
        raise
    logger.finish(summary, exit_code)
    return summary


TRAIN_KEYS = (
    "outer.batch, inner.k, outer.num_query, inner.steps, train.tasks_at_once or "
    "train.sample_ahead"
)
EVAL_KEYS = "eval.tasks_per_batch, eval.k or eval.num_query (or eval.steps)"


def check_memory(
    window: Any, evaluation: Any, state: TrainState, mesh: jax.sharding.Mesh | None
) -> None:
    """Refuses, before any training, a training window or an evaluation chunk
    that cannot fit in the memory that is free, naming the keys to lower.

    A program's memory is per device; CPU devices share the host's memory, so
    there it counts once per device of the mesh.
    """
    free = free_memory(jax.devices()[0])
    devices = 1 if mesh is None else mesh.devices.size
    shared = jax.default_backend() == "cpu"  # one host memory for all its devices
    train = program_bytes(window) * (devices if shared else 1)
    check_fits("compiled training window", train, TRAIN_KEYS, free)
    needed = evaluation.bytes_needed(state)
    check_fits("evaluation of one chunk of tasks", needed, EVAL_KEYS, free)


def metric_goals(config: Config, parts: Parts) -> dict[str, Goal]:
    """Each eval metric name (also at `eval.extra_k`) and its goal, min or max."""
    goals = {name: m.goal for name, m in parts.tasks.test.metrics.items()}
    extra = {f"{n}_k{k}": g for n, g in goals.items() for k in config.eval.extra_k}
    return goals | extra


def evaluate(state, evaluation, draw, stop: StopFlag, total: int) -> dict[str, Any]:
    """The evaluation's metrics (with a progress bar over its `total` tasks) and,
    with `eval.figures`, the prediction figure's file."""
    state = on_first_device(state)  # training may have replicated it over a mesh
    bar = tqdm(desc="evaluating", total=total, unit="task", leave=False, disable=None)
    with bar:
        metrics: dict[str, Any] = evaluation(
            state, should_stop=stop, on_chunk=lambda done: bar.update(done - bar.n)
        )
    return metrics | (draw(state) if draw is not None else {})


def summary_lines(
    summary: dict[str, Any], config: Config, output_dir: Path
) -> list[str]:
    """What a finished run tells its user: the headline scores with their CIs
    after 1 and after `eval.steps` adaptation steps, the objective, the speed, the
    output dir and, for an offline W&B run, how to upload it."""
    metric = config.eval.objective.partition("@")[0]
    lines = [f"Finished {int(summary['train/steps'])} meta-steps."]
    scores: dict[str, tuple[float, float]] = {}  # steps -> (score, its CI)
    for step in sorted({min(1, config.eval.steps), config.eval.steps}):
        key = f"eval/{metric}@step{step}"
        if key in summary:
            ci = summary.get(f"eval/{metric}_ci95@step{step}", float("nan"))
            scores[str(step)] = (summary[key], ci)
    every_step = {
        (
            summary.get(f"eval/{metric}@step{i}"),
            summary.get(f"eval/{metric}_ci95@step{i}"),
        )
        for i in range(1, config.eval.steps + 1)
    }
    if len(scores) > 1 and len(every_step) == 1:
        # the same after every step (ProtoNets adapts once): one line
        first, *_, last = scores
        scores = {f"{first} to {last}": scores[first]}
    for steps, (score, ci) in scores.items():
        lines.append(
            f"  {metric} after {steps} adaptation step(s): {score:.4g} "
            f"± {ci:.2g} (95% CI over {config.eval.num_tasks} held-out tasks)"
        )
    lines.append(
        f"  objective eval/{config.eval.objective} = {summary['objective']:.4g}"
    )
    if "perf/steps_per_s" in summary:
        lines.append(f"  speed: {summary['perf/steps_per_s']:.1f} meta-steps/s")
    lines.append(f"  outputs: {output_dir}")
    logger = config.logger
    if logger.name == "wandb" and wandb_mode(logger.mode) == "offline":
        lines.append(
            f"  upload the W&B run: wandb sync {output_dir}/wandb/offline-run-*"
        )
    return lines
