"""Networks as pure functions. The only module that imports haiku.

Every model carries a `state` beside its `params` (haiku's `transform_with_state`),
so layers with running statistics fit the same interface as a plain MLP, whose
state is an empty dict. Each factory registers in `MODELS`; it takes the task's
input shape and output size, then its options.
"""

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from metalearn.registry import Registry, check_option

Params = Any  # a pytree of arrays
ModelState = Any  # a pytree of arrays (empty for stateless models)

MODELS = Registry("model")
HEAD_MODULE = "head"  # name of every model's final layer

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jax.nn.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
}
Activation = Literal["relu", "tanh", "gelu", "silu", "elu", "sigmoid", "softplus"]

# name -> haiku initialiser of weight matrices (biases start at 0)
WEIGHT_INITS: dict[str, Callable[[], hk.initializers.Initializer]] = {
    # stax's Dense default, as in the maml-jax tutorial
    "glorot": lambda: hk.initializers.VarianceScaling(
        1.0, "fan_avg", "truncated_normal"
    ),
    "lecun": lambda: hk.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"),
    "he": lambda: hk.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal"),
    # the MAML reference code (cbfinn/maml): truncated normal, std 0.01
    "maml": lambda: hk.initializers.TruncatedNormal(0.01),
}
WeightInit = Literal["glorot", "lecun", "he", "maml"]


class Model(NamedTuple):
    """A network as pure functions.

    Attributes:
        init: `(key, inputs) -> (params, state)`; `inputs` is an example batch
            `[N, *input_shape]` that fixes the parameter shapes.
        apply: `(params, state, inputs, is_training) -> (predictions, state)` with
            `inputs [N, *input_shape]` and `predictions [N, output_size]`.
        embed: `(params, state, inputs) -> features [N, D]`, what the final layer
            (the head) sees.
        head: `params -> bool pytree` marking the parameters of the final layer (the
            part ANIL adapts).
        body: `params -> params` without the final layer's: all that `embed` reads
            (the network an embedding method such as ProtoNets meta-learns).
        batch_norm: the BatchNorm mode (`BATCH_NORM_MODES`): `none` for a model
            without BatchNorm; `support` means `apply(..., is_training=False)`
            normalises with the statistics the last `is_training=True` call stored
            in the state (see `make_conv4`).
        is_batch_norm: `params -> bool pytree` marking BatchNorm's scale and
            offset (the parameters `per_step` keeps once per inner step).
    """

    init: Callable[[jax.Array, jax.Array], tuple[Params, ModelState]]
    apply: Callable[[Params, ModelState, jax.Array, bool], tuple[jax.Array, ModelState]]
    embed: Callable[[Params, ModelState, jax.Array], jax.Array]
    head: Callable[[Params], Any]
    body: Callable[[Params], Params]
    batch_norm: str = "none"
    is_batch_norm: Callable[[Params], Any] = lambda params: jax.tree.map(
        lambda _: False, params
    )


# What a model's BatchNorm normalises with (see `make_conv4`).
BatchNormMode = Literal["transductive", "per_step", "support", "none"]
BATCH_NORM_PARAMS = ("scale", "offset")  # names of BatchNorm's parameters


Forward = Callable[[jax.Array, bool, bool], jax.Array]


def _from_haiku(forward: Forward, batch_norm: str = "none") -> Model:
    """`forward(inputs, is_training, features_only)` as a `Model`."""
    transformed: Any = hk.without_apply_rng(hk.transform_with_state(forward))

    def init(key: jax.Array, inputs: jax.Array) -> tuple[Params, ModelState]:
        return transformed.init(key, inputs, True, False)

    def apply(params, state, inputs, is_training):
        return transformed.apply(params, state, inputs, is_training, False)

    def embed(params, state, inputs):
        return transformed.apply(params, state, inputs, True, True)[0]

    def head(params: Params) -> Any:
        return {
            module: jax.tree.map(lambda _, m=module: m == HEAD_MODULE, leaves)
            for module, leaves in params.items()
        }

    def body(params: Params) -> Params:
        return {module: p for module, p in params.items() if module != HEAD_MODULE}

    def is_batch_norm(params: Params) -> Any:
        return {
            module: {name: name in BATCH_NORM_PARAMS for name in leaves}
            for module, leaves in params.items()
        }

    return Model(init, apply, embed, head, body, batch_norm, is_batch_norm)


@MODELS.register("mlp")
def make_mlp(
    input_shape: tuple[int, ...],
    output_size: int,
    *,
    hidden_sizes: tuple[int, ...] = (40, 40),
    activation: Activation = "relu",
    weight_init: WeightInit = "glorot",
) -> Model:
    """A fully connected network `in -> hidden_sizes... -> output_size`.

    The MAML paper's sinusoid network is `make_mlp((1,), 1)`. Biases start at zero.

    Args:
        input_shape: shape of one input (flattened by the network).
        output_size: outputs per input.
        hidden_sizes: hidden layer widths.
        activation: `relu`, `tanh`, `gelu`, `silu`, `elu`, `sigmoid` or `softplus`.
        weight_init: weight matrices' initialiser (biases start at 0): `glorot`
            (the tutorial's stax default), `lecun` (haiku's default), `he`, `maml`
            (the MAML reference code: truncated normal, std 0.01).
    """
    del input_shape  # the first layer's width follows the example batch
    for size in hidden_sizes:
        check_option(size >= 1, "hidden_sizes", list(hidden_sizes), "sizes >= 1")
    act = ACTIVATIONS[activation]
    make_w_init = WEIGHT_INITS[weight_init]

    def forward(inputs: jax.Array, is_training: bool, features_only: bool):
        w_init = make_w_init()
        del is_training  # no layer of an MLP behaves differently in training
        hidden = inputs.reshape(inputs.shape[0], -1)
        for i, size in enumerate(hidden_sizes):
            layer = hk.Linear(size, w_init=w_init, name=f"hidden_{i}")
            hidden = act(layer(hidden))
        if features_only:
            return hidden
        return hk.Linear(output_size, w_init=w_init, name=HEAD_MODULE)(hidden)

    return _from_haiku(forward)


ConvImpl = Literal["auto", "lax", "im2col"]


def conv_impl_for(backend: str) -> Literal["lax", "im2col"]:
    """The faster convolution for per-task weights under `vmap` on `backend`.

    On CPU, `lax.conv` with a batch of weights becomes a grouped convolution that
    XLA:CPU runs many times slower than patches plus one batched matrix product;
    even one task at a time (`train.tasks_at_once=1`, weights not batched) its
    second-order gradients are: Omniglot 20-way 1-shot second-order MAML ran at
    0.11 meta-steps/s with `lax` against 2.0 with `im2col` on a 2-core CPU
    (`benchmarks/ours.py`, 2026-12-02). Elsewhere `lax.conv`.
    """
    return "im2col" if backend == "cpu" else "lax"


def conv3x3(inputs: jax.Array, weights: jax.Array, stride: int, impl: str):
    """3x3 convolution, padding 1 on every side, of `inputs [N, H, W, C]` with
    `weights [3, 3, C, F]` -> `[N, H', W', F]`, H' = (H - 1) // stride + 1.

    `im2col` gathers the nine shifted views into patches `[N, H', W', 9C]` and
    multiplies them by the weights as one `[9C, F]` matrix: under `vmap` with
    per-task weights that is one batched matrix product.
    """
    if impl == "lax":
        return jax.lax.conv_general_dilated(
            inputs,
            weights,
            window_strides=(stride, stride),
            padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    batch, height, width, channels = inputs.shape
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    padded = jnp.pad(inputs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows, cols = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    views = [
        padded[:, i : i + rows : stride, j : j + cols : stride, :]
        for i in range(3)
        for j in range(3)
    ]
    patches = jnp.concatenate(views, axis=-1)  # [N, H', W', 9C], order (i, j, c)
    matrix = weights.reshape(9 * channels, -1)
    if 9 * channels >= matrix.shape[1]:
        return patches @ matrix
    # few input channels (a first layer): see `narrow_patch_product`
    flat = narrow_patch_product(patches.reshape(-1, 9 * channels), matrix)
    return flat.reshape(*patches.shape[:-1], -1)


@jax.custom_vjp
def narrow_patch_product(patches: jax.Array, weights: jax.Array) -> jax.Array:
    """`patches [P, K] @ weights [K, F]` for narrow patches (K < F), with the
    weight gradient computed as `patches^T @ g`.

    Left to autodiff, XLA:CPU computes it as `(g^T @ patches)^T` and first copies
    `g [P, F]` into its transpose, which dominated the first conv layer's backward
    pass (K = 9): 20-way 1-shot first-order MAML ran about 20% faster this way
    (`benchmarks/ours.py`). Wider patches keep autodiff's form, which was faster for
    them.
    """
    return patches @ weights


def _narrow_patch_product_forward(patches, weights):
    return patches @ weights, (patches, weights)


def _narrow_patch_product_backward(residuals, grads):
    patches, weights = residuals
    return grads @ weights.T, patches.T @ grads


narrow_patch_product.defvjp(
    _narrow_patch_product_forward, _narrow_patch_product_backward
)


def batch_statistics(inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and variance `[C]` of `inputs [N, H, W, C]`.

    Products with a vector of ones rather than reductions: XLA:CPU runs a
    reduction over all but the last axis many times slower.
    """
    channels = inputs.shape[-1]
    flat = inputs.reshape(-1, channels)  # [N*H*W, C]
    weights = jnp.full((flat.shape[0],), 1.0 / flat.shape[0], inputs.dtype)
    mean = weights @ flat
    return mean, weights @ jnp.square(flat - mean)


def normalise(
    inputs: jax.Array,
    statistics: tuple[jax.Array, jax.Array],
    eps: float,
    scale: jax.Array | None,
    offset: jax.Array,
) -> jax.Array:
    """Normalises each channel of `inputs [N, H, W, C]` with `statistics` (mean and
    variance `[C]`), then scales and offsets."""
    mean, variance = statistics
    normalised = (inputs - mean) * jax.lax.rsqrt(variance + eps)
    return (normalised if scale is None else normalised * scale) + offset


def normalise_batch(
    inputs: jax.Array, eps: float, scale: jax.Array | None, offset: jax.Array
) -> jax.Array:
    """Normalises each channel of `inputs [N, H, W, C]` with the statistics of this
    batch (transductive: at training and at test alike), then scales and offsets."""
    return normalise(inputs, batch_statistics(inputs), eps, scale, offset)


@MODELS.register("conv4")
def make_conv4(
    input_shape: tuple[int, ...],
    output_size: int,
    *,
    filters: int = 64,
    downsample: Literal["stride", "pool"] = "stride",
    batch_norm: BatchNormMode = "transductive",
    batch_norm_scale: bool = False,
    batch_norm_eps: float = 1e-3,
    features: Literal["mean", "flatten"] = "mean",
    conv_impl: ConvImpl = "auto",
) -> Model:
    """The MAML paper's conv net: 4 x [3x3 conv, BatchNorm, ReLU], then a linear head.

    As the MAML reference code (cbfinn/maml) builds it: convolutions padded to keep
    the size (then halved by stride 2, or by 2x2 max-pooling), BatchNorm always on
    the current batch's statistics with a learnt offset and no scale (eps 1e-3),
    weights Glorot-uniform, biases 0. Inputs are images `[N, H, W, C]`.

    Args:
        input_shape: `(H, W, C)` of one image.
        output_size: classes (N ways).
        filters: channels of every conv layer (Omniglot 64, miniImageNet 32).
        downsample: halve the size by `stride` 2 (Omniglot) or 2x2 max-`pool`
            (miniImageNet).
        batch_norm: `transductive`: each batch's own statistics, at meta-training
            and at meta-test (the reference code; every query set is normalised
            with its own statistics); `per_step` (MAML++, algo=maml only): as
            transductive, with one BatchNorm offset (and scale) per inner step,
            meta-learned and left alone by the inner loop; `support`: query
            examples are normalised with the support set's statistics only
            (non-transductive: each query prediction depends on that example and
            the support set alone); `none`: no normalisation (conv biases
            instead).
        batch_norm_scale: also learn a BatchNorm scale (the reference code has
            only an offset; PyTorch's and learn2learn's BatchNorm have both).
        batch_norm_eps: BatchNorm's epsilon (reference code 1e-3, PyTorch 1e-5).
        features: what the head sees: the `mean` of the last feature map over
            space (Omniglot) or the whole map `flatten`ed (miniImageNet).
        conv_impl: `lax` (XLA's convolution), `im2col` (patches and one matrix
            product: far faster for per-task weights on CPU), or `auto` (im2col on
            CPU, lax elsewhere).
    """
    check_option(len(input_shape) == 3, "input_shape", input_shape, "(H, W, C)")
    check_option(filters >= 1, "filters", filters, "it must be an integer >= 1")
    check_option(batch_norm_eps > 0, "batch_norm_eps", batch_norm_eps, "it must be > 0")
    impl = conv_impl_for(jax.default_backend()) if conv_impl == "auto" else conv_impl
    stride = 2 if downsample == "stride" else 1
    w_init = hk.initializers.VarianceScaling(1.0, "fan_avg", "uniform")

    def statistics(hidden: jax.Array, is_training: bool):
        """This batch's statistics; in `support` mode also stored in the state
        (training mode) or read from it (evaluation mode: the support's)."""
        if batch_norm != "support":
            return batch_statistics(hidden)
        if not is_training:
            shape = hidden.shape[-1:]
            return hk.get_state("mean", shape), hk.get_state("var", shape)
        mean, variance = batch_statistics(hidden)
        hk.set_state("mean", mean)
        hk.set_state("var", variance)
        return mean, variance

    def block(hidden: jax.Array, index: int, is_training: bool) -> jax.Array:
        channels = hidden.shape[-1]
        with hk.name_scope(f"conv_{index}"):
            weights = hk.get_parameter("w", (3, 3, channels, filters), init=w_init)
            hidden = conv3x3(hidden, weights, stride, impl)
            if batch_norm == "none":
                hidden = hidden + hk.get_parameter("b", (filters,), init=jnp.zeros)
            else:
                offset = hk.get_parameter("offset", (filters,), init=jnp.zeros)
                scale = None
                if batch_norm_scale:
                    scale = hk.get_parameter("scale", (filters,), init=jnp.ones)
                hidden = normalise(
                    hidden,
                    statistics(hidden, is_training),
                    batch_norm_eps,
                    scale,
                    offset,
                )
        hidden = jax.nn.relu(hidden)
        if downsample == "pool":
            hidden = hk.max_pool(hidden, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return hidden

    def forward(inputs: jax.Array, is_training: bool, features_only: bool):
        hidden = inputs
        for index in range(4):
            hidden = block(hidden, index, is_training)
        if features == "mean":
            hidden = jnp.mean(hidden, axis=(1, 2))
        else:
            hidden = hidden.reshape(hidden.shape[0], -1)
        if features_only:
            return hidden
        return hk.Linear(output_size, w_init=w_init, name=HEAD_MODULE)(hidden)

    return _from_haiku(forward, batch_norm)
