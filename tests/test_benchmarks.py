"""The benchmark's reference loop computes metalearn's maths, and its scripts run."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, load_script, python_script

from metalearn.algorithms import make_maml
from metalearn.models import conv3x3, make_conv4, make_mlp
from metalearn.tasks import TaskBatch
from metalearn.tasks.sinusoid import make_sinusoid


@pytest.fixture(scope="module")
def reference():
    return load_script(REPO / "benchmarks" / "reference_loop.py", "reference_loop")


@pytest.mark.slow  # two compiled meta-gradients in float64
def test_the_reference_loop_has_metalearns_meta_loss_and_meta_gradient(reference):
    family = make_sinusoid(amp_max=0.5).train
    model = make_mlp(family.input_shape, 1, hidden_sizes=(40, 40))
    maml = make_maml(model, family, inner_lr=0.1, inner_steps=1)
    params, state = maml.init(jax.random.key(0))
    # the same weights under the reference's haiku module names
    ref_params = reference.net.init(jax.random.PRNGKey(1), jnp.zeros((1, 1)))
    names = {"linear": "hidden_0", "linear_1": "hidden_1", "linear_2": "head"}
    assert sorted(ref_params) == sorted(names)
    ref_params = {ref: params[ours] for ref, ours in names.items()}
    np.random.seed(0)
    x1, y1, x2, y2 = reference.sample_tasks(4, 20, 0.5)
    tasks = TaskBatch(x1, y1, x2, y2)

    result = maml.meta_grad(params, state, tasks)
    ref_loss, ref_grads = jax.value_and_grad(reference.make_batch_maml_loss(0.1))(
        ref_params, x1, y1, x2, y2
    )
    np.testing.assert_allclose(result.loss, ref_loss, rtol=1e-5)
    for ref, ours in names.items():
        for got, want in zip(
            jax.tree.leaves(result.grads[ours]),
            jax.tree.leaves(ref_grads[ref]),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_the_tutorial_sampler_and_the_vectorised_one_draw_alike_tasks(reference):
    np.random.seed(0)
    for sample in (reference.sample_tasks, reference.sample_tasks_vectorised):
        x1, y1, x2, y2 = (np.asarray(a, np.float64) for a in sample(25, 10, 5.0))
        assert x1.shape == y1.shape == x2.shape == y2.shape == (25, 10, 1)
        assert np.all(np.abs(x1) <= 5.0) and np.all(np.abs(x2) <= 5.0)
        for task in range(25):
            # y = A sin(x - phase) = a sin x + b cos x: fit a, b on the support set
            def features(x, task=task):
                return np.stack([np.sin(x[task, :, 0]), np.cos(x[task, :, 0])], 1)

            (a, b), *_ = np.linalg.lstsq(features(x1), y1[task, :, 0], rcond=None)
            amplitude = np.hypot(a, b)
            assert 0.1 - 1e-4 <= amplitude <= 5.0 + 1e-4
            # the query points lie on the same sinusoid
            np.testing.assert_allclose(
                features(x2) @ [a, b], y2[task, :, 0], atol=1e-4 * max(amplitude, 1)
            )


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, flags",
    [
        ("ours.py", ["--steps", "30", "train.log_every=10", "train.sample_ahead=4"]),
        ("reference_loop.py", ["--steps", "10"]),
        ("reference_loop.py", ["--steps", "10", "--sampling", "vectorised"]),
    ],
)
def test_the_benchmark_scripts_run_and_report(script, flags):
    result = python_script(REPO / "benchmarks" / script, *flags)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["steps_per_s"] > 0 and report["compile_s"] > 0
    assert np.isfinite(report["final_meta_loss"])


def test_the_memory_benchmark_fits_fixed_plus_per_task_memory():
    sys.path.insert(0, str(REPO / "benchmarks"))  # it imports throughput.py
    memory = load_script(REPO / "benchmarks" / "omniglot_memory.py", "omniglot_memory")
    fixed, per_task = memory.fit({size: 7 + 8.5 * size for size in (1, 16, 64, 256)})
    assert fixed == pytest.approx(7) and per_task == pytest.approx(8.5)
    # least squares through points off a line: the slope of (0, 0), (1, 1), (2, 3)
    assert memory.fit({0: 0, 1: 1, 2: 3}) == pytest.approx((-1 / 6, 1.5))


@pytest.mark.slow  # compiles the 20-way presets' evaluation chunks: ~1 min
def test_the_memory_benchmarks_chunk_memory_grows_with_the_chunk(omniglot_root):
    result = python_script(
        REPO / "benchmarks" / "omniglot_memory.py",
        "--chunk-memory",
        "experiment=maml_paper_omniglot_20w1s",
        f"data.root={omniglot_root}",
        timeout=600,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    sizes = [report[str(size)] for size in (1, 16, 64, 256)]
    assert sizes == sorted(sizes) and sizes[-1] > 10 * sizes[0]
    assert report["default"] >= 1


@pytest.mark.parametrize("images", [5, 20])
def test_the_cpu_limit_benchmarks_conv_shapes_are_conv4s_flops(images):
    """The matrix products cpu_limit.py times are those of conv4's forward pass:
    their FLOPs are XLA's count of the network on as many images, but for
    BatchNorm, ReLU, the mean, the head and the first layer's own product (13%
    more here; wrong output sides would be off by a factor of 4 or more)."""
    sys.path.insert(0, str(REPO / "benchmarks"))  # it imports throughput.py
    limit = load_script(REPO / "benchmarks" / "cpu_limit.py", "cpu_limit")
    model = make_conv4((28, 28, 1), 20)
    inputs = jnp.zeros((images, 28, 28, 1))
    params, state = model.init(jax.random.key(0), inputs)
    forward = jax.jit(lambda p, x: model.apply(p, state, x, True)[0])
    analysis = forward.lower(params, inputs).compile().cost_analysis()
    counted = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    shapes = limit.conv_shapes(images)
    assert [k for _, k, _ in shapes] == [9, 576, 576, 576]
    side, channels = 28, 1  # each layer's output side, as conv4's convolution gives it
    for rows, inner, _ in shapes:
        image = jnp.zeros((images, side, side, channels))
        side = conv3x3(image, jnp.zeros((3, 3, channels, 64)), 2, "im2col").shape[1]
        assert (rows, inner) == (images * side * side, 9 * channels)
        channels = 64
    products = sum(2 * rows * inner * columns for rows, inner, columns in shapes)
    assert products <= counted <= 1.2 * products


def test_the_op_profile_sums_operations_on_the_runtimes_threads():
    sys.path.insert(0, str(REPO / "benchmarks"))  # it imports throughput.py
    profile = load_script(REPO / "benchmarks" / "op_profile.py", "op_profile")
    python, runtime = {"pid": 1, "tid": 7}, {"pid": 1, "tid": 8}

    def event(thread, name, ts, dur):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur, **thread}

    events = [
        {"ph": "M", "name": "thread_name", "args": {"name": "python"}, **python},
        event(python, "ParseArguments", 0, 50),  # the host's, not an operation
        event(runtime, "while.3", 10, 90),  # contains the operations below
        event(runtime, "ynn_fusion.12", 10, 30),
        event(runtime, "ynn_fusion.4", 40, 20),
        event(runtime, "slice_select_fusion", 60, 10),
        event(runtime, "Rendezvous", 70, 25),  # waiting inside the all-reduce
        event(runtime, "all-reduce.1", 70, 30),
        event(runtime, "end: ynn_fusion", 100, 0),
    ]
    times, span = profile.operation_times(events)
    assert times == {
        "ynn_fusion.12": 30,
        "ynn_fusion.4": 20,
        "slice_select_fusion": 10,
        "all-reduce.1": 30,
    }
    assert span == 90
    assert (
        profile.kind_of("ynn_fusion.12")
        == profile.kind_of("ynn_fusion")
        == "ynn_fusion"
    )
    assert profile.truncated(span=7.0, wall=10.0)  # the buffer filled after 7 s
    assert not profile.truncated(span=9.5, wall=10.0)
    assert not profile.truncated(span=0.001, wall=0.004)  # tiny: dispatch dominates


def test_the_op_profile_runs_and_reports(tmp_path):
    out = tmp_path / "profile.md"
    python_script(
        REPO / "benchmarks" / "op_profile.py",
        "--steps",
        "3",
        "--out",
        str(out),
        "task=sinusoid",
        "outer.batch=4",
    )
    text = out.read_text()
    assert "cores (CPU time over wall time)" in text
    assert "| matrix products (`ynn_fusion`, `dot`) |" in text
