"""The paper studies (studies/, run as scripts): checkpoints of finished runs,
figures, the results table, figures logged to W&B."""

import json
import sys

import jax
import numpy as np
import pytest
from helpers import QUICK, REPO, STUDIES, compose_config, python_script, read_runs

from metalearn.build import make_evaluation
from metalearn.experiment import run
from metalearn.trainer import init_train_state

sys.path.insert(0, str(STUDIES))  # the studies import each other as scripts do
import runs  # noqa: E402
import sinusoid  # noqa: E402

TINY = [*QUICK, "logger=none", "eval.extra_k=[10]"]


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_run")
    run(compose_config(["experiment=maml_paper_sinusoid", *TINY]), out)
    return runs.load_run(out)


def test_the_final_checkpoint_reproduces_the_final_evaluation(paper_run):
    parts, meta_params, model_state = runs.load_trained(paper_run)
    _, adapt_key = jax.random.split(jax.random.key(paper_run.config.seed))
    state = init_train_state(parts.algorithm, parts.optimizer, jax.random.key(0))
    state = state._replace(meta_params=meta_params, model_state=model_state)
    scores = make_evaluation(paper_run.config, parts, adapt_key)(state)
    for key in ("eval/mse@step0", "eval/mse@step1", "eval/mse_k10@step10"):
        assert scores[key] == pytest.approx(paper_run.summary[key], rel=1e-6)


def test_results_table_sits_beside_the_published_numbers(paper_run):
    table = sinusoid.results_table({"MAML": paper_run}, k=5)
    assert "| MAML |" in table and "step 0" in table
    assert "(paper 0.67)" in table and "(paper 0.35)" in table
    mean = paper_run.summary["eval/mse@step1"]
    assert f"{mean:.3g} ± " in table
    assert "paper" not in sinusoid.results_table({"MAML": paper_run}, k=10)
    with pytest.raises(ValueError, match="was not evaluated at K=20"):
        sinusoid.results_table({"MAML": paper_run}, k=20)


def test_figures_are_drawn(paper_run, tmp_path):
    labelled = {"MAML": paper_run}
    sinusoid.plot_fits(labelled, [5, 10], [0, 1], tmp_path / "fits.png", 4.0)
    sinusoid.plot_mse_vs_steps(labelled, [5], tmp_path / "mse.png")
    sinusoid.plot_meta_loss(labelled, tmp_path / "loss.png")
    for name in ("fits.png", "mse.png", "loss.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_adaptation_curves_match_the_algorithms_own_steps(paper_run):
    parts, meta_params, model_state = runs.load_trained(paper_run)
    inputs, targets, grid, _ = sinusoid.sinusoid_task(2.0, 0.3, 5, jax.random.key(0))
    curves = sinusoid.adaptation_curves(
        parts,
        meta_params,
        model_state,
        sinusoid.Support(inputs, targets),
        [0, 2],
        jax.random.key(1),
    )
    params, state = meta_params, model_state
    for _ in range(2):
        params, state = parts.algorithm.adapt_step(
            meta_params, params, state, inputs, targets
        )
    expected = parts.algorithm.predict(params, state, grid[:, None])[:, 0]
    np.testing.assert_allclose(curves[2], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(curves[0], curves[2])


def test_figures_are_logged_to_the_runs_wandb_run(tmp_path):
    run(compose_config(QUICK), tmp_path)
    loaded = runs.load_run(tmp_path)
    sinusoid.plot_meta_loss({"MAML": loaded}, tmp_path / "loss.png")

    assert runs.attach_figures(loaded, {"loss": tmp_path / "loss.png"})
    found = read_runs(tmp_path)
    assert len({r.run_id for r in found}) == 1 and len(found) == 2
    logged = [row for r in found for row in r.history if "figures/loss/_type" in row]
    assert [row["figures/loss/_type"] for row in logged] == ["image-file"]
    assert logged[0]["_step"] == 40  # at the run's last step, so W&B keeps it


def test_a_run_without_wandb_has_nothing_to_attach_to(paper_run, tmp_path):
    assert not runs.attach_figures(paper_run, {"loss": tmp_path / "loss.png"})


@pytest.mark.slow
def test_paper_script_runs_the_maml_study_and_writes_figures_and_table(tmp_path):
    result = python_script(
        "studies/paper.py", "maml", "--out", str(tmp_path / "fig"),
        "--sweep-dir", str(tmp_path / "sweep"), *QUICK, "logger=none",
        timeout=900,
    )  # fmt: skip
    for name in (
        "maml_fig2_fits.png",
        "maml_fig3_mse_vs_steps.png",
        "maml_paper_table.md",
    ):
        assert (tmp_path / "fig" / name).exists()
    assert "(paper 2.41)" in result.stdout and "SGD retraining" in result.stdout


def budget_run(run_dir, steps: int, acc_at_3: float, first_order=True):
    """A finished run as `studies/omniglot_budget.py` reads it (no training)."""
    run_dir.mkdir()
    summary = {"train/steps": steps, "train/seconds": 900.0}
    for step in range(11):
        summary[f"eval/acc@step{step}"] = 0.2 + 0.07 * step
        summary[f"eval/acc_ci95@step{step}"] = 0.01
    summary["eval/acc@step3"] = acc_at_3
    config = {
        "task": {"ways": 5, "loss_scale": "mean"},
        "inner": {"k": 1, "lr": 0.4},
        "outer": {"lr": 0.003},
        "algo": {"first_order": first_order},
        "eval": {"objective": "acc@step3"},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "config.json").write_text(json.dumps(config))


def test_the_budget_table_reports_steps_speed_and_accuracy_with_cis(tmp_path):
    import omniglot_budget

    budget_run(tmp_path / "fo5w1s", 3000, 0.41)
    header, rule, row = omniglot_budget.table(tmp_path).splitlines()
    assert row == (
        "| fo5w1s | 5w1s | first | mean | 0.4 | 0.003 | 3,000 | 3.33 | 20.0 ± 1.0 "
        "| 41.0 ± 1.0 (step 3) | 90.0 ± 1.0 |"
    )


def test_the_budget_table_gives_seeds_a_t_interval_and_pairs_mamlpp_with_maml(
    tmp_path,
):
    import omniglot_budget

    for seed, (plain, mamlpp) in enumerate([(0.95, 0.97), (0.96, 0.96), (0.94, 0.98)]):
        suffix = f"_seed{seed}" if seed else ""
        budget_run(tmp_path / f"so5w1s{suffix}", 2000 + seed, plain, False)
        budget_run(tmp_path / f"mamlpp5w1s{suffix}", 2500, mamlpp, False)
    budget_run(tmp_path / "not_a_study_run", 10, 0.5)
    lines = omniglot_budget.table(tmp_path).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:8]] == [
        "| so5w1s", "| so5w1s_seed1", "| so5w1s_seed2",
        "| mamlpp5w1s", "| mamlpp5w1s_seed1", "| mamlpp5w1s_seed2",
    ]  # fmt: skip
    # mean 95.0, sample sd 1.0: 4.30 * 1 / sqrt(3) = 2.48
    assert "| so5w1s | 0, 1, 2 | 2,000–2,002 | 95.0 ± 2.5 (95.0, 96.0, 94.0) |" in lines
    assert "| mamlpp5w1s | 0, 1, 2 | 2,500–2,500 | 97.0 ± 2.5 (97.0, 96.0, 98.0) |" in (
        lines
    )
    # differences +2, 0, +4: mean +2.0, sd 2.0, 4.30 * 2 / sqrt(3) = 4.97
    assert lines[-1] == (
        "MAML++ options minus plain MAML, paired by seed (0, 1, 2): "
        "+2.0 ± 5.0 (+2.0, +0.0, +4.0) points."
    )


def test_the_budget_table_goes_beside_its_runs_unless_out_names_a_folder(
    tmp_path, monkeypatch
):
    """A run of a few budget settings in a fresh folder must not replace the docs'
    table of every run with its own few rows, nor write an empty table."""
    import omniglot_budget

    # a default that still pointed into the repo would point here instead
    monkeypatch.setattr(omniglot_budget, "REPO", tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    argv = ["omniglot_budget.py", "--tabulate-only", "--runs", str(runs)]
    monkeypatch.setattr(sys, "argv", argv)
    assert omniglot_budget.main() == 1  # no finished runs: nothing written
    assert list(tmp_path.rglob("*.md")) == []
    budget_run(runs / "fo5w1s", 3000, 0.41)
    assert omniglot_budget.main() == 0
    assert "| fo5w1s | 5w1s |" in (runs / "omniglot_budget.md").read_text()
    assert not (tmp_path / "docs").exists()
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "figures")])
    assert omniglot_budget.main() == 0
    assert (tmp_path / "figures" / "omniglot_budget.md").read_text() == (
        runs / "omniglot_budget.md"
    ).read_text()


def table1_run(ways: int, k: int, first_order: bool, acc: float, seed: int):
    """A finished run as the Table 1 studies read it (no training needed)."""
    from types import SimpleNamespace as Namespace

    config = Namespace(
        task=Namespace(ways=ways),
        inner=Namespace(k=k),
        algo=Namespace(first_order=first_order),
        eval=Namespace(objective="acc@step10", steps=10),
        seed=seed,
    )
    summary = {"train/steps": 500, "train/seconds": 90.0}
    for step in range(11):
        summary[f"eval/acc@step{step}"] = acc
        summary[f"eval/acc_ci95@step{step}"] = 0.02
    return runs.Run(REPO, config, summary, [])


def test_table1_rows_sit_beside_the_papers_numbers():
    import omniglot

    grouped = {
        ("maml", "5w1s"): [
            table1_run(5, 1, False, a, s) for s, a in [(0, 0.5), (1, 0.4)]
        ],
        ("fomaml", "5w5s"): [table1_run(5, 5, True, 0.6, 0)],
    }
    rows = omniglot.results_table(grouped, "mini_imagenet").splitlines()[2:]
    assert rows[0] == (
        "| 5w1s | MAML | 45.0 ± 2.0 (seeds 50.0, 40.0) (step 10) "
        "| 45.0 ± 2.0 (seeds 50.0, 40.0) (step 10) | 48.70 ± 1.84 | 500 | 1.5 | 2 |"
    )
    assert "| 5w5s | first-order MAML | 60.0 ± 2.0 (step 10) " in rows[1]
    assert "| 63.15 ± 0.91 |" in rows[1]
    omniglot_rows = omniglot.results_table(grouped, "omniglot").splitlines()[2:]
    assert "| 98.7 ± 0.4 |" in omniglot_rows[0] and "| 99.2 ± 0.2 |" in omniglot_rows[1]


@pytest.mark.slow  # a 6-job Omniglot sweep (~2 min)
def test_the_omniglot_comparison_runs_and_tabulates(tmp_path, omniglot_root):
    tiny = ["task.image_size=14", "model.filters=8", "outer.steps=4"]
    tiny += ["train.log_every=2", "eval.num_tasks=6", "eval.steps=2", "logger=none"]
    tiny += ["eval.objective=acc@step2", "eval.figures=false", "train.max_minutes=null"]
    python_script(
        STUDIES / "paper.py",
        "compare_omniglot",
        "--sweep-dir",
        str(tmp_path / "sweep"),
        "--out",
        str(tmp_path / "figures"),
        "experiment=maml_paper_omniglot_5w1s",
        "variant=maml,mamlpp,protonet",
        "seed=0,1",
        f"data.root={omniglot_root}",
        *tiny,
        timeout=600,
    )
    table = (tmp_path / "figures" / "omniglot_compare_table1.md").read_text()
    rows = table.splitlines()[2:]
    methods = [row.split(" | ")[1] for row in rows]
    assert methods == ["MAML", "MAML++", "Prototypical Networks"]
    assert all("| 4 |" in row and row.endswith("| 2 |") for row in rows)
    assert "| 99.47 |" in rows[1] and "| 98.8 |" in rows[2]  # the papers' numbers
    for figure in ("acc_vs_steps", "learning_curve"):
        assert (tmp_path / "figures" / f"omniglot_compare_{figure}.png").is_file()


def test_comparison_panels_average_seeds_per_setting():
    import omniglot

    def with_history(run, accs):
        rows = [{"step": 100 * (i + 1), "train/acc": a} for i, a in enumerate(accs)]
        return run._replace(history=rows)

    grouped = {
        ("maml", "20w1s"): [
            with_history(table1_run(20, 1, False, 0.5, 0), [0.1, 0.3]),
            with_history(table1_run(20, 1, False, 0.7, 1), [0.2]),
        ],
        ("sgd", "5w1s"): [with_history(table1_run(5, 1, False, 0.4, 0), [0.2])],
    }
    adaptation = omniglot.setting_panels(
        grouped, omniglot.adaptation_points, omniglot.METHODS
    )
    assert list(adaptation) == ["Omniglot 5w1s", "Omniglot 20w1s"]
    xs, means, cis = adaptation["Omniglot 20w1s"]["MAML"]
    assert xs == list(range(11)) and means == pytest.approx([60.0] * 11)
    # two seeds, 50 and 70: t(1 dof) 12.706 * sd 14.14 / sqrt(2) = 127.06
    assert cis == pytest.approx([127.06] * 11, abs=0.01)
    assert adaptation["Omniglot 5w1s"]["SGD from scratch"][1] == pytest.approx(
        [40.0] * 11
    )
    training = omniglot.setting_panels(
        grouped, omniglot.training_points, omniglot.EPISODIC
    )
    assert training["Omniglot 5w1s"] == {}  # SGD's training accuracy is not drawn
    # step 200 only seed 0 reached: the last point is both seeds' last values (30
    # at step 200, 20 at step 100) at their mean last step, 150
    assert training["Omniglot 20w1s"]["MAML"] == (
        [100, 150],
        pytest.approx([15.0, 25.0]),
        pytest.approx([63.53, 63.53], abs=0.01),
    )
