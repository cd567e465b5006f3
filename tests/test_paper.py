"""Paper-curve tooling: checkpoints of finished runs, figures, the results table."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import QUICK, REPO

from metalearn import paper
from metalearn.experiment import make_evaluation, run

TINY = [*QUICK, "logger=none", "eval.extra_k=[10]"]


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    out = tmp_path_factory.mktemp("paper_run")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=maml_paper_sinusoid", *TINY])
    run(cfg, out)
    (out / ".hydra").mkdir()
    (out / ".hydra" / "config.yaml").write_text(
        __import__("omegaconf").OmegaConf.to_yaml(cfg)
    )
    return paper.load_run(out)


def test_the_final_checkpoint_reproduces_the_final_evaluation(paper_run):
    parts, meta_params, model_state = paper.load_trained(paper_run)
    evaluation = dict(paper_run.config["eval"])
    _, adapt_key = jax.random.split(jax.random.key(paper_run.config["seed"]))
    state = paper.init_train_state(parts.algorithm, parts.optimizer, jax.random.key(0))
    state = state._replace(meta_params=meta_params, model_state=model_state)
    scores = make_evaluation(parts, evaluation, adapt_key)(state)
    for key in ("eval/mse@step0", "eval/mse@step1", "eval/mse_k10@step10"):
        assert scores[key] == pytest.approx(paper_run.summary[key], rel=1e-6)


def test_results_table_sits_beside_the_published_numbers(paper_run):
    table = paper.results_table({"MAML": paper_run}, k=5)
    assert "| MAML |" in table and "step 0" in table
    assert "(paper 0.67)" in table and "(paper 0.35)" in table
    mean = paper_run.summary["eval/mse@step1"]
    assert f"{mean:.3g} ± " in table
    assert "paper" not in paper.results_table({"MAML": paper_run}, k=10)


def test_figures_are_drawn(paper_run, tmp_path):
    runs = {"MAML": paper_run}
    paper.plot_fits(runs, [5, 10], [0, 1, 10], tmp_path / "fits.png", amplitude=4.0)
    paper.plot_mse_vs_steps(runs, [5, 10], tmp_path / "mse.png")
    paper.plot_meta_loss(runs, tmp_path / "loss.png")
    for name in ("fits.png", "mse.png", "loss.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_adaptation_curves_match_the_algorithms_own_steps(paper_run):
    parts, meta_params, model_state = paper.load_trained(paper_run)
    inputs, targets, grid, truth = paper.sinusoid_task(2.0, 0.3, 5, jax.random.key(0))
    curves = paper.adaptation_curves(
        parts,
        meta_params,
        model_state,
        paper.Support(inputs, targets),
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


@pytest.mark.slow
def test_paper_script_runs_the_maml_study_and_writes_figures_and_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "sweeps/paper.py", "maml", "--out", str(tmp_path / "fig")]
        + ["--sweep-dir", str(tmp_path / "sweep"), *QUICK, "logger=none"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in (
        "maml_fig2_fits.png",
        "maml_fig3_mse_vs_steps.png",
        "maml_paper_table.md",
    ):
        assert (tmp_path / "fig" / name).exists()
    assert "(paper 2.41)" in result.stdout and "SGD retraining" in result.stdout


def test_figures_are_logged_to_the_runs_wandb_run(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from wandb_offline import find_runs, read_run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*QUICK])
    run(cfg, tmp_path)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    loaded = paper.load_run(tmp_path)
    paper.plot_meta_loss({"MAML": loaded}, tmp_path / "loss.png")

    assert paper.attach_figures(loaded, {"loss": tmp_path / "loss.png"})
    runs = [read_run(path) for path in find_runs(tmp_path)]
    assert len({r.run_id for r in runs}) == 1 and len(runs) == 2
    logged = [row for r in runs for row in r.history if "figures/loss/_type" in row]
    assert [row["figures/loss/_type"] for row in logged] == ["image-file"]
    assert logged[0]["_step"] == 40  # at the run's last step, so W&B keeps it
