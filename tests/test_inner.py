"""The inner loop and second-order meta-gradients against hand-derived values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metalearn.algorithms import make_anil, make_maml, make_metasgd
from metalearn.inner import make_adapt, make_model_loss, make_sgd_step
from metalearn.metrics import mean_squared_error
from metalearn.models import make_mlp
from metalearn.tasks.sinusoid import make_sinusoid

FAMILY = make_sinusoid().train


def sample_tasks(num_tasks, k, q, seed=0):
    keys = jax.random.split(jax.random.key(seed), num_tasks)
    return jax.vmap(lambda key: FAMILY.sample(key, FAMILY.data, k, q))(keys)


def test_tutorial_maml_objective_and_its_gradient():
    """maml-jax tutorial: g(x, y) = x^2 + y at (2, 1) with one unit step on x."""

    def g(x, state, inputs, y):
        return x**2 + y, (state, None)

    adapt = make_adapt(g, num_steps=1)

    def maml_objective(x, y):
        adapted, _ = adapt(x, 1.0, {}, None, y)
        return g(adapted, {}, None, y)[0]

    assert maml_objective(2.0, 1.0) == pytest.approx(5.0)
    assert 2.0 - jax.grad(maml_objective)(2.0, 1.0) == pytest.approx(-2.0)


def test_a_model_loss_returns_the_loss_the_new_state_and_the_predictions():
    model = make_mlp(FAMILY.input_shape, 1, hidden_sizes=(4,))
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 1)))
    task = FAMILY.sample(jax.random.key(1), FAMILY.data, 5, 5)
    loss, (new_state, predictions) = make_model_loss(model, mean_squared_error)(
        params, state, task.support_inputs, task.support_targets
    )
    assert predictions.shape == (5, 1) and new_state == state
    assert float(loss) == pytest.approx(
        float(jnp.mean((predictions - task.support_targets) ** 2))
    )


def test_an_sgd_step_takes_per_parameter_rates_and_reports_the_loss_before_it():
    def loss_fn(params, state, inputs, targets):
        return jnp.sum((params["a"] - 1.0) ** 2 + params["b"] ** 2), (state, None)

    step = make_sgd_step(loss_fn)
    params = {"a": jnp.array(3.0), "b": jnp.array(2.0)}
    new, _, loss = step(params, {"a": 0.25, "b": 0.5}, {}, None, None)
    assert float(loss) == 8.0  # (3 - 1)^2 + 2^2
    assert (
        float(new["a"]) == 2.0 and float(new["b"]) == 0.0
    )  # a - 0.25 * 4, b - 0.5 * 4


@pytest.mark.parametrize("make_algorithm", [make_maml, make_metasgd, make_anil])
def test_second_order_meta_gradient_of_an_mlp_matches_finite_differences(
    make_algorithm,
):
    with jax.enable_x64(True):
        model = make_mlp(FAMILY.input_shape, 1, hidden_sizes=(8, 8), activation="tanh")
        algorithm = make_algorithm(model, FAMILY, inner_lr=0.05, inner_steps=3)
        params, state = algorithm.init(jax.random.key(0))
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        tasks = jax.tree.map(lambda a: a.astype(jnp.float64), sample_tasks(2, 5, 7, 1))
        grads = jax.jit(algorithm.meta_grad)(params, state, tasks).grads
        assert all(g.dtype == jnp.float64 for g in jax.tree.leaves(grads))

        flat, unravel = ravel_pytree(params)
        flat_grads, _ = ravel_pytree(grads)
        meta_loss = jax.jit(
            lambda f: algorithm.meta_grad(unravel(f), state, tasks).loss
        )
        eps = 1e-6
        rng = np.random.default_rng(0)
        for index in rng.choice(flat.size, size=12, replace=False):
            bump = jnp.zeros_like(flat).at[index].set(eps)
            numeric = (meta_loss(flat + bump) - meta_loss(flat - bump)) / (2 * eps)
            assert float(flat_grads[index]) == pytest.approx(
                float(numeric), rel=1e-5, abs=1e-9
            )


def test_first_order_gradient_differs_from_second_order_on_an_mlp():
    model = make_mlp(FAMILY.input_shape, 1, hidden_sizes=(8,))
    tasks = sample_tasks(2, 5, 5)
    grads = {}
    for first_order in (False, True):
        maml = make_maml(model, FAMILY, 0.1, 2, first_order=first_order)
        params, state = maml.init(jax.random.key(0))
        grads[first_order] = ravel_pytree(
            jax.jit(maml.meta_grad)(params, state, tasks).grads
        )[0]
    assert not np.allclose(grads[False], grads[True], rtol=1e-3)


@pytest.mark.parametrize("make_algorithm", [make_maml, make_metasgd, make_anil])
def test_rematerialised_inner_loop_gives_the_same_meta_gradient(make_algorithm):
    model = make_mlp(FAMILY.input_shape, 1, hidden_sizes=(16, 16))
    tasks = sample_tasks(3, 5, 5)
    results = []
    for remat in (False, True):
        algorithm = make_algorithm(model, FAMILY, 0.01, 4, remat=remat)
        params, state = algorithm.init(jax.random.key(1))
        results.append(jax.jit(algorithm.meta_grad)(params, state, tasks))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *results
    )


@pytest.mark.parametrize("steps", [5, 20])  # an unrolled loop, a rolled one
def test_remat_lowers_the_compiled_meta_gradients_scratch_memory(steps):
    tasks = sample_tasks(25, 10, 10, seed=1)
    model = make_mlp(FAMILY.input_shape, 1, hidden_sizes=(40, 40))
    temp = {}
    for remat in (False, True):
        maml = make_maml(model, FAMILY, 0.01, steps, remat=remat)
        params, state = maml.init(jax.random.key(0))
        compiled = jax.jit(maml.meta_grad).lower(params, state, tasks).compile()
        temp[remat] = compiled.memory_analysis().temp_size_in_bytes
    assert temp[True] < 0.75 * temp[False]
