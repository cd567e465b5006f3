"""Training quality of the shipped defaults (slow: whole runs)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_default_train_py_matches_the_tutorials_batched_maml(tmp_path):
    # Tutorial-style reference: 0.0030-0.0035 after 1 step, 0.0004-0.0005 after 10.
    subprocess.run(
        [sys.executable, "train.py", "logger=none", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        check=True,
        timeout=600,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval/mse@step1"] <= 0.004
    assert summary["eval/mse@step10"] <= 0.0006
    assert summary["eval/mse@step0"] > 0.02  # ~E[A^2]/2-ish: no task leaks into step 0
