"""The inner loop and MAML's meta-gradient against hand-derived values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metalearn.algorithms import make_anil, make_maml, make_metasgd
from metalearn.inner import make_adapt
from metalearn.models import make_mlp
from metalearn.tasks.sinusoid import make_sinusoid


def test_tutorial_maml_objective_and_its_gradient():
    """maml-jax tutorial: g(x, y) = x^2 + y at (2, 1) with one unit step on x."""

    def g(x, state, inputs, y):
        return x**2 + y, state

    adapt = make_adapt(g, num_steps=1)

    def maml_objective(x, y):
        adapted, _ = adapt(x, 1.0, {}, None, y)
        return g(adapted, {}, None, y)[0]

    assert maml_objective(2.0, 1.0) == pytest.approx(5.0)
    assert 2.0 - jax.grad(maml_objective)(2.0, 1.0) == pytest.approx(-2.0)


@pytest.mark.parametrize("make_algorithm", [make_maml, make_metasgd, make_anil])
def test_second_order_meta_gradient_of_an_mlp_matches_finite_differences(
    make_algorithm,
):
    with jax.enable_x64(True):
        task = make_sinusoid()
        model = make_mlp([8, 8], 1, "tanh")
        maml = make_algorithm(model, task, inner_lr=0.05, inner_steps=3)
        params, state = maml.init(jax.random.key(0))
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        tasks = jax.vmap(lambda k: task.sample(k, 5, 7))(
            jax.random.split(jax.random.key(1), 2)
        )
        tasks = jax.tree.map(lambda a: a.astype(jnp.float64), tasks)
        _, grads, _ = maml.meta_grad(params, state, tasks)

        flat, unravel = ravel_pytree(params)
        flat_grads, _ = ravel_pytree(grads)
        meta_loss = jax.jit(lambda f: maml.meta_grad(unravel(f), state, tasks)[0])
        eps = 1e-6
        rng = np.random.default_rng(0)
        for index in rng.choice(flat.size, size=12, replace=False):
            bump = jnp.zeros_like(flat).at[index].set(eps)
            numeric = (meta_loss(flat + bump) - meta_loss(flat - bump)) / (2 * eps)
            assert float(flat_grads[index]) == pytest.approx(
                float(numeric), rel=1e-5, abs=1e-9
            )


def test_first_order_gradient_differs_from_second_order_on_an_mlp():
    task = make_sinusoid()
    model = make_mlp([8], 1)
    tasks = jax.vmap(lambda k: task.sample(k, 5, 5))(
        jax.random.split(jax.random.key(0), 2)
    )
    grads = {}
    for first_order in (False, True):
        maml = make_maml(model, task, 0.1, 2, first_order)
        params, state = maml.init(jax.random.key(0))
        grads[first_order] = ravel_pytree(maml.meta_grad(params, state, tasks)[1])[0]
    assert not np.allclose(grads[False], grads[True], rtol=1e-3)


@pytest.mark.parametrize("make_algorithm", [make_maml, make_metasgd, make_anil])
def test_rematerialised_inner_loop_gives_the_same_meta_gradient(make_algorithm):
    task = make_sinusoid()
    model = make_mlp([16, 16], 1)
    tasks = jax.vmap(lambda k: task.sample(k, 5, 5))(
        jax.random.split(jax.random.key(0), 3)
    )
    results = []
    for remat in (False, True):
        algorithm = make_algorithm(model, task, 0.01, 4, remat=remat)
        params, state = algorithm.init(jax.random.key(1))
        results.append(jax.jit(algorithm.meta_grad)(params, state, tasks))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *results
    )


def test_remat_lowers_the_compiled_meta_gradients_scratch_memory():
    task = make_sinusoid()
    tasks = jax.vmap(lambda k: task.sample(k, 10, 10))(
        jax.random.split(jax.random.key(1), 25)
    )
    temp = {}
    for remat in (False, True):
        maml = make_maml(make_mlp([40, 40], 1), task, 0.01, 20, remat=remat)
        params, state = maml.init(jax.random.key(0))
        compiled = jax.jit(maml.meta_grad).lower(params, state, tasks).compile()
        temp[remat] = compiled.memory_analysis().temp_size_in_bytes
    assert temp[True] < 0.75 * temp[False]
