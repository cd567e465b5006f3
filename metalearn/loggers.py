"""Where metrics go: local files, W&B, a terminal progress bar. The only wandb import.

Every logger has the same two methods: `log(metrics, step)` for one window's metrics
and `finish(summary, exit_code)` once at the end (also after a failure, from a
`finally`). `LocalFiles` is always used, so analysis never depends on W&B; the
`logger=` group (`LOGGERS`) chooses what else gets the metrics.
"""

import contextlib
import json
import os
import secrets
import string
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

from metalearn.registry import Registry
from metalearn.rundir import (
    HISTORY_FILE,
    STATE_OF_EXIT,
    STATUS_FILE,
    SUMMARY_FILE,
    ExitCode,
    State,
    read_history,
    write_json_atomically,
    write_status,
    writing,
)

WANDB_RUN_ID = "wandb_run_id"  # key of the W&B run id in checkpoint metadata
LOGGERS = Registry("logger")


class Logger(Protocol):
    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def finish(self, summary: Mapping[str, Any], exit_code: int) -> None: ...


class LocalFiles:
    """Appends each window to `history.jsonl` (flushed, so an interrupted run keeps
    what it logged), writes `summary.json` atomically at the end, and keeps
    `status.json` saying whether the run is running, finished or failed."""

    def __init__(self, output_dir: str | os.PathLike, start_step: int = 0):
        """Resuming at `start_step` drops history rows logged after it."""
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_status(self.output_dir, State.RUNNING, pid=os.getpid())
        # a summary from an earlier (shorter) attempt no longer describes this run
        (self.output_dir / SUMMARY_FILE).unlink(missing_ok=True)
        history = self.output_dir / HISTORY_FILE
        kept = [row for row in read_history(history) if row["step"] <= start_step]
        history.write_text("".join(json.dumps(row) + "\n" for row in kept))
        self._history = open(history, "a")  # noqa: SIM115

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        try:
            self._history.write(json.dumps({"step": step, **metrics}) + "\n")
            self._history.flush()
        except OSError as error:
            raise writing(self.output_dir / HISTORY_FILE, error) from error

    def finish(self, summary: Mapping[str, Any], exit_code: int) -> None:
        with contextlib.suppress(OSError):  # a full disk: the failure is reported
            self._history.close()
        path = self.output_dir / SUMMARY_FILE
        try:
            if exit_code == ExitCode.OK:
                write_json_atomically(path, summary)
            path = self.output_dir / STATUS_FILE
            state = STATE_OF_EXIT.get(exit_code, State.FAILED)
            write_status(self.output_dir, state, pid=os.getpid())
        except OSError as error:
            raise writing(path, error) from error


class LoggerError(RuntimeError):
    """A logger could not start (e.g. W&B online without credentials)."""


class WandbRun:
    """A W&B run (offline unless `mode` says otherwise) written under `output_dir`.

    `wandb.init` takes a second or more; it runs in a background thread while
    training compiles and starts. Metrics logged before it is ready are kept and
    sent, in order, as soon as it is; `finish` waits for it. An error from
    `wandb.init` is raised, as a `LoggerError`, by the first `log`,
    `wait_started` or `finish` after it.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        project: str,
        mode: str,
        config: Mapping[str, Any],
        group: str | None,
        name: str | None,
        job_type: str,
        entity: str | None = None,
        tags: Sequence[str] = (),
        run_id: str | None = None,
        goals: Mapping[str, str] | None = None,
        objective: str | None = None,
        console: bool = False,
        system_stats: bool = False,
    ):
        """`run_id` continues that run (a resumed training run). `goals` (metric
        name -> min or max) and `objective` (`<metric>@step<i>`) declare the eval
        metrics' summaries and the run's objective to W&B."""
        self.run_id = run_id or new_run_id()
        self._mode = mode
        self._start_error_raised = False
        self._waiting: list[tuple[dict[str, Any], int]] = []
        self._goals = dict(goals or {})
        self._objective = objective
        self._defined = False
        starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wandb-init")
        self._starting = starter.submit(
            _init_wandb,
            output_dir,
            project,
            mode,
            entity,
            self.run_id,
            resume="allow" if run_id else None,
            config=dict(config),
            group=group,
            name=name,
            job_type=job_type,
            tags=list(tags),
            console=console,
            system_stats=system_stats,
        )
        starter.shutdown(wait=False)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self._waiting.append((dict(metrics), step))
        if self._starting.done():
            self.wait_started()

    def wait_started(self) -> None:
        """Waits for `wandb.init` and sends what was logged meanwhile; raises
        `LoggerError` if W&B could not start."""
        try:
            self._send_waiting()
        except LoggerError:
            self._start_error_raised = True
            raise

    def finish(self, summary: Mapping[str, Any], exit_code: int) -> None:
        """Ends the W&B run. If W&B never started, a successful run (exit code 0)
        raises `LoggerError`; a failed one only notes it on stderr, unless that
        error was raised already, so the error that ended the run stays the one
        reported."""
        try:
            run = self._send_waiting()
        except LoggerError as error:
            if exit_code == 0:
                raise
            if not self._start_error_raised:
                print(f"also: {error}", file=sys.stderr)
            return
        if exit_code == 0:
            run.summary.update(dict(summary))
        try:
            run.finish(exit_code=exit_code)
        except Exception as error:
            raise LoggerError(f"W&B could not finish its run: {error}") from error

    def _send_waiting(self):
        try:
            run = self._starting.result()
        except Exception as error:
            raise LoggerError(
                f"logger=wandb could not start its W&B run (logger.mode="
                f"{self._mode}): {error}\nIf that is about credentials: log in with "
                "`wandb login` or set WANDB_API_KEY. Or run with logger.mode=offline "
                "or logger=none."
            ) from error
        if not self._defined:
            define_metrics(run, self._goals, self._objective)
            self._defined = True
        for metrics, step in self._waiting:
            run.log(for_wandb(metrics, step, self._goals), step=step)
        self._waiting.clear()
        return run


def new_run_id() -> str:
    """A fresh W&B run id (8 characters of [a-z0-9], as W&B makes them)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _init_wandb(
    output_dir,
    project,
    mode,
    entity,
    run_id,
    resume="allow",
    console: bool = False,
    system_stats: bool = False,
    **options,
):
    """`wandb.init` as every run here needs it: files under `output_dir`, run id
    `run_id` (continued if it exists, with the default `resume`), console capture
    and system metrics only when asked for."""
    import wandb  # deferred: costs ~0.5 s and is not needed with logger=none

    settings = wandb.Settings(
        console="auto" if console else "off",
        x_disable_stats=not system_stats,
        silent=True,
    )
    return wandb.init(
        id=run_id,
        resume=resume,
        project=project,
        entity=entity,
        mode=mode,
        dir=str(output_dir),
        reinit="finish_previous",
        settings=settings,
        **options,
    )


META_STEP = "meta_step"  # the x-axis of every history key
SUMMARY_OF_GOAL = {"min": "min,last", "max": "max,last"}


def define_metrics(run, goals: Mapping[str, str], objective: str | None) -> None:
    """Every history key against the meta-step; each eval metric's summary keeps
    its best (min of a loss, max of an accuracy) and its last value; the objective
    is marked: its key and goal in the run's config (`objective_metric`,
    `objective_goal`), its best and last value in the summary."""
    run.define_metric(META_STEP)
    run.define_metric("*", step_metric=META_STEP)
    for name, goal in goals.items():
        run.define_metric(f"eval/{name}@step*", summary=SUMMARY_OF_GOAL[goal])
    if objective is not None:
        metric = objective.partition("@")[0]
        goal = goals.get(metric, goals.get(metric.rsplit("_k", 1)[0], "min"))
        run.define_metric(f"eval/{objective}", summary=SUMMARY_OF_GOAL[goal])
        run.config.update(
            {
                "objective_metric": f"eval/{objective}",
                "objective_goal": "maximize" if goal == "max" else "minimize",
            },
            allow_val_change=True,
        )


ADAPTATION_CURVE = "eval/adaptation_curve"


def for_wandb(
    metrics: Mapping[str, Any], step: int, goals: Mapping[str, str]
) -> dict[str, Any]:
    """One window's metrics as W&B takes them: the meta-step as a key, figure files
    as images and, after an evaluation, the adaptation curve (score vs adaptation
    steps, mean and 95% CI) as a table and a line plot."""
    import wandb

    row: dict[str, Any] = {META_STEP: step}
    for key, value in metrics.items():
        is_figure = key.startswith("figures/") and isinstance(value, str)
        row[key] = wandb.Image(value) if is_figure else value
    for name in goals:
        points = adaptation_points(metrics, name)
        if points:
            table = wandb.Table(columns=["adaptation_step", name, "ci95"], data=points)
            row[f"{ADAPTATION_CURVE}/{name}"] = wandb.plot.line(
                table, "adaptation_step", name, title=f"{name} vs adaptation steps"
            )
    return row


def adaptation_points(metrics: Mapping[str, Any], name: str) -> list[list[float]]:
    """[step, mean, ci95] for each adaptation step the metrics hold of `name`."""
    points, step = [], 0
    while f"eval/{name}@step{step}" in metrics:
        mean = metrics[f"eval/{name}@step{step}"]
        points.append([step, mean, metrics.get(f"eval/{name}_ci95@step{step}", 0.0)])
        step += 1
    return points


class ProgressBar:
    """A live tqdm bar (steps, meta-loss, steps/s); silent when not on a terminal."""

    def __init__(self, total_steps: int, initial_step: int = 0):
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total_steps, initial=initial_step, unit="step", disable=None
        )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self._bar.update(step - self._bar.n)
        postfix = {"meta_loss": metrics.get("train/meta_loss")}
        postfix["steps/s"] = round(metrics.get("perf/steps_per_s", 0.0))
        self._bar.set_postfix(postfix, refresh=False)

    def finish(self, summary: Mapping[str, Any], exit_code: int) -> None:
        self._bar.close()


class Fanout:
    """Sends every call to each of several loggers."""

    def __init__(self, loggers: Sequence[Logger]):
        self.loggers = list(loggers)

    def resume_meta(self) -> dict[str, Any]:
        """What a checkpoint records to continue these loggers: the W&B run id."""
        ids = [lg.run_id for lg in self.loggers if isinstance(lg, WandbRun)]
        return {WANDB_RUN_ID: ids[0] if ids else None}

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for logger in self.loggers:
            logger.log(metrics, step)

    def wait_started(self) -> None:
        """Waits for loggers that start in the background (W&B); raises
        `LoggerError` if one could not start."""
        for logger in self.loggers:
            if isinstance(logger, WandbRun):
                logger.wait_started()

    def finish(self, summary: Mapping[str, Any], exit_code: int) -> None:
        """Finishes every logger, even when one of them fails (the local files
        first, so they never wait on W&B)."""
        errors = []
        for logger in self.loggers:
            try:
                logger.finish(summary, exit_code)
            except Exception as error:  # noqa: BLE001 - re-raised below
                errors.append(error)
        if errors:
            raise errors[0]


def attach_images(
    output_dir: str | os.PathLike,
    run_id: str,
    images: Mapping[str, str | os.PathLike],
    project: str,
    mode: str,
    entity: str | None = None,
    step: int | None = None,
) -> None:
    """Adds PNG files to a finished W&B run (resumed by id) as `wandb.Image`s, at
    `step` (its last step: W&B drops rows logged below a run's current step)."""
    import wandb

    run = _init_wandb(output_dir, project, mode, entity, run_id)
    try:
        run.log(
            {key: wandb.Image(str(path)) for key, path in images.items()}, step=step
        )
    finally:
        run.finish()


class RunInfo(NamedTuple):
    """What a logger records about the run it logs."""

    output_dir: Path
    config: dict[str, Any]  # the resolved config, as plain values
    group: str | None  # e.g. one per multirun
    name: str | None  # e.g. the job's overrides
    job_type: str  # the algorithm
    run_id: str | None = None  # a resumed run: continue this W&B run
    goals: Mapping[str, str] = {}  # eval metric name -> min or max
    objective: str | None = None  # <metric>@step<i>


WandbMode = Literal["offline", "online", "disabled"]


def wandb_mode(mode: str | None) -> str:
    """`mode`, else `$WANDB_MODE`, else offline."""
    return mode or os.environ.get("WANDB_MODE") or "offline"


@LOGGERS.register("wandb")
def make_wandb_logger(
    run: RunInfo,
    *,
    project: str = "metalearn",
    entity: str | None = None,
    mode: WandbMode | None = None,
    group: str | None = None,
    tags: tuple[str, ...] = (),
    console: bool = False,
    system_stats: bool = False,
) -> "WandbRun":
    """A W&B run per job, written inside the job's output dir.

    Args:
        run: the run to log.
        project: W&B project.
        entity: W&B entity (user or team); null: your default.
        mode: `offline` (upload later with `wandb sync`), `online` or `disabled`;
            null: `$WANDB_MODE`, else offline.
        group: W&B group; null: one group per multirun (from its sweep dir), none
            for single runs.
        tags: W&B tags.
        console: capture the terminal output into the run (off: measured free
            of cost, but `train.log` and the run's history and summary already
            hold every line and metric).
        system_stats: record system metrics (CPU, memory, GPU) every few
            seconds (off: a background sampler; +0.1-0.15 s on a 17 s run).
    """
    return WandbRun(
        run.output_dir,
        project=project,
        entity=entity,
        mode=wandb_mode(mode),
        config=run.config,
        group=group or run.group,
        name=run.name,
        job_type=run.job_type,
        tags=tags,
        run_id=run.run_id,
        goals=run.goals,
        objective=run.objective,
        console=console,
        system_stats=system_stats,
    )


@LOGGERS.register("none")
def make_no_logger(run: RunInfo) -> None:
    """No logger beyond the run's local files (summary.json, history.jsonl)."""
    del run


def log_report(
    sweep_dir: Path,
    group: str,
    project: str,
    entity: str | None,
    mode: str,
    tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]],
    images: Mapping[str, Path],
) -> str:
    """One W&B run of `job_type=report` in the sweep's `group`, written under
    `sweep_dir`, holding the report's `tables` (name -> header, rows) as W&B tables
    and its `images` (name -> PNG); returns its run id."""
    import wandb

    run = _init_wandb(
        sweep_dir, project, mode, entity, new_run_id(), resume=None,
        group=group, job_type="report", name="report",
    )  # fmt: skip
    try:
        row: dict[str, Any] = {
            f"report/{name}": wandb.Table(columns=list(header), data=list(rows))
            for name, (header, rows) in tables.items()
        }
        row |= {
            f"report/{name}": wandb.Image(str(path)) for name, path in images.items()
        }
        run.log(row)
    finally:
        run.finish()
    return run.id
