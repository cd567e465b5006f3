"""Process-level concerns of a run: stop signals, the device mesh, the compile cache."""

import contextlib
import logging
import os
import signal
from typing import Any

import jax

from metalearn.trainer import make_task_mesh

log = logging.getLogger(__name__)


class StopFlag:
    """Turns SIGTERM/SIGINT into a request to stop at the next window boundary.

    A second signal while a stop is pending raises `KeyboardInterrupt` at once
    (the user insists). Outside the main thread signals cannot be caught; then
    nothing changes.
    """

    def __init__(self):
        self.raised: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopFlag":
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.raised is not None:
            raise KeyboardInterrupt(f"signal {signum} again: stopping now")
        self.raised = signum

    def __call__(self) -> bool:
        return self.raised is not None

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class DeviceError(ValueError):
    """A device count that this machine or the task batch cannot use."""


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def use_cpu_devices(wanted: int | None) -> int | None:
    """Asks JAX to run the CPU as `wanted` host devices (0: one per core; None:
    as JAX starts, one device unless `$JAX_NUM_CPU_DEVICES` says otherwise).

    The count is fixed when JAX first computes something in a process. Asked
    later for another count, this leaves the devices as they are (a setting of
    speed, not of results) and logs a warning that says so. Returns the CPU device
    count asked for (None: not asked).
    """
    if wanted is None:
        return None
    count = wanted or cpu_cores()
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX has started; its CPU device count is fixed
        started = len(jax.devices("cpu"))
        if started != count:
            log.warning(
                "train.cpu_devices=%d asks for %d CPU device(s), but JAX already "
                "runs the CPU as %d in this process and cannot change that: this "
                "run uses %d (a fresh process gets %d)",
                wanted, count, started, started, count,
            )  # fmt: skip
    return count


def task_mesh(wanted: int, tasks_per_step: int) -> jax.sharding.Mesh | None:
    """The device mesh the task batch is split over, or None on one device.

    `wanted` devices; 0: as many of the visible devices as split `tasks_per_step`
    evenly (the largest divisor of it that is at most the visible count).
    """
    available = jax.device_count()
    if not wanted:
        wanted = max(d for d in range(1, available + 1) if tasks_per_step % d == 0)
    if wanted > available:
        raise DeviceError(
            f"train.devices={wanted} is not allowed: only {available} device(s) are "
            "visible (0: as many as split outer.batch evenly)"
        )
    if wanted == 1:
        return None
    if tasks_per_step % wanted:
        raise DeviceError(
            f"outer.batch={tasks_per_step} is not allowed on {wanted} devices: it "
            f"must be a multiple of {wanted} (or set train.devices)"
        )
    return make_task_mesh(wanted)


def replicate(data: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """`data` (a task family's arrays) on every device of `mesh`; as is without one."""
    if mesh is None:
        return data
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.device_put(data, replicated)


def on_first_device(tree: Any) -> Any:
    """`tree` on the first device, where evaluation runs and its programs were
    compiled; a copy of what training left replicated over a mesh, as is otherwise."""
    device = jax.devices()[0]
    return jax.device_put(tree, device)


def use_compile_cache(directory: str | None) -> None:
    """Turns JAX's persistent compilation cache on (every program, however quick to
    compile) in `directory`, or off for None."""
    jax.config.update("jax_compilation_cache_dir", directory)
    if directory:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


class MemoryLimitError(ValueError):
    """A compiled program would not fit in the memory that is free."""


def free_memory(device: jax.Device) -> int | None:
    """Bytes free on `device`: its allocator's limit less what is in use (GPU),
    or the host's available memory (CPU); None if it cannot be told."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def program_bytes(compiled: Any) -> int:
    """What a compiled program holds at once: its arguments, outputs and scratch."""
    memory = compiled.memory_analysis()
    if memory is None:
        return 0
    return int(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )


def check_fits(what: str, needed: int, keys: str, free: int | None) -> None:
    """Raises `MemoryLimitError` naming `keys` to lower when `needed` bytes exceed
    90% of `free`."""
    if free is not None and needed > 0.9 * free:
        raise MemoryLimitError(
            f"the {what} needs about {needed / 2**30:.2f} GiB but only "
            f"{free / 2**30:.2f} GiB is free: lower {keys}"
        )
