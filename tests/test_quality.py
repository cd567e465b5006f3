"""Training quality of the shipped defaults (slow: whole runs)."""

import pytest
from helpers import read_json, train_py


@pytest.mark.slow
def test_default_train_py_matches_the_tutorials_batched_maml(tmp_path):
    # Tutorial-style reference: 0.0030-0.0035 after 1 step, 0.0004-0.0005 after 10.
    train_py("logger=none", f"hydra.run.dir={tmp_path}", timeout=900)
    summary = read_json(tmp_path / "summary.json")
    assert summary["eval/mse@step1"] <= 0.004
    assert summary["eval/mse@step10"] <= 0.0006
    assert summary["eval/mse@step0"] > 0.02  # ~E[A^2]/2-ish: no task leaks into step 0
