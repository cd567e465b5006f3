"""Whole runs: outputs on disk, W&B offline files read back, the multirun command."""

import importlib.util
import json
import sys
from itertools import product

import pytest
from conftest import QUICK, REPO
from wandb_offline import find_runs, read_run

from metalearn.experiment import run

SUMMARY_KEYS = {
    "train/meta_loss",
    "perf/steps_per_s",
    "perf/compile_s",
    "objective",
    *(
        f"eval/mse{kind}@step{i}"
        for kind in ("", "_ci95", "_median")
        for i in range(11)
    ),
}


def load_train_py():
    spec = importlib.util.spec_from_file_location("train_entry", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_writes_summary_history_and_a_wandb_run(make_config, tmp_path):
    cfg = make_config(QUICK)
    summary = run(cfg, tmp_path, group="g", name="quick")

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk) == SUMMARY_KEYS
    assert on_disk == pytest.approx(summary)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").open()]
    assert [row["step"] for row in history] == [10, 20, 30, 40]
    assert "eval/mse@step1" in history[1] and "eval/mse@step1" not in history[0]
    assert all(row["train/meta_loss"] > 0 for row in history)

    (path,) = find_runs(tmp_path)
    wandb_run = read_run(path)
    assert (wandb_run.group, wandb_run.name, wandb_run.job_type) == (
        "g",
        "quick",
        "maml",
    )
    assert wandb_run.exit_code == 0
    assert wandb_run.config["inner"] == {"lr": 0.1, "steps": 1, "k": 20}
    assert wandb_run.config["outer"]["steps"] == 40
    assert [row["_step"] for row in wandb_run.history] == [10, 20, 30, 40]
    for key in ("eval/mse@step0", "eval/mse@step1", "eval/mse@step10"):
        assert wandb_run.summary[key] == pytest.approx(summary[key])


def test_logger_none_writes_local_files_only(make_config, tmp_path):
    run(make_config([*QUICK, "logger=none"]), tmp_path)
    assert (tmp_path / "summary.json").exists()
    assert not (tmp_path / "wandb").exists()


def test_same_seed_same_numbers_and_another_seed_differs(make_config, tmp_path):
    def numbers(seed, where):
        run(make_config([*QUICK, "logger=none", f"seed={seed}"]), where)
        summary = json.loads((where / "summary.json").read_text())
        return {k: v for k, v in summary.items() if not k.startswith("perf/")}

    first = numbers(0, tmp_path / "a")
    assert numbers(0, tmp_path / "b") == first
    assert numbers(1, tmp_path / "c") != first


def test_the_multirun_command_makes_four_wandb_runs_in_one_group(monkeypatch, tmp_path):
    train = load_train_py()
    sweep_dir = tmp_path / "multirun" / "2026-11-26" / "12-00-00.000001"
    argv = ["train.py", "-m", "inner.lr=0.01,0.1", "outer.batch=1,4", *QUICK]
    argv += [f"hydra.sweep.dir={sweep_dir}", "hydra/job_logging=disabled"]
    monkeypatch.setattr(sys, "argv", argv)
    train.main()

    runs = [read_run(path) for path in find_runs(sweep_dir)]
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
        assert (sweep_dir / str(job) / "summary.json").exists()
