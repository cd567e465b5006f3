"""The learn2learn peer of the Omniglot benchmark (benchmarks/peer_l2l.py) computes
metalearn's MAML: the same meta-loss and meta-gradient from the same weights and
episodes, on metalearn's class split, with tasks drawn alike.

Skipped without the `peers` extra and learn2learn (`bash benchmarks/install_peers.sh`,
which CI runs first).
"""

import importlib.util
import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("learn2learn") is None:
    pytest.skip(
        "learn2learn is not installed (bash benchmarks/install_peers.sh)",
        allow_module_level=True,
    )

import jax  # noqa: E402
import numpy as np  # noqa: E402
from helpers import REPO, compose_config, load_script  # noqa: E402

from metalearn.algorithms import make_maml  # noqa: E402
from metalearn.models import make_conv4  # noqa: E402
from metalearn.tasks.omniglot import family, maml_split, maml_table  # noqa: E402

WAYS, FILTERS, TASKS = 5, 8, 2  # tiny: 5-way 1-shot, 8 filters, 2 tasks a step


@pytest.fixture(scope="module")
def peer():
    return load_script(REPO / "benchmarks" / "peer_l2l.py", "peer_l2l")


@pytest.fixture(scope="module")
def speed():
    sys.path.insert(0, str(REPO / "benchmarks"))  # for its `import throughput`
    try:
        return load_script(REPO / "benchmarks" / "omniglot_speed.py", "omniglot_speed")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def random_images(characters: int) -> np.ndarray:
    """Omniglot-shaped binary images `[C, 20, 28, 28]`, no two alike."""
    rng = np.random.default_rng(0)
    return (rng.random((characters, 20, 28, 28)) < 0.2).astype(np.uint8)


def episodes_of(peer, tasks) -> list:
    """metalearn's sampled `TaskBatch [T, ...]` as the peer's episodes."""
    tasks = jax.device_get(tasks)

    def images(x):
        return torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)  # NHWC -> NCHW

    def labels(y):
        return torch.tensor(np.asarray(y), dtype=torch.long)

    return [
        peer.Episode(
            images(tasks.support_inputs[t]),
            labels(tasks.support_targets[t]),
            images(tasks.query_inputs[t]),
            labels(tasks.query_targets[t]),
        )
        for t in range(TASKS)
    ]


@pytest.mark.parametrize(
    "first_order, inner_steps, loss_scale, bn_scale, bn_eps",
    [
        (False, 1, "per_class", False, 1e-3),  # the MAML paper's settings
        (True, 1, "per_class", False, 1e-3),
        (False, 2, "per_class", False, 1e-3),
        (True, 2, "per_class", False, 1e-3),
        (False, 1, "mean", True, 1e-5),  # PyTorch's BatchNorm, learn2learn's loss
    ],
)
def test_the_peer_has_metalearns_meta_loss_and_meta_gradient(
    peer, first_order, inner_steps, loss_scale, bn_scale, bn_eps
):
    characters = 8
    tasks_family = family(
        "omniglot",
        random_images(characters),
        maml_table(np.arange(characters), rotations=True),
        WAYS,
        loss_scale,
    )
    model = make_conv4(
        tasks_family.input_shape,
        WAYS,
        filters=FILTERS,
        batch_norm_scale=bn_scale,
        batch_norm_eps=bn_eps,
    )
    # learn2learn adapts every parameter, BatchNorm's included
    maml = make_maml(
        model,
        tasks_family,
        0.4,
        inner_steps,
        first_order=first_order,
        adapt_batch_norm=True,
    )
    params, state = maml.init(jax.random.key(1))
    keys = jax.random.split(jax.random.key(2), TASKS)
    tasks = jax.vmap(lambda k: tasks_family.sample(k, tasks_family.data, 1, 1))(keys)
    ours = jax.jit(maml.meta_grad)(params, state, tasks)

    network = peer.Conv4(WAYS, FILTERS, bn_scale, bn_eps)
    network.load_state_dict(peer.haiku_to_torch(jax.device_get(params)))
    peer_maml = peer.l2l.algorithms.MAML(network, lr=0.4, first_order=first_order)
    loss, _ = peer.meta_step(
        peer_maml,
        episodes_of(peer, tasks),
        peer.make_loss(WAYS, loss_scale),
        inner_steps,
    )

    np.testing.assert_allclose(loss, float(ours.loss), rtol=1e-5)
    want = peer.haiku_to_torch(jax.device_get(ours.grads))
    got = {name: p.grad for name, p in network.named_parameters()}
    assert sorted(got) == sorted(want)
    for name, grad in got.items():
        scale = float(want[name].abs().max())
        np.testing.assert_allclose(
            grad.numpy(), want[name].numpy(), rtol=1e-3, atol=1e-4 * scale, err_msg=name
        )


def test_the_peer_trains_on_metalearns_maml_split(peer):
    for seed in (0, 3):
        np.testing.assert_array_equal(
            peer.maml_train_characters(1623, seed), maml_split(1623, seed, "test")[0]
        )


def test_the_peers_episodes_rotate_each_class_on_its_own(peer):
    images = random_images(6)
    rotated = np.stack([np.rot90(images, t, axes=(-2, -1)) for t in range(4)])
    ways, shots, query = 3, 2, 3
    rng = np.random.default_rng(0)
    tasks_with_two_rotations = 0
    for _ in range(10):
        episode = peer.sample_episode(rng, images, ways, shots, query)
        assert episode.support_inputs.shape == (ways * shots, 1, 28, 28)
        assert episode.query_inputs.shape == (ways * query, 1, 28, 28)
        np.testing.assert_array_equal(episode.support_targets, np.repeat([0, 1, 2], 2))
        np.testing.assert_array_equal(episode.query_targets, np.repeat([0, 1, 2], 3))
        turns = []
        for label in range(ways):
            shown = np.concatenate(
                [
                    episode.support_inputs[episode.support_targets == label],
                    episode.query_inputs[episode.query_targets == label],
                ]
            )[:, 0]
            # every image of a class: one character, one rotation, distinct drawings
            found = {
                tuple(np.argwhere((rotated == image).all(axis=(-2, -1)))[0])
                for image in shown
            }
            assert len(found) == shots + query
            assert len({(turn, character) for turn, character, _ in found}) == 1
            turns.append(next(iter(found))[0])
        tasks_with_two_rotations += len(set(turns)) > 1
    assert tasks_with_two_rotations > 0  # not one rotation for the whole task


def test_the_peer_runs_from_the_command_line(omniglot_root):
    command = [sys.executable, str(REPO / "benchmarks" / "peer_l2l.py")]
    command += ["--steps", "2", "--warmup", "1", "--batch", "2", "--filters", "8"]
    command += ["--order", "first", "--data-root", str(omniglot_root)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["steps_per_s"] > 0 and report["warmup_steps"] == 1
    assert report["versions"]["learn2learn"] == "0.2.0"
    assert np.isfinite(report["final_meta_loss"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here")
def test_the_peer_asked_for_cuda_without_a_gpu_says_so(omniglot_root):
    command = [sys.executable, str(REPO / "benchmarks" / "peer_l2l.py")]
    command += ["--device", "cuda", "--data-root", str(omniglot_root)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().endswith("--device cuda: torch sees no CUDA GPU")
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here")
def test_the_speed_table_on_a_gpu_refuses_to_start_without_one(speed):
    with pytest.raises(SystemExit, match="--peer-device cuda: JAX .* not on a GPU"):
        speed.check_both_on_gpu()


@pytest.mark.parametrize("name", ["5w1s", "20w1s"])
def test_the_speed_workloads_are_the_experiments_settings(speed, name):
    workload = speed.WORKLOADS[name]
    config = compose_config([f"experiment={workload.experiment}"])
    assert (workload.ways, workload.batch) == (config.task.ways, config.outer.batch)
    assert (workload.shots, workload.query) == (config.inner.k, config.outer.num_query)
    assert workload.inner_steps == config.inner.steps
    assert workload.inner_lr == config.inner.lr
    assert config.outer.lr == 1e-3 and config.optimizer.name == "adam"
    assert config.task.loss_scale == "per_class" and config.task.split == "maml"
    assert not config.model.batch_norm_scale and config.model.batch_norm_eps == 1e-3
    assert (config.model.filters, config.model.features) == (64, "mean")


def test_the_speed_table_reports_both_sides_and_their_ratio(speed):
    ours = {
        "steps_per_s": 4.0,
        "compile_s": 9.0,
        "process_wall_s": 30,
        "peak_rss_mb": 700,
    }
    peer = {
        "steps_per_s": 2.0,
        "warmup_s": 1.5,
        "warmup_steps": 3,
        "process_wall_s": 40,
        "peak_rss_mb": 500,
    }
    lines = speed.training_rows("5w1s", "second", ours, ours, peer, False)
    assert len(lines) == 3 and "| 4.00 | 9.00 |" in lines[0]
    assert lines[2].endswith("| learn2learn | 2.00 | 1.50 (first 3) | 40.0 | 500 |")
    assert "2.0x" in speed.ratio_row("5w1s", "second", ours, ours, peer)
    assert speed.train_header(False)[0].endswith("| peak RSS MB |")
    # on a GPU: a column of peak GPU memory, JAX's for ours and torch's for the peer
    lines = speed.training_rows(
        "5w1s",
        "second",
        {**ours, "peak_device_mb": 1234.4},
        {**ours, "peak_device_mb": 99.6},
        {**peer, "peak_device_mb": 321.0},
        True,
    )
    assert [line.rsplit("|", 2)[1] for line in lines] == [" 1234 ", " 100 ", " 321 "]
    lines = speed.training_rows("5w1s", "second", ours, ours, peer, True)
    assert [line.rsplit("|", 2)[1] for line in lines] == [" - "] * 3  # on the CPU
    assert speed.train_header(True)[0].endswith("| peak RSS MB | peak GPU MB |")
    assert speed.train_header(True)[1].count("|") == 9
