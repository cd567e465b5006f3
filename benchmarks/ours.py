"""metalearn's trainer on one workload, timed: the 'ours' rows of the benchmarks.

    python benchmarks/ours.py --steps 20000 task=sinusoid_tutorial outer.batch=4
    python benchmarks/ours.py --steps 200 experiment=maml_paper_omniglot_5w1s

The arguments after the options are `train.py` overrides: the config is composed
and the training window built exactly as `train.py` builds them
(`metalearn.build.make_training_window`). Prints one JSON line: meta-steps/s (over
`--steps`, compilation excluded), compile time, whole-process wall time, and the
compiled program's memory (MB).
"""

import argparse
import json
import time
from typing import Any, NamedTuple

start = time.perf_counter()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import HydraException  # noqa: E402

from metalearn.build import build, make_training_window  # noqa: E402
from metalearn.config import ConfigError, register_configs, typed  # noqa: E402
from metalearn.data import DataError  # noqa: E402
from metalearn.runtime import (  # noqa: E402
    DeviceError,
    program_bytes,
    replicate,
    task_mesh,
    use_cpu_devices,
)
from metalearn.trainer import init_train_state  # noqa: E402

CONF = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "conf")


def peak_device_mb() -> float | None:
    """The largest peak memory of JAX's devices (GPU: what XLA's allocator held);
    None where the devices do not report it (CPU)."""
    stats = [device.memory_stats() for device in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
    return max(peaks) / 2**20 if peaks else None


class Training(NamedTuple):
    """A compiled training window as `train.py` builds it, and what it runs on."""

    config: Any
    mesh: Any
    compiled: Any  # (state, data, num_steps) -> (state, metrics)
    state: Any
    data: Any
    compile_s: float


def config_and_parts(overrides: list[str], set_devices: bool = True):
    """`train.py`'s typed config from `overrides` (logger off) and what it builds;
    with `set_devices`, JAX's CPU devices set first as the config asks. Bad input
    exits with its one-line message."""
    register_configs()
    try:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            config = typed(compose("config", overrides=[*overrides, "logger=none"]))
        if set_devices:
            use_cpu_devices(config.train.cpu_devices)
        return config, build(config)
    except (ConfigError, DataError, DeviceError, HydraException) as error:
        raise SystemExit(str(error)) from None


def compiled_training(overrides: list[str]) -> Training:
    """`train.py`'s config from `overrides` (logger off), its devices, and its
    training window compiled (timed) for the initial state."""
    config, parts = config_and_parts(overrides)
    mesh = task_mesh(config.train.devices, config.outer.batch)
    window = make_training_window(config, parts, mesh)
    data = replicate(parts.tasks.train.data, mesh)
    state = init_train_state(parts.algorithm, parts.optimizer, jax.random.key(0))
    state = replicate(state, mesh)
    compile_start = time.perf_counter()
    compiled = window.lower(state, data, jnp.int32(1)).compile()
    compile_s = time.perf_counter() - compile_start
    return Training(config, mesh, compiled, state, data, compile_s)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000, help="meta-steps timed")
    parser.add_argument("overrides", nargs="*", help="train.py overrides")
    args = parser.parse_args()
    config, mesh, compiled, state, data, compile_s = compiled_training(args.overrides)
    memory = compiled.memory_analysis()
    state, metrics = compiled(state, data, jnp.int32(1))  # warm-up: first call
    jax.device_get(metrics)
    loop_start = time.perf_counter()
    done, every = 0, config.train.log_every
    while done < args.steps:
        n = min(every, args.steps - done)
        state, metrics = compiled(state, data, jnp.int32(n))
        jax.device_get(metrics)  # the once-per-window host read the trainer does
        done += n
    loop_s = time.perf_counter() - loop_start
    print(
        json.dumps(
            {
                "steps_per_s": args.steps / loop_s,
                "compile_s": compile_s,
                "wall_s": time.perf_counter() - start,
                "program_temp_mb": memory.temp_size_in_bytes / 2**20,
                "program_mb": program_bytes(compiled) / 2**20,
                "final_meta_loss": float(metrics["train/meta_loss"]),
                "devices": 1 if mesh is None else int(mesh.devices.size),
                "peak_device_mb": peak_device_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
