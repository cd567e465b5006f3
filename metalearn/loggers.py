"""Where metrics go: local files, W&B, a terminal progress bar. The only wandb import.

Every logger has the same two methods: `log(metrics, step)` for one window's metrics
and `finish(summary, exit_code)` once at the end (also after a failure, from a
`finally`). `LocalFiles` is always used, so analysis never depends on W&B.
"""

import json
import os
import secrets
import string
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

HISTORY_FILE = "history.jsonl"
SUMMARY_FILE = "summary.json"
STATUS_FILE = "status.json"  # {"state": running | finished | failed | preempted}
PREEMPTED_EXIT_CODE = 3  # the exit code a run stopped by SIGTERM/SIGINT reports
WANDB_RUN_ID = "wandb_run_id"  # key of the W&B run id in checkpoint metadata


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
        write_json_atomically(self.output_dir / STATUS_FILE, {"state": "running"})
        # a summary from an earlier (shorter) attempt no longer describes this run
        (self.output_dir / SUMMARY_FILE).unlink(missing_ok=True)
        history = self.output_dir / HISTORY_FILE
        kept = [row for row in read_history(history) if row["step"] <= start_step]
        history.write_text("".join(json.dumps(row) + "\n" for row in kept))
        self._history = open(history, "a")  # noqa: SIM115

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self._history.write(json.dumps({"step": step, **metrics}) + "\n")
        self._history.flush()

    def finish(self, summary: Mapping[str, Any], exit_code: int) -> None:
        self._history.close()
        if exit_code == 0:
            write_json_atomically(self.output_dir / SUMMARY_FILE, summary)
        state = {0: "finished", PREEMPTED_EXIT_CODE: "preempted"}.get(
            exit_code, "failed"
        )
        write_json_atomically(self.output_dir / STATUS_FILE, {"state": state})


def read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of a `history.jsonl`; a last line cut short by a kill is dropped."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def write_json_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    """Writes to a temporary file and renames it, so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


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
    ):
        """`run_id` continues that run (a resumed training run)."""
        self.run_id = run_id or new_run_id()
        self._mode = mode
        self._start_error_raised = False
        self._waiting: list[tuple[dict[str, Any], int]] = []
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
        for metrics, step in self._waiting:
            run.log(metrics, step=step)
        self._waiting.clear()
        return run


def new_run_id() -> str:
    """A fresh W&B run id (8 characters of [a-z0-9], as W&B makes them)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _init_wandb(output_dir, project, mode, entity, run_id, resume="allow", **options):
    """`wandb.init` as every run here needs it: files under `output_dir`, no console
    capture or system stats, run id `run_id` (continued if it exists, with the
    default `resume`)."""
    import wandb  # deferred: costs ~0.5 s and is not needed with logger=none

    return wandb.init(
        id=run_id,
        resume=resume,
        project=project,
        entity=entity,
        mode=mode,
        dir=str(output_dir),
        reinit="finish_previous",
        settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        **options,
    )


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
