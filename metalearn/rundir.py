"""The run directory: every file a run writes, its status values and exit codes.

One run's output dir holds (names below are the only place they are spelt):

| file | written |
| --- | --- |
| `config.json` | the resolved config, when the run starts (a resume rewrites it) |
| `status.json` | `{"state": running / finished / failed / preempted, ...}` |
| `history.jsonl` | one JSON line per metrics window, flushed as it goes |
| `summary.json` | the final metrics, atomically, when the run finishes |
| `checkpoints/<step>/` | the training state (orbax) |
| `figures/` | prediction figures drawn at evaluations (`eval.figures`) |
| `.hydra/` | Hydra's composed config and overrides (the report reads them) |

Every JSON file is replaced atomically, so a reader never sees half a file; a kill
can only cut the last line of `history.jsonl`, which readers drop.
"""

import enum
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
HISTORY_FILE = "history.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
FIGURE_DIR = "figures"
HYDRA_DIR = ".hydra"
SWEEP_RECORD = "multirun.yaml"  # what Hydra writes into a sweep dir


class State(enum.StrEnum):
    """What `status.json` says of a run."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    PREEMPTED = "preempted"


class ExitCode(enum.IntEnum):
    """How `python train.py` exits."""

    OK = 0
    FAILED = 1  # training failed (e.g. the NaN guard)
    REFUSED = 2  # refused before training: a bad config, data or logger
    PREEMPTED = 3  # stopped by SIGTERM/SIGINT after saving a checkpoint


STATE_OF_EXIT: dict[int, State] = {
    ExitCode.OK: State.FINISHED,
    ExitCode.PREEMPTED: State.PREEMPTED,
}


def write_text_atomically(path: Path, text: str) -> None:
    """Writes to a temporary file and renames it, so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None if it is missing or not valid JSON."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


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


def write_status(run_dir: Path, state: State, **details: Any) -> None:
    write_json_atomically(run_dir / STATUS_FILE, {"state": str(state), **details})


def started_here(run_dir: Path) -> bool:
    """Whether this process started the run in `run_dir` (its status says so)."""
    status = read_json(run_dir / STATUS_FILE) or {}
    return status.get("pid") == os.getpid()


def read_state(run_dir: Path) -> State | None:
    """The run's state from `status.json`; None when there is none to read."""
    status = read_json(run_dir / STATUS_FILE)
    try:
        return State(status["state"]) if status else None
    except (KeyError, ValueError):
        return None


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the checkpoints in `run_dir`, oldest first (reading only)."""
    directory = run_dir / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def has_checkpoint(run_dir: Path) -> bool:
    return bool(checkpoint_steps(run_dir))


def latest_step(run_dir: Path) -> int | None:
    steps = checkpoint_steps(run_dir)
    return steps[-1] if steps else None


def sweep_group(sweep_dir: Path) -> str:
    """The W&B group of a sweep's runs: `<date>_<time>` of its dir (the default
    sweep dir is `multirun/<date>/<time>`)."""
    sweep_dir = Path(sweep_dir).absolute()
    return f"{sweep_dir.parent.name}_{sweep_dir.name}"


class OutputError(RuntimeError):
    """A run's output could not be written (a full disk, a read-only file); the
    message names the path."""


def writing(path: Path, reason: BaseException) -> OutputError:
    """An `OutputError` for `path` from the OS's (or orbax's) error."""
    detail = getattr(reason, "strerror", None) or str(reason).splitlines()[0]
    return OutputError(f"cannot write {path}: {detail}")


class RunDirBusy(RuntimeError):
    """Another process is training in the run dir."""


class RunLock:
    """Holds `<run dir>/.lock` while a process trains there, so a second process
    (a second `resume=` of the same dir) is refused instead of corrupting it. The
    operating system releases the lock when the process ends, however it ends.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self._file: Any = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise RunDirBusy(
                f"{self.path.parent} is in use: process {holder} is training in it "
                "(wait for it to end, or stop it first)"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
