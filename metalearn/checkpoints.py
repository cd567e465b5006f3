"""Checkpoints of the training state, written atomically by orbax-checkpoint, that
heal: a damaged one is detected and the newest intact one restored instead.

A checkpoint holds the whole `TrainState` (meta-parameters, model state, optimiser
state, PRNG key, step) plus a small JSON `meta` dict (e.g. the W&B run id). orbax
writes each step into a temporary directory and renames it when complete; beside
each step's directory, `<step>.sha256.json` records a checksum of every file orbax
wrote, so a checkpoint damaged later (a file missing, truncated or changed, an
empty folder) is recognised on restore, reported in one line, and passed over for
the one before it.
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from metalearn.rundir import write_json_atomically, writing
from metalearn.trainer import TrainState

log = logging.getLogger(__name__)
CHECKSUMS = ".sha256.json"  # <step>.sha256.json beside <step>/


def checksums(step_dir: Path) -> dict[str, str]:
    """sha256 of every file below `step_dir`, by relative path."""
    return {
        str(path.relative_to(step_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(step_dir.rglob("*"))
        if path.is_file()
    }


def damage(step_dir: Path) -> str | None:
    """Why the checkpoint in `step_dir` is damaged, or None if its files are as
    written (a checkpoint of an older version, without checksums, is taken on
    trust)."""
    if not step_dir.is_dir() or not any(step_dir.iterdir()):
        return "empty"
    record = step_dir.with_name(step_dir.name + CHECKSUMS)
    if not record.exists():
        return None
    try:
        expected = json.loads(record.read_text())
    except ValueError:
        return f"unreadable {record.name}"
    found = checksums(step_dir)
    missing = sorted(expected.keys() - found.keys())
    if missing:
        return f"missing {missing[0]}"
    changed = sorted(k for k in expected if expected[k] != found[k])
    return f"{changed[0]} does not match its checksum" if changed else None


def _to_disk(state: TrainState) -> dict[str, Any]:
    return state._replace(key=jax.random.key_data(state.key))._asdict()


def _from_disk(saved: dict[str, Any], key_impl) -> TrainState:
    state = TrainState(**saved)
    return state._replace(key=jax.random.wrap_key_data(state.key, impl=key_impl))


class IncompatibleCheckpoint(RuntimeError):
    """A checkpoint whose state does not fit the training state being restored."""


class NoIntactCheckpoint(RuntimeError):
    """Every checkpoint of the run is damaged."""


class Checkpointer:
    """Saves and restores `TrainState`s under `directory/<step>/`."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False
            ),
        )

    def save(self, state: TrainState, meta: dict[str, Any]) -> None:
        """Saves `state` at its step, with `meta`; raises `OutputError` if the disk
        refuses (orbax writes into a temporary dir: the previous checkpoints stay
        intact)."""
        step = int(state.step)
        if step in self._manager.all_steps():
            return
        step_dir = self.directory / str(step)
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_to_disk(state)),
                    meta=ocp.args.JsonSave(meta),
                ),
            )
            self._manager.wait_until_finished()
            record = step_dir.with_name(step_dir.name + CHECKSUMS)
            write_json_atomically(record, checksums(step_dir))
        except Exception as error:  # noqa: BLE001 - orbax wraps the OS's errors
            raise writing(step_dir, error) from error
        for stale in self.directory.glob(f"*{CHECKSUMS}"):  # of steps orbax dropped
            if not stale.with_name(stale.name.removesuffix(CHECKSUMS)).exists():
                stale.unlink()

    def steps(self) -> list[int]:
        """The steps that have a checkpoint directory, newest first."""
        if not self.directory.is_dir():
            return []
        named = (p.name for p in self.directory.iterdir() if p.is_dir())
        return sorted((int(name) for name in named if name.isdigit()), reverse=True)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[0] if steps else None

    def restore(self, template: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The newest intact checkpoint, shaped like `template` (e.g. a fresh
        state); each damaged one newer than it is reported in one log line.

        Raises:
            FileNotFoundError: there is no checkpoint.
            NoIntactCheckpoint: every checkpoint is damaged.
            IncompatibleCheckpoint: it was written for another training state.
        """
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        problems = []
        for step in steps:
            problem = damage(self.directory / str(step))
            if problem is None:
                try:
                    return self._restore(step, template)
                except IncompatibleCheckpoint:
                    raise
                except Exception as error:  # noqa: BLE001 - orbax's many failures
                    problem = f"orbax could not read it: {str(error).splitlines()[0]}"
            problems.append(f"{step} ({problem})")
            log.warning(
                "checkpoint %s is damaged (%s); trying the one before",
                self.directory / str(step),
                problem,
            )
        raise NoIntactCheckpoint(
            f"no intact checkpoint in {self.directory}: damaged: {', '.join(problems)}"
        )

    def _restore(
        self, step: int, template: TrainState
    ) -> tuple[TrainState, dict[str, Any]]:
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_to_disk(template)),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except ValueError as error:  # orbax: the saved tree has another structure
            raise IncompatibleCheckpoint(
                f"the checkpoint {self.directory / str(step)} holds a training state "
                "laid out differently from the one this version of metalearn builds "
                "(for example, one saved before metalearn kept the optimiser state as "
                "one vector); it cannot be resumed: start a new run. orbax said: "
                + str(error).splitlines()[0]
            ) from error
        key_impl = jax.random.key_impl(template.key)
        return _from_disk(dict(restored.state), key_impl), dict(restored.meta)

    def close(self) -> None:
        self._manager.close()
