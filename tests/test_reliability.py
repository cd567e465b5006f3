"""Resume, preemption, the NaN guard, hostile inputs and sweeps with failures."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import QUICK, REPO
from test_checkpoints import ALGORITHM, OPTIMIZER, leaves
from wandb_offline import find_runs, read_run

from metalearn.checkpoints import Checkpointer
from metalearn.experiment import CHECKPOINT_DIR, build
from metalearn.trainer import NonFiniteError, Schedule, fit, init_train_state


def train_py(*overrides, check=True, timeout=300):
    result = subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_state(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    parts = build(config)
    template = init_train_state(parts.algorithm, parts.optimizer, jax.random.key(0))
    return Checkpointer(run_dir / CHECKPOINT_DIR).restore(template)[0]


def without_timing(summary_path):
    summary = json.loads(summary_path.read_text())
    return {k: v for k, v in summary.items() if not k.startswith("perf/")}


BASE = [*QUICK, "outer.steps=60", "checkpoint.every=20", "eval.every=30"]


def test_a_run_stopped_mid_window_and_resumed_matches_an_uninterrupted_one(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_py(*BASE, "logger=none", f"hydra.run.dir={whole}")
    # stops at step 35: inside the 30-40 window, off the checkpoint grid
    train_py(*BASE, "logger=none", "outer.steps=35", f"hydra.run.dir={parts}")
    train_py(f"resume={parts}", "outer.steps=60")

    for got, want in zip(
        leaves(final_state(parts)), leaves(final_state(whole)), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    assert without_timing(parts / "summary.json") == without_timing(
        whole / "summary.json"
    )
    steps = [json.loads(line)["step"] for line in (parts / "history.jsonl").open()]
    assert steps == sorted(steps) and steps[-1] == 60


def test_sigterm_checkpoints_and_resume_continues_the_same_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    slow = ["outer.steps=8000", "outer.batch=25", "train.log_every=100"]
    slow += ["eval.num_tasks=20", "checkpoint.every=100000"]
    process = subprocess.Popen(
        [sys.executable, "train.py", *slow, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    history = run_dir / "history.jsonl"
    deadline = time.time() + 120
    while not (history.exists() and history.read_text().strip()):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 3
    assert "Interrupted: stopped at meta-step" in stderr and "Traceback" not in stderr
    assert f"resume={run_dir}" in stderr
    assert json.loads((run_dir / "status.json").read_text())["state"] == "preempted"
    stopped_at = Checkpointer(run_dir / CHECKPOINT_DIR).latest_step()
    assert 0 < stopped_at < 8000
    (first,) = [read_run(p) for p in find_runs(run_dir)]
    assert first.exit_code == 3

    train_py(f"resume={run_dir}")
    runs = [read_run(p) for p in find_runs(run_dir)]
    assert len(runs) == 2 and {r.run_id for r in runs} == {first.run_id}
    resumed = next(r for r in runs if r.exit_code == 0)
    assert resumed.history[0]["_step"] > stopped_at
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    assert int(final_state(run_dir).step) == 8000


def test_resume_refuses_changes_to_the_maths_and_dirs_without_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    train_py(*QUICK, "logger=none", f"hydra.run.dir={run_dir}")
    changed = train_py(f"resume={run_dir}", "inner.lr=0.5", check=False)
    assert (
        changed.returncode == 2
        and "inner.lr=0.5 is not allowed with resume=" in changed.stderr
    )
    (tmp_path / "died" / CHECKPOINT_DIR).mkdir(parents=True)  # died before a save
    (tmp_path / "died" / "config.json").write_text("{}")
    died = train_py(f"resume={tmp_path / 'died'}", check=False)
    assert died.returncode == 2 and "must be the output dir of a run" in died.stderr
    preset = train_py(f"resume={run_dir}", "variant=sgd", check=False)
    assert preset.returncode == 2 and "variant=sgd is not allowed" in preset.stderr
    empty = train_py(f"resume={tmp_path / 'nothing'}", check=False)
    assert empty.returncode == 2 and "must be the output dir of a run" in empty.stderr
    for result in (changed, empty):
        assert "Traceback" not in result.stderr


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    calls = []

    class Exploding:
        """A train window whose third call returns NaN parameters."""

        def lower(self, state, num_steps):
            return self

        def compile(self):
            return self

        def __call__(self, state, num_steps):
            calls.append(int(num_steps))
            bad = len(calls) == 3
            params = jax.tree.map(
                lambda p: p * jnp.nan if bad else p, state.meta_params
            )
            state = state._replace(meta_params=params, step=state.step + num_steps)
            return state, {
                "train/meta_loss": jnp.nan if bad else 1.0,
                "finite": not bad,
            }

    state = init_train_state(ALGORITHM, OPTIMIZER, jax.random.key(0))
    with pytest.raises(NonFiniteError, match="between meta-steps 20 and 30"):
        fit(
            state,
            Exploding(),
            Schedule(50, 10, 0, 10),
            evaluate=lambda s: {},
            on_metrics=lambda step, metrics: None,
            checkpoint=lambda s: checkpointer.save(s, {}),
        )
    assert checkpointer.latest_step() == 20


def test_train_py_reports_a_diverging_run_without_a_traceback(tmp_path):
    result = train_py(
        *QUICK, "optimizer=sgd", "outer.lr=1e12", "logger=none",
        f"hydra.run.dir={tmp_path}", check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "became NaN or infinite between meta-steps" in result.stderr
    assert "lower outer.lr" in result.stderr and "Traceback" not in result.stderr
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "failed"
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("task=nope", "Could not find 'task/nope'"),
        ("model=nope", "Could not find 'model/nope'"),
        ("outer.lr=abc", "could not be converted to Float"),
        ("outer.lr=0", "outer.lr=0.0 is not allowed"),
        ("inner.lr=-0.1", "inner.lr=-0.1 is not allowed"),
        ("hydra.run.dir=/etc/hostname/run", "cannot write the output dir"),
    ],
)
def test_more_hostile_inputs_fail_early_and_cleanly(override, message, tmp_path):
    overrides = (
        [override]
        if "hydra.run.dir" in override
        else [override, f"hydra.run.dir={tmp_path}/run"]
    )
    result = train_py(*overrides, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_multirun_goes_on_past_failed_jobs_and_the_report_marks_them(tmp_path):
    sweep = tmp_path / "sweep"
    result = train_py(
        "-m", "optimizer=sgd", "outer.lr=-1,1e12,0.001", *QUICK,
        f"hydra.sweep.dir={sweep}", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    states = [
        json.loads((sweep / str(i) / "status.json").read_text())["state"]
        for i in range(3)
    ]
    assert states == ["failed", "failed", "finished"]
    runs = {read_run(p).config["outer"]["lr"]: read_run(p) for p in find_runs(sweep)}
    assert runs[1e12].exit_code == 1 and runs[0.001].exit_code == 0
    assert -1 not in runs  # rejected before a W&B run started

    from metalearn import report

    groups = report.write_report(sweep)
    assert [len(g.finished) for g in groups] == [0, 0, 1]
    assert "0:failed" in (sweep / "report.md").read_text()


def test_resuming_a_finished_run_rescores_it_and_refuses_to_go_backwards(tmp_path):
    run_dir = tmp_path / "run"
    train_py(*QUICK, "logger=none", f"hydra.run.dir={run_dir}")
    before = without_timing(run_dir / "summary.json")
    train_py(f"resume={run_dir}")  # already at its last step: nothing to train
    assert without_timing(run_dir / "summary.json") == before
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    shorter = train_py(f"resume={run_dir}", "outer.steps=20", check=False)
    assert shorter.returncode == 2 and "already at step 40" in shorter.stderr


@pytest.mark.slow
def test_extending_a_run_on_resume_is_remembered_for_the_next_resume(tmp_path):
    run_dir = tmp_path / "run"
    train_py(*QUICK, "logger=none", f"hydra.run.dir={run_dir}")
    train_py(f"resume={run_dir}", "outer.steps=60")
    assert json.loads((run_dir / "config.json").read_text())["outer"]["steps"] == 60
    train_py(f"resume={run_dir}")  # a later resume keeps the extension
    assert int(final_state(run_dir).step) == 60


def test_resuming_a_run_saved_by_an_older_version(tmp_path):
    run_dir = tmp_path / "run"
    train_py(*QUICK, "logger=none", f"hydra.run.dir={run_dir}")
    # a key added to metalearn after the run started takes its default
    saved = json.loads((run_dir / "config.json").read_text())
    del saved["train"]["sample_ahead"]
    (run_dir / "config.json").write_text(json.dumps(saved))
    train_py(f"resume={run_dir}", "outer.steps=60")
    assert int(final_state(run_dir).step) == 60

    # a checkpoint whose state is laid out otherwise: a clear refusal, no traceback
    parts = build(json.loads((run_dir / "config.json").read_text()))
    per_array_adam = optax.adam(1e-3)  # one optimiser array per parameter array
    older = init_train_state(parts.algorithm, per_array_adam, jax.random.key(0))
    checkpointer = Checkpointer(run_dir / "older")
    checkpointer.save(older._replace(step=jnp.int32(60)), {})
    checkpointer.close()
    (run_dir / CHECKPOINT_DIR / "60").rename(tmp_path / "newer")
    (run_dir / "older" / "60").rename(run_dir / CHECKPOINT_DIR / "60")
    refused = train_py(f"resume={run_dir}", "outer.steps=80", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "laid out differently" in refused.stderr


def test_wandb_online_without_credentials_fails_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env |= {"HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    result = subprocess.run(
        [sys.executable, "train.py", *QUICK, "logger.mode=online"]
        + [f"hydra.run.dir={tmp_path}/run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "wandb login" in result.stderr and "logger.mode=offline" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed"
