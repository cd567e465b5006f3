"""Whole runs: outputs on disk, W&B offline files read back, the multirun command."""

import json
from itertools import product

import pytest
from helpers import (
    QUICK,
    compose_config,
    read_json,
    read_runs,
    train_main,
    without_timing,
)

from metalearn.config import typed
from metalearn.experiment import run, summary_lines
from metalearn.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
)

SUMMARY_KEYS = {
    "train/meta_loss",
    "train/steps",
    "train/seconds",
    "perf/steps_per_s",
    "perf/compile_s",
    "objective",
    *(
        f"eval/mse{kind}@step{i}"
        for kind in ("", "_ci95", "_median")
        for i in range(11)
    ),
}


def test_a_run_writes_summary_history_and_a_wandb_run(tmp_path):
    summary = run(compose_config(QUICK), tmp_path, group="g", name="quick")

    on_disk = read_json(tmp_path / SUMMARY_FILE)
    assert set(on_disk) == SUMMARY_KEYS
    assert on_disk == pytest.approx(summary)
    assert summary["train/steps"] == 40 and summary["train/seconds"] > 0
    assert summary["objective"] == summary["eval/mse@step10"]  # the default objective
    history = [json.loads(line) for line in (tmp_path / HISTORY_FILE).open()]
    assert [row["step"] for row in history] == [10, 20, 30, 40]
    assert "eval/mse@step1" in history[1] and "eval/mse@step1" not in history[0]
    assert all(row["train/meta_loss"] > 0 for row in history)
    assert read_json(tmp_path / STATUS_FILE)["state"] == "finished"
    assert read_json(tmp_path / CONFIG_FILE)["outer"]["steps"] == 40

    (wandb_run,) = read_runs(tmp_path)
    assert (wandb_run.group, wandb_run.name, wandb_run.job_type) == (
        "g",
        "quick",
        "maml",
    )
    assert wandb_run.exit_code == 0
    assert wandb_run.config["inner"] == {"lr": 0.1, "steps": 1, "k": 20}
    assert wandb_run.config["outer"]["steps"] == 40
    assert [row["_step"] for row in wandb_run.history] == [10, 20, 30, 40]
    for key in ("eval/mse@step0", "eval/mse@step1", "eval/mse@step10", "objective"):
        assert wandb_run.summary[key] == pytest.approx(summary[key])


def test_logger_none_writes_local_files_only_and_same_seed_same_numbers(tmp_path):
    def numbers(seed, where):
        run(compose_config([*QUICK, "logger=none", f"seed={seed}"]), where)
        assert (where / SUMMARY_FILE).exists() and (where / CHECKPOINT_DIR).is_dir()
        assert not (where / "wandb").exists()
        return without_timing(read_json(where / SUMMARY_FILE))

    first = numbers(0, tmp_path / "a")
    assert numbers(0, tmp_path / "b") == first
    assert numbers(1, tmp_path / "c") != first


def test_the_multirun_command_makes_four_wandb_runs_in_one_group(tmp_path):
    # the README's used-by command: python train.py -m inner.lr=0.01,0.1 outer.batch=1,4
    sweep_dir = tmp_path / "multirun" / "2026-11-26" / "12-00-00.000001"
    code = train_main(
        "-m", "inner.lr=0.01,0.1", "outer.batch=1,4", *QUICK,
        f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert code == 0

    runs = read_runs(sweep_dir)
    assert len(runs) == 4 and len({r.run_id for r in runs}) == 4
    assert {r.group for r in runs} == {"2026-11-26_12-00-00.000001"}
    pairs = {(r.config["inner"]["lr"], r.config["outer"]["batch"]) for r in runs}
    assert pairs == set(product([0.01, 0.1], [1, 4]))
    for r in runs:
        assert r.exit_code == 0 and r.job_type == "maml"
        assert f"inner.lr={r.config['inner']['lr']}" in r.name
        assert [row["_step"] for row in r.history] == [10, 20, 30, 40]
        assert r.summary["eval/mse@step1"] > 0
    for job in range(4):
        assert read_json(sweep_dir / str(job) / STATUS_FILE)["state"] == "finished"
        assert (sweep_dir / str(job) / ".hydra" / "overrides.yaml").exists()


def test_train_py_in_a_fresh_interpreter_runs_to_a_finished_wandb_run(finished_run):
    run_dir, result = finished_run  # python train.py <QUICK> eval.figures=true
    assert "Traceback" not in result.stderr
    assert "Finished 40 meta-steps." in result.stdout  # the summary for its user
    assert read_json(run_dir / STATUS_FILE)["state"] == "finished"
    summary = read_json(run_dir / SUMMARY_FILE)
    assert set(summary) == SUMMARY_KEYS
    (wandb_run,) = read_runs(run_dir)
    assert wandb_run.exit_code == 0 and wandb_run.group == ""
    assert wandb_run.summary["objective"] == pytest.approx(summary["objective"])
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert len(list((run_dir / "figures").glob("*.png"))) == 2  # one per evaluation
    drawn = [r["_step"] for r in wandb_run.history if "figures/predictions/_type" in r]
    assert drawn == [20, 40]


def test_the_wandb_run_plots_against_the_meta_step_and_keeps_the_right_summaries(
    finished_run,
):
    run_dir, _ = finished_run
    (wandb_run,) = read_runs(run_dir)
    metrics = wandb_run.metrics
    assert metrics["*"]["step_metric"] == "meta_step"  # every key against the step
    assert metrics["eval/mse@step*"]["summary"] == {"min", "last"}  # a loss: min
    objective = wandb_run.config["objective_metric"]
    assert objective == "eval/mse@step10" and metrics[objective]["summary"]
    assert wandb_run.config["objective_goal"] == "minimize"


def test_each_evaluation_logs_its_adaptation_curve_as_a_table(finished_run):
    run_dir, _ = finished_run
    (wandb_run,) = read_runs(run_dir)
    key = "eval/adaptation_curve/mse_table"
    logged = [row for row in wandb_run.history if f"{key}/path" in row]
    assert [row["_step"] for row in logged] == [20, 40]  # one per evaluation
    (files,) = run_dir.glob("wandb/offline-run-*/files")
    table = json.loads((files / logged[-1][f"{key}/path"]).read_text())
    assert table["columns"] == ["adaptation_step", "mse", "ci95"]
    summary = read_json(run_dir / SUMMARY_FILE)  # the final evaluation's scores
    for step, mse, ci95 in table["data"]:
        assert mse == pytest.approx(summary[f"eval/mse@step{step}"])
        assert ci95 == pytest.approx(summary[f"eval/mse_ci95@step{step}"])
    assert [row[0] for row in table["data"]] == list(range(11))


def test_a_time_budget_ends_training_early_and_a_resume_honours_what_is_left(
    tmp_path,
):
    budget = [*QUICK, "logger=none", "outer.steps=1000000", "train.log_every=500"]
    budget += ["eval.every=0", "checkpoint.every=0", "train.max_minutes=0.002"]
    assert train_main(*budget, f"hydra.run.dir={tmp_path}") == 0
    summary = read_json(tmp_path / "summary.json")
    done = summary["train/steps"]
    # where the budget cuts a window: tests/test_fit.py (here it depends on timing)
    assert 1 <= done < 1000000 and summary["train/seconds"] >= 0.12
    assert "eval/mse@step10" in summary  # evaluated as at a normal end
    assert read_json(tmp_path / "status.json")["state"] == "finished"
    # the budget is spent: a resume only re-scores; a larger budget trains on
    assert train_main(f"resume={tmp_path}") == 0
    assert read_json(tmp_path / "summary.json")["train/steps"] == done
    more = [f"outer.steps={done + 500}", "train.max_minutes=10"]
    assert train_main(f"resume={tmp_path}", *more) == 0
    assert read_json(tmp_path / "summary.json")["train/steps"] == done + 500


@pytest.mark.parametrize(
    "curve, expected",
    [
        ([0.8] * 9 + [0.9], ["after 1 adaptation step(s): 0.8 ± 0.02", "after 10"]),
        ([0.8] * 10, ["after 1 to 10 adaptation step(s): 0.8 ± 0.02"]),  # ProtoNets
        ([0.8, 0.85] + [0.8] * 8, ["after 1 adaptation step(s)", "after 10"]),
    ],
)
def test_the_summary_for_the_user_gives_scores_after_1_and_all_steps(
    tmp_path, curve, expected
):
    overrides = ["task=omniglot", "eval.steps=10", "eval.objective=acc@step10"]
    config = typed(compose_config(overrides))
    summary = {"train/steps": 5, "objective": curve[-1], "perf/steps_per_s": 2.0}
    for step, score in enumerate(curve, start=1):
        summary |= {f"eval/acc@step{step}": score, f"eval/acc_ci95@step{step}": 0.02}
    lines = summary_lines(summary, config, tmp_path)
    scores = [line for line in lines if "adaptation step" in line]
    assert len(scores) == len(expected)
    for line, start in zip(scores, expected, strict=True):
        assert line.strip().startswith(f"acc {start}")
