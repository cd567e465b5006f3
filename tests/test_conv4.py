"""The MAML paper's conv net: its convolutions, BatchNorm, head and shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalearn.models import conv3x3, make_conv4, normalise_batch


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize(
    "channels, filters",
    [(3, 4), (1, 16)],  # wide patches (autodiff's gradient), narrow (our own)
)
def test_im2col_convolution_equals_xlas_with_its_gradients(
    stride, size, channels, filters
):
    """Outputs, gradients and second derivatives (a Hessian-vector product, as
    second-order MAML takes), in float64."""
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(0), 3)
        inputs = jax.random.normal(keys[0], (2, size, size, channels), jnp.float64)
        weights = jax.random.normal(keys[1], (3, 3, channels, filters), jnp.float64)
        direction = jax.random.normal(keys[2], weights.shape, jnp.float64)

        @jax.jit
        def outputs_and_derivatives(x, w):
            results = []
            for impl in ("im2col", "lax"):

                def loss(x, w, impl=impl):
                    return jnp.sum(jnp.sin(conv3x3(x, w, stride, impl)))

                def weight_grad_along(w, impl=impl):
                    return jnp.vdot(jax.grad(loss, 1)(x, w, impl), direction)

                results.append(
                    (
                        conv3x3(x, w, stride, impl),
                        jax.grad(loss, (0, 1))(x, w),
                        jax.grad(weight_grad_along)(w),
                    )
                )
            return results

        got, want = outputs_and_derivatives(inputs, weights)
    for got_leaf, want_leaf in zip(
        jax.tree.leaves(got), jax.tree.leaves(want), strict=True
    ):
        np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-10, atol=1e-10)


def test_per_task_weights_under_vmap_give_each_tasks_own_convolution():
    inputs = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 1))
    weights = jax.random.normal(jax.random.key(1), (3, 3, 3, 1, 16))  # narrow
    batched = jax.jit(jax.vmap(lambda x, w: conv3x3(x, w, 2, "im2col")))
    looped = jax.jit(lambda x, w: conv3x3(x, w, 2, "lax"))
    for task in range(3):
        np.testing.assert_allclose(
            batched(inputs, weights)[task],
            looped(inputs[task], weights[task]),
            rtol=1e-5,
            atol=1e-5,
        )


def test_transductive_batch_norm_uses_this_batchs_statistics_per_channel():
    inputs = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 5, 5, 2))
    normalise = jax.jit(normalise_batch, static_argnums=1)
    out = np.asarray(normalise(inputs, 1e-3, None, jnp.array([0.5, -1.0])))
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), [0.5, -1.0], atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), [1.0, 1.0], atol=1e-3)
    scaled = np.asarray(normalise(inputs, 1e-3, jnp.array([2.0, 3.0]), jnp.zeros(2)))
    np.testing.assert_allclose(scaled.std(axis=(0, 1, 2)), [2.0, 3.0], atol=1e-3)


@pytest.mark.parametrize(
    "shape, options, features",
    [
        ((28, 28, 1), {}, 64),  # Omniglot: stride 2, 28 -> 14 -> 7 -> 4 -> 2, mean
        (
            (84, 84, 3),
            {"filters": 32, "downsample": "pool", "features": "flatten"},
            800,
        ),
    ],
)
def test_shapes_head_and_features_of_the_papers_two_nets(shape, options, features):
    model = make_conv4(shape, 5, **options)
    images = jnp.ones((6, *shape))
    params, state = jax.jit(model.init)(jax.random.key(0), images)
    logits = jax.eval_shape(lambda: model.apply(params, state, images, True)[0])
    assert logits.shape == (6, 5)
    embedded = jax.eval_shape(lambda: model.embed(params, state, images))
    assert embedded.shape == (6, features)
    head = model.head(params)
    assert head["head"] == {"w": True, "b": True}
    assert not any(jax.tree.leaves(head["conv_0"]))
    # the reference code's BatchNorm: an offset, no scale, no conv bias
    assert set(params["conv_0"]) == {"w", "offset"}


def test_without_batch_norm_convolutions_get_biases():
    model = make_conv4((12, 12, 1), 3, batch_norm="none", filters=4)
    params, _ = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((2, 12, 12, 1)))
    assert set(params["conv_3"]) == {"w", "b"}
