"""Task sharding across devices, checked on 4 forced CPU devices in a subprocess
(the device count is fixed when JAX starts)."""

import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np, optax
    from metalearn.algorithms import make_maml
    from metalearn.config import ConfigError
    from metalearn.experiment import task_mesh
    from metalearn.models import make_mlp
    from metalearn.tasks.sinusoid import make_sinusoid
    from metalearn.trainer import (
        init_train_state, make_task_mesh, make_train_step, make_train_window)

    assert jax.device_count() == 4
    task, optimizer = make_sinusoid(), optax.adam(1e-3)
    maml = make_maml(make_mlp([32, 32], 1), task, 0.01, 2)
    results = []
    for mesh in (None, make_task_mesh()):
        step = make_train_step(maml, task, optimizer, 8, 10, 10, mesh=mesh)
        window = make_train_window(step)
        state = init_train_state(maml, optimizer, jax.random.key(0))
        state, _ = window(state, jnp.int32(30))
        results.append(state.meta_params)
        if mesh is not None:
            hlo = window.lower(state, jnp.int32(1)).compile().as_text()
            assert "all-reduce" in hlo, "tasks were not split across devices"
            block = jax.jit(step.sample_steps)(state.key, jnp.arange(3))
            split = jax.sharding.PartitionSpec(None, "tasks")
            assert block.support_inputs.sharding.spec == split, (
                "a block of sampled tasks is not split across devices")
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), *results
    )
    config = {"train": {"devices": 0}, "outer": {"batch": 6}}
    try:
        task_mesh(config)
        raise SystemExit("batch 6 on 4 devices was accepted")
    except ConfigError as error:
        assert "outer.batch=6 is not allowed on 4 devices" in str(error)
    assert task_mesh({"train": {"devices": 1}, "outer": {"batch": 6}}) is None
    print("OK")
    """
)


def test_sharded_training_matches_one_device_and_bad_batches_are_refused():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")
