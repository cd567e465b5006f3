"""Each algorithm against hand-derived values and its defining property."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import LR, THETA, C, D, adapted, constant_model, quadratic_problem
from jax.flatten_util import ravel_pytree

from metalearn.algorithms import (
    ALGORITHMS,
    make_anil,
    make_maml,
    make_metasgd,
    make_pretrained,
    make_protonet,
    make_reptile,
    make_sgd_baseline,
)
from metalearn.evaluation import make_evaluate
from metalearn.metrics import (
    ACCURACY,
    LOSS,
    accuracy,
    cross_entropy,
)
from metalearn.models import make_mlp
from metalearn.optimizers import flat_optimizer
from metalearn.tasks import TaskBatch, TaskFamily
from metalearn.tasks.sinusoid import make_sinusoid
from metalearn.trainer import init_train_state, make_train_step, make_train_window

QUADRATIC, ONE_TASK = quadratic_problem()


def sample_blobs(key, data, num_support, num_query, ways=3) -> TaskBatch:
    """3-way classification of 2-D points around per-task random centres; labels
    in a per-task random order."""
    del data
    centre_key, noise_key, label_key = jax.random.split(key, 3)
    centres = 3.0 * jax.random.normal(centre_key, (ways, 1, 2))
    points = centres + jax.random.normal(noise_key, (ways, num_support + num_query, 2))
    labels = jax.random.permutation(label_key, ways)[:, None]
    labels = jnp.broadcast_to(labels, points.shape[:2])
    return TaskBatch(
        support_inputs=points[:, :num_support].reshape(-1, 2),
        support_targets=labels[:, :num_support].reshape(-1),
        query_inputs=points[:, num_support:].reshape(-1, 2),
        query_targets=labels[:, num_support:].reshape(-1),
    )


BLOBS = TaskFamily(
    name="blobs",
    sample=sample_blobs,
    data=(),
    loss=cross_entropy,
    metrics={"loss": LOSS, "acc": ACCURACY},
    input_shape=(2,),
    output_size=3,
    num_classes=3,
)


def training_family(name: str) -> TaskFamily:
    """Sinusoids, or for an algorithm that only classifies, blobs."""
    if ALGORITHMS.metadata(name).get("classification_only"):
        return BLOBS
    return make_sinusoid(amp_max=0.5).train


# name -> (factory, options, expected meta-gradient after `steps` inner steps)
CLOSED_FORMS = {
    "maml": (make_maml, {}, lambda n: 2 * (adapted(n) - D) * (1 - 2 * LR) ** n),
    "fomaml": (make_maml, {"first_order": True}, lambda n: 2 * (adapted(n) - D)),
    "anil": (make_anil, {}, lambda n: 2 * (adapted(n) - D) * (1 - 2 * LR) ** n),
    "reptile": (make_reptile, {}, lambda n: THETA - adapted(n)),
    "metasgd": (
        make_metasgd,
        {},
        lambda n: {
            "params": 2 * (adapted(n) - D) * (1 - 2 * LR) ** n,
            # d theta_n / d lr = -2 n (1 - 2 lr)^(n - 1) (theta - C)
            "lrs": 2
            * (adapted(n) - D)
            * -2
            * n
            * (1 - 2 * LR) ** (n - 1)
            * (THETA - C),
        },
    ),
    # pooled MSE over 3 support (C) and 2 query (D) points, no inner loop
    "pretrained": (
        make_pretrained,
        {},
        lambda n: (6 * (THETA - C) + 4 * (THETA - D)) / 5,
    ),
    "sgd": (make_sgd_baseline, {}, lambda n: 0.0),
}


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_meta_gradient_on_a_quadratic_matches_closed_form(name, steps):
    factory, options, expected = CLOSED_FORMS[name]
    algorithm = factory(constant_model(), QUADRATIC, LR, steps, **options)
    meta_params, state = algorithm.init(jax.random.key(0))
    result = algorithm.meta_grad(meta_params, state, ONE_TASK)
    jax.tree.map(
        lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7),
        result.grads,
        expected(steps),
    )


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_meta_gradient_reports_the_query_loss_and_keeps_the_model_state(name):
    factory, options, _ = CLOSED_FORMS[name]
    algorithm = factory(constant_model(), QUADRATIC, LR, 1, **options)
    meta_params, state = algorithm.init(jax.random.key(0))
    result = algorithm.meta_grad(meta_params, state, ONE_TASK)
    assert result._fields == ("loss", "grads", "model_state", "metrics")
    assert result.model_state == {} and result.metrics == {}
    query_loss = {  # the loss each algorithm reports (its own objective)
        "pretrained": (3 * (THETA - C) ** 2 + 2 * (THETA - D) ** 2) / 5,
        "sgd": (THETA - D) ** 2,
    }.get(name, (adapted(1) - D) ** 2)
    assert float(result.loss) == pytest.approx(query_loss, rel=1e-5)


def test_algorithm_names_are_the_registry_and_fomaml():
    assert list(ALGORITHMS) == [
        "anil", "maml", "metasgd", "pretrained", "protonet", "reptile", "sgd"
    ]  # fmt: skip
    family = make_sinusoid().train
    model = make_mlp(family.input_shape, 1, hidden_sizes=(4,))
    assert make_maml(model, family, 0.1, 1, first_order=True).name == "fomaml"
    for name in ALGORITHMS:
        family = training_family(name)
        model = make_mlp(family.input_shape, family.output_size, hidden_sizes=(4,))
        assert ALGORITHMS.create(name, model, family, 0.1, 1).name == name


def test_anil_adapts_the_head_and_leaves_the_body_untouched():
    family = make_sinusoid().train
    model = make_mlp(family.input_shape, 1, hidden_sizes=(8, 8))
    anil = make_anil(model, family, inner_lr=0.1, inner_steps=1)
    params, state = anil.init(jax.random.key(0))
    batch = family.sample(jax.random.key(1), family.data, 10, 10)
    new_params, _ = anil.adapt_step(
        params, params, state, batch.support_inputs, batch.support_targets
    )
    assert set(params) == {"hidden_0", "hidden_1", "head"}
    for module in ("hidden_0", "hidden_1"):
        jax.tree.map(np.testing.assert_array_equal, params[module], new_params[module])
    assert not np.allclose(params["head"]["w"], new_params["head"]["w"])


def test_sgd_baseline_ignores_meta_training():
    tasks = make_sinusoid(amp_max=0.5)
    family = tasks.train
    model = make_mlp(family.input_shape, 1, hidden_sizes=(16,))
    sgd = make_sgd_baseline(model, family, inner_lr=0.01, inner_steps=1)
    optimizer = flat_optimizer(optax.adam(0.01))
    start = init_train_state(sgd, optimizer, jax.random.key(0))
    window = make_train_window(make_train_step(sgd, family, optimizer, 4, 10, 10))
    trained, _ = window(jax.tree.map(jnp.copy, start), family.data, jnp.int32(20))
    jax.tree.map(np.testing.assert_array_equal, start.meta_params, trained.meta_params)

    evaluate = make_evaluate(
        sgd, tasks.test, num_tasks=50, num_support=10, num_query=20, num_steps=20
    )
    other_meta_params = jax.tree.map(lambda p: p + 1.0, start.meta_params)
    keys = jax.random.key(2), jax.random.key(3)
    means = evaluate(start.meta_params, start.model_state, (), *keys).means
    others = evaluate(other_meta_params, start.model_state, (), *keys).means
    reseeded = evaluate(start.meta_params, start.model_state, (), keys[0], keys[0])
    np.testing.assert_array_equal(means["mse"], others["mse"])
    # fresh weights differ with the adaptation key
    assert not np.allclose(means["mse"][1:], reseeded.means["mse"][1:])
    assert means["mse"][20] < 0.5 * means["mse"][0]  # SGD on the support set helps


@pytest.mark.parametrize(
    "name",
    [
        # protonet's own conv programs (~8 s cold); its logits test runs by default
        pytest.param(n, marks=pytest.mark.slow) if n == "protonet" else n
        for n in ALGORITHMS
        if n != "sgd"
    ],
)
def test_every_algorithm_trains_a_few_steps_and_lowers_its_loss(name):
    family = training_family(name)
    model = make_mlp(family.input_shape, family.output_size, hidden_sizes=(32, 32))
    algorithm = ALGORITHMS[name](model, family, inner_lr=0.1, inner_steps=1)
    optimizer = flat_optimizer(optax.adam(3e-3))
    step = make_train_step(algorithm, family, optimizer, 8, 10, 10)
    window = make_train_window(step)
    state = init_train_state(algorithm, optimizer, jax.random.key(0))
    held_out = jax.vmap(lambda k: family.sample(k, family.data, 10, 10))(
        jax.random.split(jax.random.key(99), 256)
    )
    meta_loss = jax.jit(
        lambda s: algorithm.meta_grad(s.meta_params, s.model_state, held_out).loss
    )
    before = float(meta_loss(state))
    state, _ = window(state, family.data, jnp.int32(300))
    assert float(meta_loss(state)) < 0.85 * before


# --- Prototypical Networks --------------------------------------------------------

# one 3-way 2-shot episode, labels out of order, and 4 queries
SUPPORT_X = np.array([[0.5, -1.0], [2.0, 1.0], [-1.5, 0.3], [1.8, 0.7], [0.2, -0.6],
                      [-1.0, 0.9]])  # fmt: skip
SUPPORT_Y = np.array([2, 0, 1, 0, 2, 1])
QUERY_X = np.array([[1.5, 1.2], [-1.2, 0.2], [0.4, -0.9], [0.0, 0.0]])
QUERY_Y = np.array([0, 1, 2, 1])


def test_protonet_logits_are_negative_squared_distances_to_class_means():
    model = make_mlp((2,), 3, hidden_sizes=(4,), activation="tanh")
    protonet = make_protonet(model, BLOBS, inner_lr=0.1, inner_steps=1)
    net, state = protonet.init(jax.random.key(0))
    assert set(net) == {"hidden_0"}  # the body only: no head is meta-learned
    params = protonet.adapt_step(
        net, protonet.adapt_init(net, jax.random.key(1)), state, SUPPORT_X, SUPPORT_Y
    )[0]
    logits = protonet.predict(params, state, QUERY_X)

    w, b = (np.asarray(net["hidden_0"][k], np.float64) for k in ("w", "b"))
    support, query = np.tanh(SUPPORT_X @ w + b), np.tanh(QUERY_X @ w + b)
    labels = SUPPORT_Y
    centres = np.stack([support[labels == c].mean(axis=0) for c in range(3)])
    expected = -np.array([[np.sum((q - c) ** 2) for c in centres] for q in query])
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)

    episode = TaskBatch(*(jnp.asarray(a)[None] for a in
                          (SUPPORT_X, SUPPORT_Y, QUERY_X, QUERY_Y)))  # fmt: skip
    result = protonet.meta_grad(net, state, episode)
    log_probs = expected - np.log(np.exp(expected).sum(axis=1, keepdims=True))
    query_loss = -np.mean(log_probs[np.arange(4), QUERY_Y])
    assert float(result.loss) == pytest.approx(query_loss, rel=1e-5)
    assert float(result.metrics["acc"]) == np.mean(expected.argmax(1) == QUERY_Y)


@pytest.mark.slow  # float64 conv programs: ~13 s cold
def test_protonet_meta_gradient_matches_finite_differences_in_float64():
    with jax.enable_x64(True):
        model = make_mlp((2,), 3, hidden_sizes=(5,), activation="tanh")
        protonet = make_protonet(model, BLOBS, inner_lr=0.1, inner_steps=1)
        net, state = protonet.init(jax.random.key(0))
        net = jax.tree.map(lambda p: p.astype(jnp.float64), net)
        keys = jax.random.split(jax.random.key(1), 2)
        tasks = jax.vmap(lambda k: sample_blobs(k, (), 2, 3))(keys)
        tasks = tasks._replace(
            support_inputs=tasks.support_inputs.astype(jnp.float64),
            query_inputs=tasks.query_inputs.astype(jnp.float64),
        )
        flat, unravel = ravel_pytree(net)
        flat_grads = ravel_pytree(protonet.meta_grad(net, state, tasks).grads)[0]
        assert flat_grads.dtype == jnp.float64
        meta_loss = jax.jit(lambda f: protonet.meta_grad(unravel(f), state, tasks).loss)
        eps = 1e-6
        for index in range(flat.size):
            bump = jnp.zeros_like(flat).at[index].set(eps)
            numeric = (meta_loss(flat + bump) - meta_loss(flat - bump)) / (2 * eps)
            assert float(flat_grads[index]) == pytest.approx(
                float(numeric), rel=1e-5, abs=1e-9
            )


def test_protonet_evaluation_reports_the_prototype_score_at_every_step():
    model = make_mlp((2,), 3, hidden_sizes=(8,))
    protonet = make_protonet(model, BLOBS, inner_lr=0.1, inner_steps=1)
    net, state = protonet.init(jax.random.key(0))
    evaluate = make_evaluate(
        protonet, BLOBS, num_tasks=16, num_support=2, num_query=3, num_steps=3
    )
    tasks_key = jax.random.key(5)
    means = evaluate(net, state, (), tasks_key, jax.random.key(6)).means

    def adapted_accuracy(key):  # the protocol's tasks, adapted once by hand
        batch = sample_blobs(key, (), 2, 3)
        start = protonet.adapt_init(net, key)
        params = protonet.adapt_step(
            net, start, state, batch.support_inputs, batch.support_targets
        )[0]
        return accuracy(protonet.predict(params, state, batch.query_inputs),
                        batch.query_targets)  # fmt: skip

    by_hand = np.mean([adapted_accuracy(k) for k in jax.random.split(tasks_key, 16)])
    np.testing.assert_allclose(means["acc"], np.full(4, by_hand), rtol=1e-6)
    assert by_hand > 0.5  # step 0 is the adapted model, not chance (1/3)
    assert np.all(means["loss"] == means["loss"][0])
