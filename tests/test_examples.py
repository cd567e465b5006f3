"""The plain-Python example (examples/python_api.py) runs as documented."""

import math

import pytest
from helpers import REPO, load_script


@pytest.mark.slow  # a whole training run, as the example does it
def test_the_python_api_example_trains_and_scores(capsys):
    example = load_script(REPO / "examples" / "python_api.py", "python_api")
    summary = example.main(steps=50)
    out = capsys.readouterr().out
    assert out.startswith("50 ") and "MSE after 0 / 1 / 5 steps:" in out
    for step in range(6):
        assert math.isfinite(summary[f"eval/mse@step{step}"])
    assert summary["train/meta_loss"] > 0
    assert summary["perf/steps_per_s"] > 0
