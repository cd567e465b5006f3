"""MAML++'s options of algo=maml and the BatchNorm modes, against hand-derived
values (float64 wherever gradients are compared)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    LR,
    THETA,
    C,
    D,
    adapted,
    constant_model,
    final_state,
    quadratic_problem,
    read_json,
    train_main,
)
from jax.flatten_util import ravel_pytree

from metalearn.algorithms import make_anil, make_maml
from metalearn.algorithms.maml import multi_step_loss_weights
from metalearn.inner import make_adapt, make_model_loss, make_query_loss
from metalearn.metrics import cross_entropy
from metalearn.models import make_conv4, make_mlp
from metalearn.tasks import TaskBatch, TaskFamily
from metalearn.tasks.sinusoid import make_sinusoid

QUADRATIC, ONE_TASK = quadratic_problem()


def family(loss, input_shape, output_size) -> TaskFamily:
    return TaskFamily("test", None, (), loss, {}, input_shape, output_size)


IMAGES = family(cross_entropy, (8, 8, 1), 3)  # 3-way, 8x8 images, for a tiny conv4


def image_tasks(num_tasks=2, support=4, query=5, seed=0) -> TaskBatch:
    keys = jax.random.split(jax.random.key(seed), 4)
    return TaskBatch(
        jax.random.normal(keys[0], (num_tasks, support, 8, 8, 1)),
        jax.random.randint(keys[1], (num_tasks, support), 0, 3),
        jax.random.normal(keys[2], (num_tasks, query, 8, 8, 1)),
        jax.random.randint(keys[3], (num_tasks, query), 0, 3),
    )


def tiny_conv4(batch_norm):
    return make_conv4((8, 8, 1), 3, filters=3, batch_norm=batch_norm,
                      batch_norm_scale=True)  # fmt: skip


def float64(tree):
    """Floating-point leaves as float64 (inside `jax.enable_x64`), labels kept."""
    return jax.tree.map(
        lambda leaf: (
            leaf.astype(jnp.float64)
            if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)
            else leaf
        ),
        tree,
    )


def init64(algorithm):
    params, state = algorithm.init(jax.random.key(0))
    return float64(params), float64(state)


def assert_tree_close(got, want, rtol=1e-10, atol=1e-12):
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=rtol, atol=atol), got, want
    )


# --- multi-step loss --------------------------------------------------------------


@pytest.mark.parametrize(
    "step, weights",
    [
        (0, [0.2] * 5),  # equal at the start
        (2600, [0.1] * 4 + [0.6]),  # epoch 5: 0.2 - 5 * 0.02 and 0.2 + 5 * 4 * 0.02
        (4999, [0.02] * 4 + [0.92]),  # epoch 9
        (5000, [0.0] * 4 + [1.0]),  # from epoch 10 on: the last step only
    ],
)
def test_multi_step_loss_weights_anneal_as_mamlpp_does(step, weights):
    weights_at = jax.jit(lambda s: multi_step_loss_weights(s, 5, 10, 500))
    np.testing.assert_allclose(weights_at(jnp.int32(step)), weights, atol=1e-7)
    np.testing.assert_allclose(weights_at(jnp.int32(step)).sum(), 1.0, rtol=1e-6)
    # the floors (0.03 / S, and 1 - 0.03 (S - 1) / S) bind only when annealing
    # takes more than 33 epochs: 0.2 - 99 * 0.002 < 0.006, 0.2 + 99 * 0.008 > 0.976
    late = multi_step_loss_weights(99 * 500, 5, 100, 500)
    np.testing.assert_allclose(late, [0.006] * 4 + [0.976], atol=1e-7)


@pytest.mark.parametrize(
    "step, weights", [(0, [1 / 3] * 3), (25, [1 / 6, 1 / 6, 2 / 3])]
)
def test_multi_step_loss_is_the_hand_weighted_sum_of_each_steps_query_loss(
    step, weights
):
    with jax.enable_x64(True):
        maml = make_maml(constant_model(), QUADRATIC, LR, 3, multi_step_loss=True,
                         multi_step_loss_epochs=4, epoch_steps=10)  # fmt: skip
        meta_params, state = init64(maml)
        # epoch 2 of 4: 1/3 - 2/12 before the last step, 1/3 + 2 * 2/12 on it
        result = jax.jit(maml.meta_grad)(
            meta_params, state, float64(ONE_TASK), jnp.int32(step)
        )
        losses = [(adapted(i) - D) ** 2 for i in (1, 2, 3)]
        grads = [2 * (adapted(i) - D) * (1 - 2 * LR) ** i for i in (1, 2, 3)]
        assert float(result.loss) == pytest.approx(np.dot(weights, losses), rel=1e-12)
        assert float(result.grads) == pytest.approx(np.dot(weights, grads), rel=1e-12)
        without = make_maml(constant_model(), QUADRATIC, LR, 3).meta_grad
        assert float(without(meta_params, state, float64(ONE_TASK)).loss) == (
            pytest.approx(losses[-1], rel=1e-12)
        )


# --- learned per-layer, per-step learning rates ------------------------------------


@pytest.mark.parametrize("steps", [1, 3])
def test_learned_lrs_get_their_closed_form_meta_gradients(steps):
    with jax.enable_x64(True):
        maml = make_maml(constant_model(), QUADRATIC, LR, steps, learned_lrs=True)
        meta_params, state = init64(maml)
        np.testing.assert_array_equal(meta_params["lrs"], [LR] * steps)
        grads = maml.meta_grad(meta_params, state, float64(ONE_TASK)).grads
        # theta_S - C = prod_j (1 - 2 lr_j) (theta - C), so each step's rate has
        # d loss / d lr_j = 2 (theta_S - D) (theta - C) (-2) (1 - 2 LR)^(S - 1)
        d_lr = 2 * (adapted(steps) - D) * (THETA - C) * -2 * (1 - 2 * LR) ** (steps - 1)
        np.testing.assert_allclose(grads["lrs"], [d_lr] * steps, rtol=1e-12)
        d_theta = 2 * (adapted(steps) - D) * (1 - 2 * LR) ** steps  # MAML's
        assert float(grads["params"]) == pytest.approx(d_theta, rel=1e-12)


@pytest.mark.slow  # a conv4's LSLR meta-gradient: ~25 s cold (the closed form is fast)
def test_every_layer_and_steps_learning_rate_of_a_conv4_gets_a_gradient():
    maml = make_maml(tiny_conv4("transductive"), IMAGES, 0.1, 2, learned_lrs=True)
    meta_params, state = maml.init(jax.random.key(0))
    grads = jax.jit(maml.meta_grad)(meta_params, state, image_tasks()).grads
    names = {(m, n) for m, leaves in grads["lrs"].items() for n in leaves}
    assert ("conv_0", "w") in names and ("head", "b") in names and len(names) == 14
    for leaf in jax.tree.leaves(grads["lrs"]):
        assert leaf.shape == (2,) and np.all(np.abs(leaf) > 0)


@pytest.mark.slow  # float64 second order with every option: ~7 s cold
def test_the_full_mamlpp_meta_gradient_matches_finite_differences():
    """Multi-step loss, learned rates and derivative-order annealing, second order."""
    with jax.enable_x64(True):
        sinusoid = make_sinusoid().train
        model = make_mlp((1,), 1, hidden_sizes=(6,), activation="tanh")
        options = {"multi_step_loss": True, "learned_lrs": True}
        maml = make_maml(model, sinusoid, 0.05, 3, **options, first_order_epochs=1,
                         epoch_steps=4)  # fmt: skip
        meta_params, state = init64(maml)
        keys = jax.random.split(jax.random.key(1), 2)
        tasks = float64(jax.vmap(lambda k: sinusoid.sample(k, (), 5, 7))(keys))
        step = jnp.int32(6)  # epoch 1: second order, the weights mid-annealing
        flat, unravel = ravel_pytree(meta_params)
        meta_grad = jax.jit(lambda f: maml.meta_grad(unravel(f), state, tasks, step))
        flat_grads = ravel_pytree(meta_grad(flat).grads)[0]
        for index in np.random.default_rng(0).choice(flat.size, 12, replace=False):
            bump = jnp.zeros_like(flat).at[index].set(1e-6)
            numeric = (meta_grad(flat + bump).loss - meta_grad(flat - bump).loss) / 2e-6
            assert float(flat_grads[index]) == pytest.approx(
                float(numeric), rel=1e-5, abs=1e-9
            )


# --- derivative-order annealing -------------------------------------------------


def test_derivative_order_annealing_switches_from_fomaml_to_maml_at_its_step():
    with jax.enable_x64(True):
        sinusoid = make_sinusoid().train
        model = make_mlp((1,), 1, hidden_sizes=(8,), activation="tanh")
        keys = jax.random.split(jax.random.key(2), 3)
        tasks = float64(jax.vmap(lambda k: sinusoid.sample(k, (), 5, 5))(keys))
        annealed = make_maml(
            model, sinusoid, 0.1, 2, first_order_epochs=2, epoch_steps=3
        )  # fmt: skip: second order from step 6
        meta_params, state = init64(annealed)
        at_step = jax.jit(annealed.meta_grad)  # the step is traced: one program
        fomaml = make_maml(model, sinusoid, 0.1, 2, first_order=True).meta_grad
        maml = make_maml(model, sinusoid, 0.1, 2).meta_grad
        want_first = fomaml(meta_params, state, tasks).grads
        want_second = maml(meta_params, state, tasks).grads
        assert not np.allclose(*(ravel_pytree(g)[0] for g in (want_first, want_second)))
        for step in (0, 5):
            assert_tree_close(
                at_step(meta_params, state, tasks, step).grads, want_first
            )
        for step in (6, 100):
            assert_tree_close(
                at_step(meta_params, state, tasks, step).grads, want_second
            )
        assert at_step._cache_size() == 1


# --- per-step BatchNorm -----------------------------------------------------------


@pytest.mark.slow  # a conv4 meta-gradient: ~19 s cold
def test_per_step_batch_norm_keeps_one_offset_and_scale_per_inner_step():
    """One row of BatchNorm weights per inner step, every row used, meta-learned
    only: the inner loop leaves them alone (MAML++'s default)."""
    maml = make_maml(tiny_conv4("per_step"), IMAGES, 0.1, 2)
    meta_params, state = maml.init(jax.random.key(0))
    assert meta_params["conv_2"]["offset"].shape == (2, 3)  # [steps, filters]
    assert meta_params["conv_2"]["scale"].shape == (2, 3)
    assert meta_params["conv_2"]["w"].shape == (3, 3, 3, 3)
    tasks = image_tasks(2, 3, 4, seed=3)
    grads = jax.jit(maml.meta_grad)(meta_params, state, tasks).grads
    for module in ("conv_0", "conv_3"):  # every step's row is used
        assert np.all(np.abs(grads[module]["offset"]).sum(-1) > 0)
        assert np.all(np.abs(grads[module]["scale"]).sum(-1) > 0)
    task = jax.tree.map(lambda a: a[0], tasks)
    adapted = maml.adapt_init(meta_params, jax.random.key(0))
    adapted, _ = jax.jit(maml.adapt_step)(
        meta_params, adapted, state, task.support_inputs, task.support_targets
    )
    for name in ("offset", "scale"):
        np.testing.assert_array_equal(
            adapted["params"]["conv_1"][name], meta_params["conv_1"][name]
        )
    assert not np.allclose(adapted["params"]["conv_1"]["w"], meta_params["conv_1"]["w"])


@pytest.mark.slow  # second order through a conv4 in float64: ~1 min on 2 cores
def test_per_step_batch_norm_meta_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        maml = make_maml(tiny_conv4("per_step"), IMAGES, 0.1, 2)
        meta_params, state = init64(maml)
        tasks = float64(image_tasks(2, 3, 4, seed=3))
        flat, unravel = ravel_pytree(meta_params)
        meta_grad = jax.jit(lambda f: maml.meta_grad(unravel(f), state, tasks))
        flat_grads = ravel_pytree(meta_grad(flat).grads)[0]
        # entries of both rows of a layer's offset and scale, and a few others
        marked = jax.tree.map(jnp.zeros_like, meta_params)
        marked["conv_1"]["offset"] = jnp.array([[1.0, 0, 0], [0, 2.0, 0]])
        marked["conv_1"]["scale"] = jnp.array([[0, 0, 3.0], [4.0, 0, 0]])
        indices = [int(np.argmax(ravel_pytree(marked)[0] == v)) for v in range(1, 5)]
        rng = np.random.default_rng(0)
        for index in [*indices, *rng.choice(flat.size, 4, replace=False)]:
            bump = jnp.zeros_like(flat).at[index].set(1e-6)
            numeric = (meta_grad(flat + bump).loss - meta_grad(flat - bump).loss) / 2e-6
            assert float(flat_grads[index]) == pytest.approx(
                float(numeric), rel=1e-5, abs=1e-9
            )


@pytest.mark.slow  # conv4 programs per step: ~13 s cold
def test_evaluation_with_per_step_batch_norm_uses_each_steps_row():
    """After n adaptation steps the prediction uses row n - 1, as MAML++'s query
    does; a change to row 2 shows only from the third step on."""
    model = tiny_conv4("per_step")
    maml = make_maml(model, IMAGES, 0.1, 3)
    meta_params, state = maml.init(jax.random.key(0))
    changed = jax.tree.map(lambda p: p, meta_params)
    changed["conv_1"]["offset"] = meta_params["conv_1"]["offset"].at[2].add(1.0)
    task = jax.tree.map(lambda a: a[0], image_tasks(1))

    @jax.jit
    def predictions(meta_params):
        adapted, outputs = maml.adapt_init(meta_params, jax.random.key(0)), []
        for _ in range(4):
            outputs.append(maml.predict(adapted, state, task.query_inputs))
            adapted, _ = maml.adapt_step(
                meta_params, adapted, state, task.support_inputs, task.support_targets
            )
        return jnp.stack([*outputs, maml.predict(adapted, state, task.query_inputs)])

    before, after = predictions(meta_params), predictions(changed)
    np.testing.assert_array_equal(before[:3], after[:3])  # 0, 1, 2 steps
    assert not np.allclose(before[3:], after[3:])  # 3 and 4 (past the last: row 2)


# --- non-transductive BatchNorm -------------------------------------------------


def test_support_batch_norm_predicts_each_query_example_from_the_support_alone():
    tasks = jax.tree.map(lambda a: a[0].astype(jnp.float32), image_tasks(1))
    support, query = tasks.support_inputs, tasks.query_inputs
    outputs = {}
    for mode in ("support", "transductive"):
        maml = make_maml(tiny_conv4(mode), IMAGES, 0.1, 1)
        params, state = maml.init(jax.random.key(0))
        predict = jax.jit(functools.partial(maml.predict, params, state))
        together = predict(query, support)
        alone = jnp.concatenate([predict(query[i : i + 1], support) for i in range(5)])
        outputs[mode] = together, alone, predict(support, support)
    together, alone, on_support = outputs["support"]
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    # the support set's own predictions: its statistics are the batch's, as in
    # transductive BatchNorm
    np.testing.assert_allclose(on_support, outputs["transductive"][2], rtol=1e-5)
    assert not np.allclose(*outputs["transductive"][:2], atol=1e-3)


@pytest.mark.slow  # float64 second order through a conv4: ~27 s cold
@pytest.mark.parametrize("make_algorithm", [make_maml, make_anil])
def test_support_batch_norm_meta_gradient_matches_finite_differences(make_algorithm):
    with jax.enable_x64(True):
        algorithm = make_algorithm(tiny_conv4("support"), IMAGES, 0.1, 2)
        meta_params, state = init64(algorithm)
        tasks = float64(image_tasks(2, 3, 4, seed=3))
        flat, unravel = ravel_pytree(meta_params)
        meta_grad = jax.jit(lambda f: algorithm.meta_grad(unravel(f), state, tasks))
        flat_grads = ravel_pytree(meta_grad(flat).grads)[0]
        for index in np.random.default_rng(1).choice(flat.size, 8, replace=False):
            bump = jnp.zeros_like(flat).at[index].set(1e-6)
            numeric = (meta_grad(flat + bump).loss - meta_grad(flat - bump).loss) / 2e-6
            assert float(flat_grads[index]) == pytest.approx(
                float(numeric), rel=1e-5, abs=1e-9
            )


# --- BatchNorm in the inner loop ---------------------------------------------------


def hand_meta_loss(model, first_order, meta_params, state, tasks):
    """MAML's meta-loss written out: two SGD steps at 0.1 with a zero rate for
    BatchNorm's parameters, the query loss, the mean over tasks."""
    loss_fn = make_model_loss(model, cross_entropy)
    query_loss = make_query_loss(model, cross_entropy)
    adapt = make_adapt(loss_fn, 2, first_order)

    def one_task(task):
        rates = jax.tree.map(
            lambda is_bn: 0.0 if is_bn else 0.1, model.is_batch_norm(meta_params)
        )
        params, task_state = adapt(
            meta_params, rates, state, task.support_inputs, task.support_targets
        )
        return query_loss(
            params, task_state, task.support_inputs, task.query_inputs,
            task.query_targets,
        )[0]  # fmt: skip

    return jnp.mean(jax.vmap(one_task)(tasks))


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("mamlpp", [False, True])
def test_batch_norm_left_to_the_outer_loop_is_a_zero_inner_rate_for_it(
    first_order, mamlpp
):
    """The reference code's MAML (algo.adapt_batch_norm=false): the inner loop
    leaves BatchNorm's offset and scale alone, the outer loop learns them. Equal,
    in float64, to the same loop with a zero inner rate for them; on MAML++'s
    stepwise path (learned rates off, multi-step loss on, one weight) too."""
    with jax.enable_x64(True):
        options = (
            {"multi_step_loss": True, "multi_step_loss_epochs": 1} if mamlpp else {}
        )
        model = tiny_conv4("transductive")
        maml = make_maml(model, IMAGES, 0.1, 2, first_order=first_order, **options)
        meta_params, state = init64(maml)
        tasks = float64(image_tasks(2, 3, 4, seed=3))
        step = 10**6  # past the multi-step loss's annealing: the last step only
        got = jax.jit(maml.meta_grad)(meta_params, state, tasks, step)
        want_loss, want_grads = jax.jit(
            jax.value_and_grad(
                functools.partial(hand_meta_loss, model, first_order), argnums=0
            )
        )(meta_params, state, tasks)
        np.testing.assert_allclose(got.loss, want_loss, rtol=1e-10)
        assert_tree_close(got.grads, want_grads)
        assert np.all(np.abs(got.grads["conv_1"]["offset"]) > 0)  # meta-learned


@pytest.mark.parametrize("adapt_batch_norm", [False, True])
def test_adaptation_changes_batch_norm_only_with_adapt_batch_norm(adapt_batch_norm):
    model = tiny_conv4("transductive")
    maml = make_maml(model, IMAGES, 0.1, 2, adapt_batch_norm=adapt_batch_norm)
    meta_params, state = maml.init(jax.random.key(0))
    task = jax.tree.map(lambda a: a[0], image_tasks(1, 3, 4, seed=3))
    adapted = maml.adapt_init(meta_params, jax.random.key(0))
    adapted, _ = jax.jit(maml.adapt_step)(
        meta_params, adapted, state, task.support_inputs, task.support_targets
    )
    assert not np.allclose(adapted["conv_1"]["w"], meta_params["conv_1"]["w"])
    for name in ("offset", "scale"):
        changed = not np.array_equal(
            adapted["conv_1"][name], meta_params["conv_1"][name]
        )
        assert changed == adapt_batch_norm, name


# --- configs ------------------------------------------------------------------------

TINY = [  # experiment=mamlpp_omniglot_20w1s at tiny sizes
    "experiment=mamlpp_omniglot_20w1s",
    "task.ways=3",
    "task.image_size=14",
    "model.filters=8",
    "inner.steps=2",
    "outer.batch=2",
    "outer.steps=6",
    "algo.epoch_steps=2",
    "algo.multi_step_loss_epochs=2",
    "algo.first_order_epochs=1",
    "train.log_every=3",
    "eval.every=0",
    "eval.num_tasks=6",
    "eval.num_query=2",
    "eval.steps=3",
    "eval.objective=acc@step3",
    "eval.figures=false",
    "logger=none",
]


@pytest.mark.slow  # its own conv4 programs, as the other Omniglot runs: ~40 s
def test_the_mamlpp_preset_trains_and_evaluates_on_omniglot(tmp_path, omniglot_root):
    code = train_main(*TINY, f"data.root={omniglot_root}", f"hydra.run.dir={tmp_path}")
    assert code == 0
    summary = read_json(tmp_path / "summary.json")
    assert summary["train/steps"] == 6 and summary["train/loss"] > 0
    for i in range(4):  # past the 2 trained steps, the last step's rates and BN
        assert 0 <= summary[f"eval/acc@step{i}"] <= 1
    meta_params = final_state(tmp_path).meta_params  # the checkpoint restores
    assert meta_params["params"]["conv_0"]["offset"].shape == (2, 8)
    assert meta_params["lrs"]["conv_0"]["w"].shape == (2,)
    assert meta_params["lrs"]["conv_0"].get("offset") is None  # not adapted


# the same without the preset and its algo options, for other algorithms and models
PLAIN = ["task=omniglot", *[o for o in TINY[1:] if not o.startswith("algo.")]]
NO_MODEL_OPTIONS = [o for o in PLAIN if not o.startswith("model.")]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            [*PLAIN, "model=conv4", "model.batch_norm=per_step", "algo=anil"],
            "model.batch_norm=per_step is not allowed with algo=anil: per-step "
            "BatchNorm is a MAML++ option of algo=maml",
        ),
        (
            [*TINY, "algo.first_order=true"],
            "algo.first_order_epochs=1 is not allowed: it must be 0 with "
            "algo.first_order=true",
        ),
        ([*TINY, "algo.epoch_steps=0"], "algo.epoch_steps=0 is not allowed"),
        (
            [*PLAIN, "model=conv4", "algo=anil", "algo.learned_lrs=true"],
            "Key 'learned_lrs' not in 'algo_anil'",
        ),
        (
            [*NO_MODEL_OPTIONS, "model=mlp", "model.batch_norm=per_step"],
            "Key 'batch_norm' not in 'model_mlp'",
        ),
    ],
)
def test_mamlpp_options_refuse_what_they_cannot_work_with(
    tmp_path, omniglot_root, capsys, overrides, message
):
    code = train_main(*overrides, f"data.root={omniglot_root}",
                      f"hydra.run.dir={tmp_path}")  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "checkpoints").exists()
