"""Task sharding across devices, checked on 4 forced CPU devices in a fresh
interpreter (the device count is fixed when JAX starts)."""

import subprocess
import sys
import textwrap

import pytest
from helpers import REPO

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np, optax
    from metalearn.algorithms import make_maml
    from metalearn.models import make_mlp
    from metalearn.optimizers import flat_optimizer
    from metalearn.runtime import DeviceError, replicate, task_mesh, use_compile_cache
    from metalearn.tasks.sinusoid import make_sinusoid
    from metalearn.trainer import (
        init_train_state, make_task_mesh, make_train_step, make_train_window)

    assert jax.device_count() == 4
    use_compile_cache(os.environ.get("METALEARN_COMPILE_CACHE"))
    family = make_sinusoid().train
    optimizer = flat_optimizer(optax.adam(1e-3))
    maml = make_maml(make_mlp((1,), 1, hidden_sizes=(16,)), family, 0.01, 2)
    results = []
    mesh = make_task_mesh()
    for mesh, tasks_at_once in [(None, 0), (mesh, 0), (mesh, 1)]:
        step = make_train_step(
            maml, family, optimizer, 8, 10, 10, mesh=mesh, tasks_at_once=tasks_at_once
        )
        window = make_train_window(step, sample_ahead=4)
        data = replicate(family.data, mesh)
        state = init_train_state(maml, optimizer, jax.random.key(0))
        state, _ = window(state, data, jnp.int32(30))
        results.append(state.meta_params)
        if mesh is not None:
            hlo = window.lower(state, data, jnp.int32(1)).compile().as_text()
            assert "all-reduce" in hlo, "tasks were not split across devices"
            block = jax.jit(step.sample_steps)(state.key, data, jnp.arange(3))
            split = jax.sharding.PartitionSpec(None, "tasks")
            assert block.support_inputs.sharding.spec == split, (
                "a block of sampled tasks is not split across devices")
    for result in results[1:]:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            results[0], result,
        )
    for wanted, batch, message in [
        (4, 6, "outer.batch=6 is not allowed on 4 devices"),
        (8, 8, "train.devices=8 is not allowed: only 4 device(s) are visible"),
    ]:
        try:
            task_mesh(wanted, batch)
            raise SystemExit(f"devices={wanted} batch={batch} was accepted")
        except DeviceError as error:
            assert message in str(error), error
    assert task_mesh(1, 6) is None
    assert task_mesh(2, 6).devices.size == 2 and task_mesh(0, 8).devices.size == 4
    # 0 devices: as many as split the batch evenly
    assert task_mesh(0, 6).devices.size == 3 and task_mesh(0, 1) is None
    assert task_mesh(0, 2).devices.size == 2
    # the count is fixed when JAX starts: asking for another one warns, changes nothing
    import logging
    from metalearn.runtime import use_cpu_devices
    warnings = []
    keep = type("Keep", (logging.Handler,), {"emit": lambda _, r: warnings.append(r)})
    logging.getLogger("metalearn.runtime").addHandler(keep())
    use_cpu_devices(4)
    assert not warnings and jax.device_count() == 4
    use_cpu_devices(2)
    assert jax.device_count() == 4
    assert "JAX already runs the CPU as 4" in warnings[0].getMessage(), warnings
    print("OK")
    """
)


@pytest.mark.slow
def test_sharded_training_in_chunks_matches_one_device_and_bad_batches_are_refused():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")
