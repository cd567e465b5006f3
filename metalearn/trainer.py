"""The compiled meta-training loop.

One jitted call runs a whole window of meta-steps (`lax.fori_loop`), sampling each
step's tasks on device from `fold_in(key, step)`. The window length is a traced
argument, so windows of any length share one compiled program, and a step's tasks
depend only on the run key and the step number, not on how steps are windowed. The
host reads metrics once per window.
"""

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metalearn.algorithms import Algorithm
from metalearn.algorithms.base import MetaParams
from metalearn.models import ModelState
from metalearn.tasks import TaskBatch, TaskFamily

TASK_AXIS = "tasks"  # the device-mesh axis the task batch is split over


def make_task_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A one-axis mesh over the first `num_devices` devices (default: all)."""
    devices = jax.devices()[: num_devices or jax.device_count()]
    return jax.sharding.Mesh(
        devices, (TASK_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )


class TrainState(NamedTuple):
    meta_params: MetaParams
    model_state: ModelState
    opt_state: optax.OptState
    key: jax.Array  # the run's task-sampling key; step keys are fold_in(key, step)
    step: jax.Array  # [] int32, meta-steps taken


def init_train_state(
    algorithm: Algorithm, optimizer: optax.GradientTransformation, key: jax.Array
) -> TrainState:
    init_key, task_key = jax.random.split(key)
    meta_params, model_state = algorithm.init(init_key)
    return TrainState(
        meta_params=meta_params,
        model_state=model_state,
        opt_state=optimizer.init(meta_params),
        key=task_key,
        step=jnp.zeros((), jnp.int32),
    )


class TrainStep(NamedTuple):
    """One meta-step, split into its two halves so a window can sample many steps'
    tasks in one vectorised call. `step(state)` runs both halves."""

    # (run key, steps [S]) -> the tasks of those steps, stacked: leaves [S, tasks, ...]
    sample_steps: Callable[[jax.Array, jax.Array], TaskBatch]
    update: Callable[[TrainState, TaskBatch], tuple[TrainState, jax.Array]]

    def __call__(self, state: TrainState) -> tuple[TrainState, jax.Array]:
        tasks = self.sample_steps(state.key, state.step[None])
        return self.update(state, jax.tree.map(lambda batch: batch[0], tasks))


def flat_optimizer(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformation:
    """`optimizer` applied to all meta-parameters as one vector (`optax.flatten`).

    Small networks have many small parameter arrays; one fused update instead of one
    per array is a measurable share of a sinusoid meta-step on CPU. Right for every
    element-wise optimiser (Adam, AdamW, SGD, RMSProp); a layer-wise one (LARS,
    LAMB) would need the arrays kept apart.
    """
    return optax.flatten(optimizer)


def make_train_step(
    algorithm: Algorithm,
    task: TaskFamily,
    optimizer: optax.GradientTransformation,
    tasks_per_step: int,
    num_support: int,
    num_query: int,
    mesh: jax.sharding.Mesh | None = None,
) -> TrainStep:
    """One meta-step: sample `tasks_per_step` tasks, meta-gradient, optimiser update.

    A step's tasks come from `fold_in(run key, step)` alone. With a `mesh` (one
    axis, "tasks"), the task batch is sharded across its devices and everything
    else replicated; XLA turns the mean over tasks into an all-reduce.
    `tasks_per_step` must be a multiple of the mesh size.
    """

    def shard_tasks(tasks: TaskBatch, *leading: None) -> TaskBatch:
        """Splits the task axis (after any `leading` axes) over the mesh."""
        if mesh is None:
            return tasks
        spec = jax.sharding.PartitionSpec(*leading, TASK_AXIS)
        sharding = jax.sharding.NamedSharding(mesh, spec)
        return jax.lax.with_sharding_constraint(tasks, sharding)

    def sample(key: jax.Array, step: jax.Array) -> TaskBatch:
        keys = jax.random.split(jax.random.fold_in(key, step), tasks_per_step)
        return jax.vmap(lambda k: task.sample(k, num_support, num_query))(keys)

    def sample_steps(key: jax.Array, steps: jax.Array) -> TaskBatch:
        return shard_tasks(jax.vmap(sample, in_axes=(None, 0))(key, steps), None)

    def update(state: TrainState, tasks: TaskBatch) -> tuple[TrainState, jax.Array]:
        tasks = shard_tasks(tasks)
        loss, grads, model_state = algorithm.meta_grad(
            state.meta_params, state.model_state, tasks
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.meta_params)
        meta_params = optax.apply_updates(state.meta_params, updates)
        next_state = TrainState(
            meta_params, model_state, opt_state, state.key, state.step + 1
        )
        return next_state, loss

    return TrainStep(sample_steps, update)


def make_train_window(
    train_step: TrainStep, sample_ahead: int = 100
) -> Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """Jitted `(state, num_steps) -> (state, metrics)` running `num_steps` steps.

    Tasks are sampled `sample_ahead` meta-steps at a time, in one vectorised call,
    then the steps run over them: the PRNG's fixed cost (on CPU, a loop per call)
    is paid once per `sample_ahead` steps, not every step. The numbers do not
    depend on it: each step's tasks still come from `fold_in(key, step)`.

    `metrics["train/meta_loss"]` is the mean meta-loss over the window;
    `metrics["finite"]` whether it and every meta-parameter are finite (one
    reduction per window: the NaN guard costs nothing per step).
    """

    def window(state: TrainState, num_steps: jax.Array):
        def run_block(block, carry):
            state, total = carry
            steps = state.step + jnp.arange(sample_ahead)
            tasks = train_step.sample_steps(state.key, steps)

            def run_step(i, carry):
                state, total = carry
                state, loss = train_step.update(
                    state, jax.tree.map(lambda batch: batch[i], tasks)
                )
                return state, total + loss

            steps_in_block = jnp.minimum(sample_ahead, num_steps - block * sample_ahead)
            return jax.lax.fori_loop(0, steps_in_block, run_step, (state, total))

        num_blocks = (num_steps + sample_ahead - 1) // sample_ahead
        state, total = jax.lax.fori_loop(
            0, num_blocks, run_block, (state, jnp.zeros((), jnp.float32))
        )
        finite = jnp.isfinite(total) & jnp.all(
            jnp.array(
                [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(state.meta_params)]
            )
        )
        mean_loss = total / jnp.maximum(num_steps, 1)
        return state, {"train/meta_loss": mean_loss, "finite": finite}

    return jax.jit(window, donate_argnums=0)


class Schedule(NamedTuple):
    num_steps: int  # total meta-steps of the run
    log_every: int  # metrics window length
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 0  # 0: checkpoint only at the end

    def due(self, step: int, every: int) -> bool:
        return step == self.num_steps or bool(every and step % every == 0)


def window_ends(start: int, schedule: Schedule) -> list[int]:
    """Steps where the host takes over: log, eval and checkpoint boundaries, the end."""
    ends = {schedule.num_steps}
    for every in (schedule.log_every, schedule.eval_every, schedule.checkpoint_every):
        if every:
            ends |= set(range(every, schedule.num_steps, every))
    return sorted(end for end in ends if end > start)


class NonFiniteError(RuntimeError):
    """The meta-loss or a meta-parameter became NaN or infinite."""


class Preempted(RuntimeError):
    """Training stopped on request (a signal) after saving a checkpoint."""


def fit(
    state: TrainState,
    train_window: Callable,
    schedule: Schedule,
    evaluate: Callable[[TrainState], Mapping[str, float]],
    on_metrics: Callable[[int, dict[str, Any]], None],
    checkpoint: Callable[[TrainState], None] = lambda state: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[TrainState, dict[str, Any]]:
    """Runs training from `state.step` to `schedule.num_steps`.

    Reports each window's metrics to `on_metrics`, evaluates every
    `schedule.eval_every` steps and checkpoints every `schedule.checkpoint_every`
    steps (both also at the end). Raises `NonFiniteError` on a non-finite
    meta-loss or meta-parameter (the last checkpoint stays the last good one), and
    `Preempted` after checkpointing when `should_stop()` turns true.

    Returns the final state and the run summary: the last window's metrics, the last
    evaluation, `perf/steps_per_s` over the whole run and `perf/compile_s`.
    """
    start = int(state.step)
    if start >= schedule.num_steps:  # e.g. a finished run requeued: score it again
        return state, dict(evaluate(state))
    compile_start = time.perf_counter()
    compiled = train_window.lower(state, jnp.int32(1)).compile()
    summary: dict[str, Any] = {"perf/compile_s": time.perf_counter() - compile_start}
    done, train_seconds = start, 0.0
    for end in window_ends(start, schedule):
        window_start = time.perf_counter()
        state, metrics = compiled(state, jnp.int32(end - done))
        metrics = {
            name: float(value) for name, value in jax.device_get(metrics).items()
        }
        seconds = time.perf_counter() - window_start
        if not metrics.pop("finite"):
            raise NonFiniteError(
                "the meta-loss or a meta-parameter became NaN or infinite between "
                f"meta-steps {done} and {end} (window meta-loss "
                f"{metrics['train/meta_loss']}); the last checkpoint is the last good "
                "state. Try a lower outer.lr or inner.lr, or fewer inner.steps."
            )
        metrics["perf/steps_per_s"] = (end - done) / seconds
        train_seconds, done = train_seconds + seconds, end
        if schedule.due(end, schedule.eval_every):
            metrics.update(evaluate(state))
        on_metrics(end, metrics)
        summary.update(metrics)
        stop = should_stop()
        if stop or schedule.due(end, schedule.checkpoint_every):
            checkpoint(state)
        if stop and end < schedule.num_steps:
            raise Preempted(f"stopped at meta-step {end}; a checkpoint was saved")
    if done > start:
        summary["perf/steps_per_s"] = (done - start) / train_seconds
    return state, summary
