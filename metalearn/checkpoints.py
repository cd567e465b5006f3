"""Checkpoints of the training state, written atomically by orbax-checkpoint.

A checkpoint holds the whole `TrainState` (meta-parameters, model state, optimiser
state, PRNG key, step) plus a small JSON `meta` dict (e.g. the W&B run id). orbax
writes each step into a temporary directory and renames it when complete, so a
crash mid-write never leaves a corrupt latest checkpoint.
"""

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from metalearn.trainer import TrainState


def _to_disk(state: TrainState) -> dict[str, Any]:
    return state._replace(key=jax.random.key_data(state.key))._asdict()


def _from_disk(saved: dict[str, Any], key_impl) -> TrainState:
    state = TrainState(**saved)
    return state._replace(key=jax.random.wrap_key_data(state.key, impl=key_impl))


class IncompatibleCheckpoint(RuntimeError):
    """A checkpoint whose state does not fit the training state being restored."""


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
        step = int(state.step)
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_disk(state)),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, template: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The latest checkpoint, shaped like `template` (e.g. a fresh state)."""
        step = self._manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
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
