"""The local report, the named sweeps (`sweep=<name>`) and sweeps through Hydra's
launcher and sweeper plugins."""

import csv
import io
import json
import math
import shutil
import statistics
import sys

import pytest
import yaml
from helpers import (
    QUICK,
    REPO,
    compose_config,
    options,
    read_json,
    read_runs,
    train_main,
)

from metalearn import report, rerun
from metalearn.config import typed
from metalearn.rundir import SUMMARY_FILE


def fake_job(root, number, overrides, summary=None, status=None, history=()):
    job = root / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    if status is not None:
        (job / "status.json").write_text(json.dumps({"state": status}))
    with open(job / "history.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 9')  # a line cut short by a killed job
    return job


def scores(step1, steps_per_s=100.0):
    return {
        **{f"eval/mse@step{i}": 1.0 / (i + 1) for i in range(11)},
        "eval/mse@step1": step1,
        "perf/steps_per_s": steps_per_s,
    }


# --- the report -----------------------------------------------------------------


def test_report_averages_over_seeds_and_marks_failed_and_unfinished_jobs(tmp_path):
    history = [
        {"step": 5, "train/meta_loss": 2.0},
        {"step": 10, "train/meta_loss": 1.0},
    ]
    for seed, value in enumerate([0.1, 0.2, 0.3]):
        fake_job(
            tmp_path,
            seed,
            ["algo=maml", f"seed={seed}"],
            scores(value),
            history=history,
        )
    fake_job(tmp_path, 3, ["algo=sgd", "seed=0"], scores(0.5), history=history)
    fake_job(tmp_path, 4, ["algo=sgd", "seed=1"], status="failed")
    fake_job(tmp_path, 5, ["algo=sgd", "seed=2"], status="running")

    report.main([str(tmp_path)])

    header, maml, sgd = list(csv.reader((tmp_path / "report.csv").open()))
    assert header[:3] == ["algo", "jobs", "status"]
    assert maml[:3] == ["maml", "3/3", "ok"]
    # mean 0.2, CI = t(2) * std / sqrt(3) = 4.303 * 0.1 / sqrt(3)
    expected_ci = 4.303 * 0.1 / math.sqrt(3)
    assert maml[header.index("mse@step1")] == f"0.2 ± {expected_ci:.2g}"
    assert sgd[:2] == ["sgd", "1/3"]
    assert "4:failed" in sgd[2] and "5:unfinished" in sgd[2]
    assert sgd[header.index("mse@step1")] == "0.5"  # one finished seed: no CI
    assert "| maml | 3/3 | ok |" in (tmp_path / "report.md").read_text()
    for figure in ("adaptation.png", "meta_loss.png"):
        assert (tmp_path / figure).read_bytes()[:4] == b"\x89PNG"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_report_shows_progress_bars_on_a_terminal_only(
    tmp_path, capsys, monkeypatch, terminal
):
    for seed in range(3):
        fake_job(tmp_path, seed, ["algo=maml", f"seed={seed}"], scores(0.1))
    if terminal:
        monkeypatch.setattr("sys.stderr", Terminal())
    report.main([str(tmp_path)])
    shown = sys.stderr.getvalue() if terminal else capsys.readouterr().err
    if terminal:
        assert "reading jobs" in shown and "0/3" in shown  # its total: 3 jobs
        assert "drawing figures" in shown
    else:
        assert shown == ""  # nothing beyond the report itself when piped


def test_report_trusts_status_over_a_stale_summary_and_adds_over_keys(tmp_path):
    for seed in (0, 1):
        for batch in (1, 4):
            number = 2 * seed + (batch == 4)
            overrides = ["algo=maml", f"outer.batch={batch}", f"seed={seed}"]
            fake_job(tmp_path, number, overrides, scores(0.1 * (number + 1)))
    (tmp_path / "3" / "status.json").write_text(json.dumps({"state": "running"}))
    fake_job(
        tmp_path, 4, ["algo=sgd", "outer.batch=1", "seed=0", "~eval.every"], scores(1.0)
    )

    groups = report.group_jobs(report.find_jobs(tmp_path), over=["seed", "outer.batch"])
    assert [g.label for g in groups] == [
        {"algo": "maml"},
        {"algo": "sgd", "eval.every": ""},  # ~eval.every: a delete override
    ]
    assert [j.status for j in groups[0].jobs] == ["finished"] * 3 + ["unfinished"]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda job: (job / SUMMARY_FILE).write_text("{not json"), "unreadable: "),
        (
            lambda job: (job / ".hydra" / "overrides.yaml").write_text("[a: b"),
            "unreadable: ",
        ),
        (
            lambda job: (job / "status.json").write_text('{"state": "dancing"}'),
            "unreadable: bad status.json",
        ),
    ],
    ids=["summary", "overrides", "status"],
)
def test_report_lists_an_unreadable_job_and_reports_the_rest(tmp_path, damage, reason):
    for seed in (0, 1):
        fake_job(tmp_path, seed, ["algo=maml", f"seed={seed}"], scores(0.2))
    damage(fake_job(tmp_path, 2, ["algo=sgd", "seed=0"], scores(0.5)))

    groups = report.write_report(tmp_path)
    jobs = {job.path.name: job for group in groups for job in group.jobs}
    assert set(jobs) == {"0", "1"} and len(groups[0].finished) == 2
    text = (tmp_path / "report.md").read_text()
    assert "Jobs that could not be read (1):" in text
    (line,) = [line for line in text.splitlines() if line.startswith("- `")]
    assert line.startswith(f"- `{tmp_path / '2'}`: {reason}")


def test_ci_uses_a_t_quantile_no_smaller_than_the_true_one():
    values = [float(i) for i in range(12)]  # 11 degrees of freedom: t = 2.201
    _, ci = report.mean_ci(values)
    assert ci >= 2.201 * statistics.stdev(values) / math.sqrt(12)


@pytest.mark.parametrize(
    "curves, expected",
    [
        # same steps: their means, a t band (values 1 and 3: 12.706 * 1.414 / 1.414)
        ([{1: 1.0, 2: 2.0}, {1: 3.0, 2: 2.0}], ([1, 2], [2.0, 2.0], [12.706, 0.0])),
        # budget-stopped at 7 and 9: steps both logged, then their last values at 8
        (
            [{1: 1.0, 7: 5.0}, {1: 1.0, 5: 2.0, 9: 3.0}],
            ([1, 8], [1.0, 4.0], [0.0, 12.706]),
        ),
        ([{3: 2.0, 5: 4.0}], ([3, 5], [2.0, 4.0], [0.0, 0.0])),  # one run: no band
        ([{3: 2.0}, {4: 6.0}], ([3.5], [4.0], [25.412])),  # no common step
    ],
)
def test_seed_mean_averages_runs_at_shared_steps_then_at_their_ends(curves, expected):
    xs, means, cis = report.seed_mean(curves)
    assert xs == pytest.approx(expected[0]) and means == pytest.approx(expected[1])
    assert cis == pytest.approx(expected[2], abs=1e-3)


def test_report_refuses_a_dir_without_jobs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report.main([str(tmp_path)])
    assert "no Hydra jobs" in capsys.readouterr().err


# --- named sweeps ---------------------------------------------------------------


def first_job(sweep: str) -> list[str]:
    """The overrides of a named sweep's first job (a grid's first values)."""
    hydra = compose_config([f"sweep={sweep}"], return_hydra_config=True).hydra
    params = hydra.sweeper.params or {}
    return [
        f"{key}={str(value).split(',')[0]}"
        for key, value in params.items()
        if "(" not in str(value)  # an Optuna search space, not a grid
    ]


@pytest.mark.parametrize("sweep", options("sweep"))
def test_every_named_sweep_composes_and_its_first_job_is_a_valid_config(sweep):
    overrides = [f"sweep={sweep}", *first_job(sweep)]
    config = typed(compose_config(overrides))
    hydra = compose_config(overrides, return_hydra_config=True).hydra
    assert f"multirun/{sweep}/" in hydra.sweep.dir
    assert config.outer.steps >= 1


@pytest.mark.parametrize(
    "overrides, direction",
    [
        ([], "minimize"),
        (["experiment=maml_paper_sinusoid"], "minimize"),
        (["task=omniglot"], "maximize"),
        (["task=omniglot", "eval.objective=loss@step5"], "minimize"),
    ],
)
def test_tune_lrs_is_an_optuna_search_in_the_objectives_direction(overrides, direction):
    cfg = compose_config(["sweep=tune_lrs", *overrides], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == direction
    assert set(sweeper.params) == {"inner.lr", "outer.lr"}


@pytest.mark.slow
def test_the_comparison_sweep_runs_and_reports(tmp_path):
    sweep = tmp_path / "compare"
    code = train_main(
        "-m", "sweep=compare", "experiment=tutorial", "variant=maml_b4,sgd",
        "seed=0,1", *QUICK, "outer.steps=20", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert code == 0
    runs = read_runs(sweep)
    assert sorted(r.job_type for r in runs) == ["maml", "maml", "sgd", "sgd"]
    assert len({r.group for r in runs}) == 1
    assert {r.config["outer"]["steps"] for r in runs} == {20}  # the command line wins

    groups = report.write_report(sweep)
    assert [g.label for g in groups] == [{"variant": "maml_b4"}, {"variant": "sgd"}]
    assert all(len(g.finished) == 2 for g in groups)
    sgd_summary = groups[1].finished[0].summary
    assert "eval/mse@step100" in sgd_summary  # baselines are scored to 100 steps
    assert (sweep / "report.md").exists() and (sweep / "adaptation.png").exists()


# --- Hydra's plugins ------------------------------------------------------------


def objectives(sweep_dir):
    return [
        read_json(path)["objective"]
        for path in sorted(sweep_dir.glob("*/summary.json"))
    ]


@pytest.mark.slow
def test_optuna_sweep_minimises_the_returned_objective(tmp_path):
    sweep = tmp_path / "optuna"
    code = train_main(
        "-m", "sweep=tune_lrs", "hydra.sweeper.n_trials=2", *QUICK, "logger=none",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert code == 0
    values = objectives(sweep)
    assert len(values) == 2
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(values))
    assert set(results["best_params"]) == {"inner.lr", "outer.lr"}


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_two_processes(tmp_path):
    sweep = tmp_path / "joblib"
    code = train_main(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "inner.lr=0.01,0.1",
        *QUICK, "logger=none", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert code == 0 and len(objectives(sweep)) == 2


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_job(tmp_path):
    sweep = tmp_path / "submitit"
    code = train_main(
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
        "seed=0", *QUICK, "logger=none", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert code == 0 and len(objectives(sweep)) == 1
    assert (sweep / ".submitit").is_dir()


def test_submitit_slurm_launcher_config_composes():
    cfg = compose_config(
        ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"],
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.timeout_min > 0


# --- finishing a sweep whose jobs were killed -------------------------------------


def fake_multirun(sweep_dir, task, params=None, sweeper=rerun.BASIC_SWEEPER):
    hydra = {
        "sweeper": {"_target_": sweeper, "max_batch_size": None, "params": params},
        "sweep": {"dir": str(sweep_dir), "subdir": "${hydra.job.num}"},
        "overrides": {"hydra": [], "task": task},
        "runtime": {"cwd": str(REPO)},
    }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))


def test_rerun_runs_only_the_jobs_that_did_not_finish_with_their_overrides(
    tmp_path, capsys
):
    sweep = tmp_path / "multirun" / "2026-12-01" / "10-00-00"
    fake_multirun(sweep, ["inner.lr=0.01,0.1", "logger=none"], {"seed": "0,1"})
    fake_job(sweep, 0, [], status="finished")
    fake_job(sweep, 2, [], status="failed")  # job 1: killed before it began
    fake_job(sweep, 3, [], status="finished")
    assert rerun.main([str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 of 4 job(s) finished" in out
    jobs = [line for line in out.splitlines() if line.startswith("job ")]
    assert jobs == [
        f"job 1: {REPO / 'train.py'} seed=0 inner.lr=0.1 logger=none "
        f"hydra.run.dir={sweep / '1'}",
        f"job 2: {REPO / 'train.py'} seed=1 inner.lr=0.01 logger=none "
        f"hydra.run.dir={sweep / '2'}",
    ]


def test_rerun_keeps_wandb_runs_in_the_sweeps_group(tmp_path):
    sweep = tmp_path / "multirun" / "2026-12-01" / "10-00-00"
    fake_multirun(sweep, ["inner.lr=0.01,0.1"])
    (command,) = [rerun.job_command(sweep, 1, ["inner.lr=0.1"], REPO / "train.py")]
    assert command[-1] == "logger.group=2026-12-01_10-00-00"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d.mkdir(), "not a multirun's dir: no multirun.yaml"),
        (
            lambda d: fake_multirun(d, ["seed=0,1"], sweeper="hydra_plugins.optuna"),
            "only the basic sweeper's grid can be rebuilt",
        ),
        (lambda d: fake_multirun(d, ["seed=0,1,"]), "cannot rebuild the grid"),
    ],
)
def test_rerun_refuses_what_it_cannot_rebuild(tmp_path, capsys, make, message):
    make(tmp_path / "sweep")
    assert rerun.main([str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow  # a multirun, then a fresh interpreter for the missing job
def test_a_sweep_with_a_killed_job_is_finished_by_rerun(tmp_path):
    sweep = tmp_path / "multirun" / "2026-12-01" / "10-00-00"
    grid = ["seed=0,1", *QUICK, f"hydra.sweep.dir={sweep}"]
    assert train_main("-m", *grid) == 0
    first = {r.run_id for r in read_runs(sweep / "0")}
    shutil.rmtree(sweep / "1")  # as if its worker was killed before it began
    assert rerun.main([str(sweep)]) == 0
    assert read_json(sweep / "1" / "status.json")["state"] == "finished"
    (again,) = read_runs(sweep / "1")
    assert again.group == "2026-12-01_10-00-00" and again.config["seed"] == 1
    assert {r.run_id for r in read_runs(sweep / "0")} == first  # left alone


# --- the report on W&B ----------------------------------------------------------


def test_report_wandb_logs_its_table_and_figures_to_a_report_run_in_the_group(
    tmp_path,
):
    sweep = tmp_path / "multirun" / "2026-12-01" / "11-00-00"
    history = [{"step": 5, "train/meta_loss": 2.0}, {"step": 10, "train/meta_loss": 1}]
    for seed, value in enumerate([0.1, 0.3]):
        fake_job(sweep, seed, ["algo=maml", f"seed={seed}"], scores(value), "finished",
                 history)  # fmt: skip
    report.main([str(sweep), "--wandb"])

    (run,) = read_runs(sweep)
    assert run.job_type == "report" and run.group == "2026-12-01_11-00-00"
    (row,) = run.history
    assert row["report/comparison/_type"] == "table-file"
    (files,) = sweep.glob("wandb/offline-run-*/files")
    table = json.loads((files / row["report/comparison/path"]).read_text())
    header, rows = list(csv.reader((sweep / "report.csv").open()))[0], table["data"]
    assert table["columns"] == header and rows[0][:2] == ["2/2", "ok"]
    for name in ("adaptation", "meta_loss"):
        assert row[f"report/{name}/_type"] == "image-file"


def test_the_dashboard_plots_keys_every_run_logs_and_needs_wandb_online(
    finished_run, capsys
):
    from metalearn import dashboard

    run_dir, _ = finished_run
    (wandb_run,) = read_runs(run_dir)
    logged = {key for row in wandb_run.history for key in row}
    headline, eval_steps = dashboard.sweep_facts(run_dir)
    assert (headline, eval_steps) == ("mse", 10)
    for keys in dashboard.panel_keys(headline, eval_steps).values():
        assert set(keys) <= logged
    view = dashboard.workspace("me", "metalearn", "g", headline, eval_steps)
    assert [len(section.panels) for section in view.sections] == [1, 2, 1, 1]
    assert wandb_run.config["algo"]["name"] == "maml"  # what the view groups by

    with pytest.raises(dashboard.DashboardError, match="upload them first"):
        dashboard.build(run_dir)  # these runs are offline
