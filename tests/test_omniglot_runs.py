"""Omniglot end to end: a run, every algorithm, learning, bad input."""

import pytest
from helpers import read_json, read_runs, train_main, train_py

from metalearn.algorithms import ALGORITHMS
from metalearn.rundir import read_history

# A tiny Omniglot setting: 14x14 images, an 8-filter conv4, a few meta-steps.
TINY = [
    "task=omniglot",
    "model=conv4",
    "task.ways=3",
    "task.image_size=14",
    "model.filters=8",
    "inner.k=1",
    "inner.lr=0.4",
    "outer.batch=2",
    "outer.steps=6",
    "train.log_every=3",
    "eval.every=0",
    "eval.num_tasks=6",
    "eval.num_query=2",
    "eval.steps=2",
    "eval.figures=false",
    "logger=none",
]


def tiny_run(tmp_path, omniglot_root, *overrides):
    code = train_main(
        *TINY, f"data.root={omniglot_root}", f"hydra.run.dir={tmp_path}", *overrides
    )
    assert code == 0
    return read_json(tmp_path / "summary.json")


@pytest.mark.slow  # its own conv4 programs: ~12 s of compiling
def test_a_first_order_maml_run_reports_accuracy_with_cis(tmp_path, omniglot_root):
    summary = tiny_run(tmp_path, omniglot_root, "algo=fomaml", "eval.figures=true")
    for i in range(3):
        assert 0 <= summary[f"eval/acc@step{i}"] <= 1
        assert summary[f"eval/acc_ci95@step{i}"] >= 0
        assert summary[f"eval/loss@step{i}"] > 0
    assert summary["objective"] == summary["eval/acc@step2"]  # the headline metric
    assert 0 <= summary["train/acc"] <= 1 and summary["train/loss"] > 0
    assert summary["train/steps"] == 6
    assert (tmp_path / "figures" / "predictions_6.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.parametrize("algo", [*ALGORITHMS, "fomaml"])
def test_every_algorithm_trains_and_evaluates_on_omniglot(
    tmp_path, omniglot_root, algo
):
    summary = tiny_run(tmp_path, omniglot_root, f"algo={algo}")
    assert 0 <= summary["eval/acc@step2"] <= 1
    assert summary["train/steps"] == 6


@pytest.mark.slow
def test_maml_learns_omniglot_well_above_chance_and_step_0_is_chance(
    tmp_path, omniglot_root
):
    summary = tiny_run(
        tmp_path, omniglot_root, "algo=fomaml", "task.ways=5", "model.filters=32",
        "task.image_size=28", "outer.batch=8", "outer.steps=400",
        "train.log_every=100", "outer.lr=0.003", "inner.lr=0.08",
        "eval.num_tasks=200", "eval.num_query=1", "eval.steps=3",
    )  # fmt: skip
    assert summary["eval/acc@step3"] > 0.6  # chance is 0.2
    # nothing of a test task leaks into step 0: chance within its CI
    step0, ci = summary["eval/acc@step0"], summary["eval/acc_ci95@step0"]
    assert abs(step0 - 0.2) <= ci + 0.01


@pytest.mark.slow  # ~40 s: conv4 compiles, 500 meta-steps
def test_protonet_learns_omniglot_above_chance_with_a_flat_adaptation_curve(
    tmp_path, omniglot_root
):
    summary = tiny_run(
        tmp_path, omniglot_root, "algo=protonet", "model.filters=16",
        "outer.batch=8", "outer.steps=500", "outer.lr=0.003", "train.log_every=250",
        "eval.num_tasks=100", "logger=wandb",
    )  # fmt: skip
    acc, ci = summary["eval/acc@step2"], summary["eval/acc_ci95@step2"]
    assert acc - ci > 0.45  # chance is 1/3
    for key in ("acc", "acc_ci95", "loss"):  # no inner steps: one score, every step
        assert summary[f"eval/{key}@step0"] == summary[f"eval/{key}@step2"]
        assert summary[f"eval/{key}@step1"] == summary[f"eval/{key}@step2"]
    (run,) = read_runs(tmp_path)
    assert run.job_type == "protonet"
    assert run.summary["eval/acc@step0"] == pytest.approx(acc)


@pytest.mark.parametrize(
    "override, message",
    [
        ("task.ways=1", "task.ways=1 is not allowed: it must be an integer >= 2"),
        ("task.ways=5000", "task.ways=5000 is not allowed: it must be at most"),
        ("inner.k=0", "inner.k=0 is not allowed: it must be an integer >= 1"),
        ("inner.k=25", "inner.k=25 is not allowed with outer.num_query=25"),
        ("task.split=nope", "task.split=nope is not allowed: choose one of maml"),
    ],
)
def test_bad_omniglot_input_is_one_line_before_any_work(
    tmp_path, omniglot_root, capsys, override, message
):
    code = train_main(
        *TINY, f"data.root={omniglot_root}", f"hydra.run.dir={tmp_path}", override
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists()


def test_missing_data_names_the_file_and_the_command(tmp_path, capsys):
    empty = tmp_path / "empty_root"
    empty.mkdir()
    code = train_main(*TINY, f"data.root={empty}", f"hydra.run.dir={tmp_path / 'r'}")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "omniglot.npz is missing" in err
    assert "python -m metalearn.data omniglot" in err
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("")
    code = train_main(
        *TINY, f"data.root={not_a_dir}", f"hydra.run.dir={tmp_path / 's'}"
    )
    assert code == 2 and "is not a directory" in capsys.readouterr().err


def test_a_run_on_one_device_per_core_trains_evaluates_and_resumes(
    tmp_path, omniglot_root
):
    # a fresh process: the CPU device count is fixed when JAX starts
    train_py(
        *TINY, "train.cpu_devices=2", "train.tasks_at_once=1", "eval.every=3",
        "eval.figures=true", "checkpoint.every=3", f"data.root={omniglot_root}",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    summary = read_json(tmp_path / "summary.json")
    assert summary["train/steps"] == 6 and 0 <= summary["eval/acc@step2"] <= 1
    history = read_history(tmp_path / "history.jsonl")
    evaluated = [row["step"] for row in history if "eval/acc@step2" in row]
    assert evaluated == [3, 6]  # mid-training evaluation too
    assert (tmp_path / "figures" / "predictions_3.png").is_file()
    log = (tmp_path / "train.log").read_text()
    assert "meta-steps of 2 tasks on 2 of 2 cpu device(s), 1 tasks at once" in log
    # resumed from its checkpoint (restored on one device) onto both devices again
    train_py(f"resume={tmp_path}", "outer.steps=9")
    assert read_json(tmp_path / "summary.json")["train/steps"] == 9
