"""The compiled meta-training loop.

One jitted call runs a whole window of meta-steps (`lax.fori_loop`), sampling each
step's tasks on device from `fold_in(key, step)` and the task family's data, which
is an argument of the compiled program (never a constant inside it). The window
length is a traced argument, so windows of any length share one compiled program,
and a step's tasks depend only on the run key and the step number, not on how steps
are windowed. The host reads metrics once per window.
"""

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from metalearn.algorithms import Algorithm
from metalearn.algorithms.base import MetaGradient, MetaParams, Metrics
from metalearn.evaluation import EvaluationStopped
from metalearn.models import ModelState
from metalearn.tasks import Data, TaskBatch, TaskFamily

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


class SampleStepsFn(Protocol):
    """`(run key, data, steps [S]) -> tasks` of those steps, leaves `[S, T, ...]`."""

    def __call__(self, key: jax.Array, data: Data, steps: jax.Array) -> TaskBatch: ...


class UpdateFn(Protocol):
    """`(state, tasks [T, ...]) -> (next state, (meta-loss, metrics))`."""

    def __call__(
        self, state: TrainState, tasks: TaskBatch
    ) -> tuple[TrainState, tuple[jax.Array, Metrics]]: ...


class TrainStep(NamedTuple):
    """One meta-step, split into its two halves so a window can sample many steps'
    tasks in one vectorised call. `step(state, data)` runs both halves."""

    sample_steps: SampleStepsFn
    update: UpdateFn

    def __call__(self, state: TrainState, data: Data):
        tasks = self.sample_steps(state.key, data, state.step[None])
        return self.update(state, jax.tree.map(lambda batch: batch[0], tasks))


def make_train_step(
    algorithm: Algorithm,
    task: TaskFamily,
    optimizer: optax.GradientTransformation,
    tasks_per_step: int,
    num_support: int,
    num_query: int,
    mesh: jax.sharding.Mesh | None = None,
    tasks_at_once: int = 0,
) -> TrainStep:
    """One meta-step: sample `tasks_per_step` tasks, meta-gradient, optimiser update.

    A step's tasks come from `fold_in(run key, step)` alone. With a `mesh` (one
    axis, "tasks"), the task batch is sharded across its devices and everything
    else replicated; XLA turns the mean over tasks into an all-reduce.
    `tasks_per_step` must be a multiple of the mesh size.

    `tasks_at_once` (0: all) bounds how many tasks' meta-gradients are computed
    together (vmapped): each device then loops over its tasks in chunks of that
    many and averages the chunks' meta-gradients (`chunked_meta_grad`). The
    numbers are the same up to float rounding; one task at a time keeps a 20-way
    task's activations in the CPU's cache and its memory to one task's. An
    algorithm that pools its tasks into one batch (`pools_tasks`) always takes
    them all at once.
    """
    num_devices = 1 if mesh is None else mesh.devices.size
    if algorithm.pools_tasks:  # its numbers depend on which tasks are together
        tasks_at_once = 0
    meta_grad = chunked_meta_grad(
        algorithm.meta_grad, tasks_per_step, num_devices, tasks_at_once, mesh
    )

    def shard_tasks(tasks: TaskBatch, *leading: None) -> TaskBatch:
        """Splits the task axis (after any `leading` axes) over the mesh."""
        if mesh is None:
            return tasks
        spec = jax.sharding.PartitionSpec(*leading, TASK_AXIS)
        sharding = jax.sharding.NamedSharding(mesh, spec)
        return jax.lax.with_sharding_constraint(tasks, sharding)

    def sample(key: jax.Array, data: Data, step: jax.Array) -> TaskBatch:
        keys = jax.random.split(jax.random.fold_in(key, step), tasks_per_step)
        return jax.vmap(lambda k: task.sample(k, data, num_support, num_query))(keys)

    def sample_steps(key: jax.Array, data: Data, steps: jax.Array) -> TaskBatch:
        tasks = jax.vmap(sample, in_axes=(None, None, 0))(key, data, steps)
        return shard_tasks(tasks, None)

    def update(state: TrainState, tasks: TaskBatch):
        tasks = shard_tasks(tasks)
        result = meta_grad(state.meta_params, state.model_state, tasks, state.step)
        updates, opt_state = optimizer.update(
            result.grads, state.opt_state, state.meta_params
        )
        meta_params = optax.apply_updates(state.meta_params, updates)
        next_state = TrainState(
            meta_params, result.model_state, opt_state, state.key, state.step + 1
        )
        return next_state, (result.loss, result.metrics)

    return TrainStep(sample_steps, update)


def tasks_at_once_for(setting: int | None, backend: str) -> int:
    """`train.tasks_at_once` on `backend`; None: one task at a time on a CPU (its
    cache holds one task's activations), all at once elsewhere."""
    if setting is not None:
        return setting
    return 1 if backend == "cpu" else 0


def chunks_per_device(tasks_per_step: int, num_devices: int, tasks_at_once: int) -> int:
    """How many chunks of `tasks_at_once` tasks each device's share of the task
    batch splits into (1: the whole share at once, also for `tasks_at_once` 0)."""
    share = tasks_per_step // num_devices
    if tasks_at_once < 0 or (tasks_at_once and share % tasks_at_once):
        raise ValueError(
            f"tasks_at_once={tasks_at_once} is not allowed: each of {num_devices} "
            f"device(s) has {share} of the {tasks_per_step} tasks of a meta-step; "
            f"it must be a divisor of {share} (0: all at once)"
        )
    return share // tasks_at_once if tasks_at_once else 1


def chunked_meta_grad(
    meta_grad: Callable[..., MetaGradient],
    tasks_per_step: int,
    num_devices: int,
    tasks_at_once: int,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[..., MetaGradient]:
    """`meta_grad` run over each device's tasks in chunks of `tasks_at_once`,
    one chunk after another (`lax.scan`), its results averaged over chunks (equal
    sizes: the mean of the chunks' means is the mean over tasks).

    With several devices the task batch `[T, ...]` is viewed as
    `[devices, chunks, tasks_at_once, ...]`, device-major as the mesh splits it,
    and the device axis is vmapped (and sharded), so every device loops over its
    own chunks. `meta_grad` itself when there is one chunk per device.
    """
    chunks = chunks_per_device(tasks_per_step, num_devices, tasks_at_once)
    if chunks == 1:
        return meta_grad

    def device_share(meta_params, model_state, tasks, step) -> MetaGradient:
        """The mean meta-gradient of one device's tasks, leaves `[chunks, c, ...]`."""

        def add_chunk(total, chunk):
            result = meta_grad(meta_params, model_state, chunk, step)
            return jax.tree.map(jnp.add, total, result), None

        first = jax.tree.map(lambda leaf: leaf[0], tasks)
        zeros = jax.tree.map(
            lambda v: jnp.zeros(v.shape, v.dtype),
            jax.eval_shape(meta_grad, meta_params, model_state, first, step),
        )
        total, _ = jax.lax.scan(add_chunk, zeros, tasks)
        return jax.tree.map(lambda leaf: (leaf / chunks).astype(leaf.dtype), total)

    def split(tasks: TaskBatch, *leading: int) -> TaskBatch:
        return jax.tree.map(
            lambda leaf: leaf.reshape(*leading, chunks, tasks_at_once, *leaf.shape[1:]),
            tasks,
        )

    def chunked(meta_params, model_state, tasks, step=0) -> MetaGradient:
        if num_devices == 1:
            return device_share(meta_params, model_state, split(tasks), step)
        per_device = split(tasks, num_devices)
        if mesh is not None:
            sharding = jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec(TASK_AXIS)
            )
            per_device = jax.lax.with_sharding_constraint(per_device, sharding)
        results = jax.vmap(device_share, in_axes=(None, None, 0, None))(
            meta_params, model_state, per_device, step
        )
        # the mean over devices as a product with ones: XLA:CPU runs a sum over
        # a leading axis many times slower (see algorithms.base.tile)
        weights = jnp.full((num_devices,), 1.0 / num_devices)
        return jax.tree.map(
            lambda leaf: jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1),
            results,
        )

    return chunked


class TrainWindow(Protocol):
    """The jitted `(state, data, num_steps) -> (state, metrics)` of a window."""

    def __call__(
        self, state: TrainState, data: Data, num_steps: jax.Array
    ) -> tuple[TrainState, Metrics]: ...

    def lower(self, state: TrainState, data: Data, num_steps: jax.Array) -> Any: ...


def make_train_window(train_step: TrainStep, sample_ahead: int = 100) -> TrainWindow:
    """Jitted `(state, data, num_steps) -> (state, metrics)` running `num_steps`
    meta-steps on the task family's `data`.

    Tasks are sampled `sample_ahead` meta-steps at a time, in one vectorised call,
    then the steps run over them: the PRNG's fixed cost (on CPU, a loop per call)
    is paid once per `sample_ahead` steps, not every step. The numbers do not
    depend on it: each step's tasks still come from `fold_in(key, step)`.

    `metrics` hold the window means of `train/meta_loss` and of the algorithm's
    query metrics (`train/<name>`), and `finite`: whether the meta-loss and every
    meta-parameter are finite (one reduction per window: the NaN guard costs
    nothing per step).
    """

    def window(state: TrainState, data: Data, num_steps: jax.Array):
        def run_block(block, carry):
            state, totals = carry
            steps = state.step + jnp.arange(sample_ahead)
            tasks = train_step.sample_steps(state.key, data, steps)

            def run_step(i, carry):
                state, totals = carry
                state, values = train_step.update(
                    state, jax.tree.map(lambda batch: batch[i], tasks)
                )
                return state, jax.tree.map(jnp.add, totals, values)

            steps_in_block = jnp.minimum(sample_ahead, num_steps - block * sample_ahead)
            return jax.lax.fori_loop(0, steps_in_block, run_step, (state, totals))

        zeros = jax.tree.map(
            lambda v: jnp.zeros(v.shape, jnp.float32),
            jax.eval_shape(lambda: _step_values(train_step, state, data)),
        )
        num_blocks = (num_steps + sample_ahead - 1) // sample_ahead
        state, (total, metric_totals) = jax.lax.fori_loop(
            0, num_blocks, run_block, (state, zeros)
        )
        finite = jnp.isfinite(total) & jnp.all(
            jnp.array(
                [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(state.meta_params)]
            )
        )
        count = jnp.maximum(num_steps, 1)
        metrics = {f"train/{k}": v / count for k, v in metric_totals.items()}
        return state, {"train/meta_loss": total / count, **metrics, "finite": finite}

    return jax.jit(window, donate_argnums=0)


def _step_values(train_step: TrainStep, state: TrainState, data: Data):
    """The (meta-loss, metrics) one step returns (for their shapes)."""
    return train_step(state, data)[1]


class Schedule(NamedTuple):
    num_steps: int  # total meta-steps of the run
    log_every: int  # metrics window length
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 0  # 0: checkpoint only at the end

    def due(self, step: int, every: int) -> bool:
        return step == self.num_steps or bool(every and step % every == 0)

    def next_end(self, step: int) -> int:
        """The first step after `step` where the host takes over: a log, eval or
        checkpoint boundary, or the end."""
        ends = [self.num_steps]
        for every in (self.log_every, self.eval_every, self.checkpoint_every):
            if every:
                ends.append((step // every + 1) * every)
        return min(ends)


class NonFiniteError(RuntimeError):
    """The meta-loss or a meta-parameter became NaN or infinite."""


class Preempted(RuntimeError):
    """Training stopped on request (a signal) after saving a checkpoint."""


class FitResult(NamedTuple):
    state: TrainState
    summary: dict[str, Any]  # last window's metrics, last evaluation, perf/*
    train_seconds: float  # training wall time, compilation and evaluation excluded


def fit(
    state: TrainState,
    train_window: TrainWindow,
    data: Data,
    schedule: Schedule,
    evaluate: Callable[[TrainState], Mapping[str, float]],
    on_metrics: Callable[[int, dict[str, Any]], None],
    checkpoint: Callable[[TrainState, float], None] = lambda state, seconds: None,
    should_stop: Callable[[], bool] = lambda: False,
    time_limit: float | None = None,
    check: Callable[[Any], None] = lambda compiled: None,
) -> FitResult:
    """Runs training from `state.step` to `schedule.num_steps`.

    Reports each window's metrics to `on_metrics`, checkpoints every
    `schedule.checkpoint_every` steps and evaluates every `schedule.eval_every`
    steps, both also at the end, the checkpoint first (an evaluation that fails
    loses no training). With a `time_limit` (seconds of training, not counting
    compilation and evaluation), training ends early once it is spent, then
    checkpoints and evaluates as at a normal end: the first window is one
    meta-step, which measures the speed, and each window after it is cut short
    where the last window's speed says the budget runs out (`budget_window_end`),
    so a run overshoots its budget by about a meta-step, not by a whole window.

    Raises `NonFiniteError` on a non-finite meta-loss or meta-parameter (nothing
    non-finite is checkpointed), and `Preempted` after checkpointing when
    `should_stop()` turns true or `evaluate` raises `EvaluationStopped`.
    `checkpoint(state, train_seconds)` gets the training time so far, so a resumed
    run can honour what is left of its time limit. `check(compiled window)` runs
    before any training (e.g. to refuse a program that cannot fit in memory).
    """
    start = int(state.step)
    if start >= schedule.num_steps or (time_limit is not None and time_limit <= 0):
        # e.g. a finished run requeued: score it again
        return FitResult(state, dict(evaluate(state)), 0.0)
    compile_start = time.perf_counter()
    compiled = train_window.lower(state, data, jnp.int32(1)).compile()
    summary: dict[str, Any] = {"perf/compile_s": time.perf_counter() - compile_start}
    check(compiled)
    done, train_seconds, saved = start, 0.0, start if start else None
    rate: float | None = None  # the last window's meta-steps per second
    while done < schedule.num_steps:
        end = schedule.next_end(done)
        if time_limit is not None:
            end = budget_window_end(done, end, time_limit - train_seconds, rate)
        window_start = time.perf_counter()
        state, metrics = compiled(state, data, jnp.int32(end - done))
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        seconds = time.perf_counter() - window_start
        if not metrics.pop("finite"):
            raise NonFiniteError(_non_finite_message(done, end, metrics, saved))
        rate = (end - done) / max(seconds, 1e-9)  # a coarse clock may read 0
        metrics["perf/steps_per_s"] = rate
        train_seconds, done = train_seconds + seconds, end
        out_of_time = time_limit is not None and train_seconds >= time_limit
        last, stop = out_of_time or done == schedule.num_steps, should_stop()
        if last or stop or schedule.due(end, schedule.checkpoint_every):
            checkpoint(state, train_seconds)
            saved = end
        if stop and not last:
            on_metrics(end, metrics)
            raise Preempted(f"stopped at meta-step {end}; a checkpoint was saved")
        if last or schedule.due(end, schedule.eval_every):
            try:
                metrics.update(evaluate(state))
            except EvaluationStopped as error:
                checkpoint(state, train_seconds)
                on_metrics(end, metrics)  # the window's training metrics, kept
                raise Preempted(
                    f"stopped at meta-step {end} during evaluation ({error}); a "
                    "checkpoint was saved"
                ) from None
        on_metrics(end, metrics)
        summary.update(metrics)
        if out_of_time:
            break
    summary["perf/steps_per_s"] = (done - start) / max(train_seconds, 1e-9)
    return FitResult(state, summary, train_seconds)


def budget_window_end(
    done: int, end: int, seconds_left: float, steps_per_s: float | None
) -> int:
    """Where a window from step `done`, due to end at `end`, ends under a time
    budget: after one step while the speed is unknown (`steps_per_s` None), else
    after the steps that speed fits in `seconds_left` (rounded up, at least 1)."""
    if steps_per_s is None:
        return min(end, done + 1)
    return min(end, done + max(1, math.ceil(seconds_left * steps_per_s)))


def _non_finite_message(
    start: int, end: int, metrics: dict[str, float], saved: int | None
) -> str:
    where = (
        f"the last checkpoint (meta-step {saved}) is the last good state saved"
        if saved is not None
        else "no checkpoint was saved before it"
    )
    return (
        "the meta-loss or a meta-parameter became NaN or infinite between "
        f"meta-steps {start} and {end} (window meta-loss "
        f"{metrics['train/meta_loss']}); {where}. Try a lower outer.lr or "
        "inner.lr, or fewer inner.steps."
    )
