"""Networks as pure (init, apply) pairs. The only module that imports haiku.

Every model carries a `state` beside its `params` (haiku's `transform_with_state`),
so layers with running statistics, such as BatchNorm in the Omniglot conv net, use
the same interface as a plain MLP, whose state is an empty dict.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import haiku as hk
import jax

Params = Any  # a pytree of arrays
ModelState = Any  # a pytree of arrays (empty for stateless models)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jax.nn.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
}


HEAD_MODULE = "head"  # name of every model's final layer


WEIGHT_INITS = {  # name -> haiku initialiser of weight matrices (biases start at 0)
    # stax's Dense default, as in the maml-jax tutorial
    "glorot": lambda: hk.initializers.VarianceScaling(
        1.0, "fan_avg", "truncated_normal"
    ),
    "lecun": lambda: hk.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"),
    "he": lambda: hk.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal"),
    # the MAML reference code (cbfinn/maml): truncated normal, std 0.01
    "maml": lambda: hk.initializers.TruncatedNormal(0.01),
}


class Model(NamedTuple):
    """A network as two pure functions.

    Attributes:
        init: `(key, inputs) -> (params, state)`; `inputs` is an example batch
            `[N, *input_shape]` that fixes the parameter shapes.
        apply: `(params, state, inputs, is_training) -> (predictions, state)` with
            `inputs [N, *input_shape]` and `predictions [N, output_size]`.
        head: `params -> bool pytree` marking the parameters of the final layer (the
            part ANIL adapts).
    """

    init: Callable[[jax.Array, jax.Array], tuple[Params, ModelState]]
    apply: Callable[[Params, ModelState, jax.Array, bool], tuple[jax.Array, ModelState]]
    head: Callable[[Params], Any]


def _from_haiku(forward: Callable[[jax.Array, bool], jax.Array]) -> Model:
    transformed = hk.without_apply_rng(hk.transform_with_state(forward))

    def init(key: jax.Array, inputs: jax.Array) -> tuple[Params, ModelState]:
        return transformed.init(key, inputs, True)

    def apply(params, state, inputs, is_training):
        return transformed.apply(params, state, inputs, is_training)

    def head(params: Params) -> Any:
        return {
            module: jax.tree.map(lambda _, m=module: m == HEAD_MODULE, leaves)
            for module, leaves in params.items()
        }

    return Model(init=init, apply=apply, head=head)


def make_mlp(
    hidden_sizes: Sequence[int],
    output_size: int,
    activation: str = "relu",
    weight_init: str = "glorot",
) -> Model:
    """A fully connected network `in -> hidden_sizes... -> output_size`.

    The MAML paper's sinusoid network is `make_mlp([40, 40], 1, "relu")`. Biases
    start at zero; weights from a truncated normal scaled as `weight_init` names.
    """
    act = ACTIVATIONS[activation]
    make_w_init = WEIGHT_INITS[weight_init]

    def forward(inputs: jax.Array, is_training: bool) -> jax.Array:
        w_init = make_w_init()
        del is_training  # no layer of an MLP behaves differently in training
        hidden = inputs.reshape(inputs.shape[0], -1)
        for i, size in enumerate(hidden_sizes):
            layer = hk.Linear(size, w_init=w_init, name=f"hidden_{i}")
            hidden = act(layer(hidden))
        return hk.Linear(output_size, w_init=w_init, name=HEAD_MODULE)(hidden)

    return _from_haiku(forward)
