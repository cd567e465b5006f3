"""The outer optimisers: chosen by name, their options checked, one flat update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalearn.optimizers import OPTIMIZERS, flat_optimizer, make_adam
from metalearn.registry import OptionError


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("option", ["b1", "b2"])
@pytest.mark.parametrize("value", [1.0, 1.5, -0.1])
def test_adam_decays_must_lie_in_zero_to_one(name, option, value):
    with pytest.raises(OptionError) as error:
        OPTIMIZERS.create(name, 1e-3, 100, **{option: value})
    assert str(error.value) == f"{option}={value} is not allowed: it must be in [0, 1)"


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("adam", {"eps": 0.0}, "eps=0.0 is not allowed: it must be > 0"),
        ("rmsprop", {"decay": 1.0}, "decay=1.0 is not allowed: it must be in [0, 1)"),
        ("sgd", {"momentum": 1.0}, "momentum=1.0 is not allowed"),
        ("adamw", {"weight_decay": -1.0}, "weight_decay=-1.0 is not allowed"),
        ("adam", {"min_lr": -1.0}, "min_lr=-1.0 is not allowed: it must be >= 0"),
        (
            "adam",
            {"schedule": "cosine", "min_lr": 0.1},
            "min_lr=0.1 is not allowed: it must be <= outer.lr",
        ),
        ("sgd", {"schedule": "linear"}, "schedule=linear is not allowed: choose one"),
    ],
)
def test_other_options_out_of_range_are_refused(name, options, message):
    with pytest.raises(OptionError) as error:
        OPTIMIZERS.create(name, 1e-3, 100, **options)
    assert message in str(error.value)


@pytest.mark.parametrize("value", [0.0, 0.5, 0.999])
def test_decays_inside_the_range_are_accepted(value):
    make_adam(1e-3, 100, b1=value, b2=value)


def test_cosine_schedule_anneals_from_the_learning_rate_to_min_lr():
    optimizer = make_adam(1.0, 10, schedule="cosine", min_lr=0.1)
    params = {"w": jnp.zeros(())}
    state = optimizer.init(params)
    sizes = []
    for _ in range(11):  # adam's first update has size lr: |g / sqrt(g^2)| = 1
        updates, state = optimizer.update({"w": jnp.ones(())}, state, params)
        sizes.append(-float(updates["w"]))
    assert sizes[0] == pytest.approx(1.0, rel=1e-4)
    assert sizes[-1] == pytest.approx(0.1, rel=1e-3)
    assert all(a >= b for a, b in zip(sizes, sizes[1:], strict=False))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_flat_optimizer_updates_exactly_as_per_array(name):
    params = {"a": jnp.arange(3.0), "b": {"c": jnp.ones((2, 2))}}
    grads = jax.tree.map(lambda p: jnp.sin(p + 1.0), params)
    results = []
    per_array = OPTIMIZERS[name](1e-2, 10)
    for optimizer in (per_array, flat_optimizer(per_array)):
        state = optimizer.init(params)
        updates, _ = optimizer.update(grads, state, params)
        results.append(optax.apply_updates(params, updates))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), *results)


def test_outer_clip_value_clips_each_meta_gradient_element_before_the_optimiser():
    from helpers import compose_config

    from metalearn.build import build
    from metalearn.config import typed

    overrides = ["optimizer=sgd", "outer.lr=1", "outer.clip_value=0.5"]
    optimizer = build(typed(compose_config(overrides))).optimizer
    params = {"a": jnp.zeros(3), "b": jnp.zeros(())}
    grads = {"a": jnp.array([100.0, -0.25, -3.0]), "b": jnp.array(0.5)}
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_array_equal(updates["a"], [-0.5, 0.25, 0.5])  # -lr * clip(g)
    assert float(updates["b"]) == -0.5
    preset = typed(compose_config(["experiment=maml_paper_mini_imagenet_5w1s"]))
    assert preset.outer.clip_value == 10  # the MAML reference code's miniImageNet
