"""Loggers: W&B starts in the background without losing or reordering metrics."""

import threading

import pytest

from metalearn import loggers


class FakeRun:
    def __init__(self):
        self.logged, self.summary, self.finished = [], {}, None

    def log(self, metrics, step):
        self.logged.append((step, metrics))

    def finish(self, exit_code):
        self.finished = exit_code


def start_wandb(tmp_path, run_id=None):
    return loggers.WandbRun(
        tmp_path, "p", "offline", {}, None, None, "maml", run_id=run_id
    )


def test_metrics_logged_before_wandb_is_ready_arrive_in_order(monkeypatch, tmp_path):
    ready, run, calls = threading.Event(), FakeRun(), []

    def slow_init(output_dir, project, mode, entity, run_id, **options):
        calls.append((run_id, options["resume"]))
        ready.wait(timeout=10)
        return run

    monkeypatch.setattr(loggers, "_init_wandb", slow_init)
    wandb = start_wandb(tmp_path)
    for step in (10, 20, 30):
        wandb.log({"loss": step / 10}, step)
    assert run.logged == []  # still starting: kept, not dropped
    ready.set()
    wandb.finish({"eval/mse": 0.5}, exit_code=0)
    assert run.logged == [(10, {"loss": 1.0}), (20, {"loss": 2.0}), (30, {"loss": 3.0})]
    assert run.summary == {"eval/mse": 0.5} and run.finished == 0
    # the run id is known at once (checkpoints record it) and is the one W&B got
    assert calls == [(wandb.run_id, None)] and len(wandb.run_id) == 8


def test_a_resumed_run_keeps_its_id(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(
        loggers, "_init_wandb", lambda *a, **k: calls.append((a[4], k["resume"]))
    )
    wandb = start_wandb(tmp_path, run_id="abc12345")
    wandb.wait_started()
    assert wandb.run_id == "abc12345" and calls == [("abc12345", "allow")]


def test_a_failed_wandb_start_is_raised_not_swallowed(monkeypatch, tmp_path):
    def failing_init(*args, **options):
        raise RuntimeError("no W&B credentials")

    monkeypatch.setattr(loggers, "_init_wandb", failing_init)
    wandb = start_wandb(tmp_path)
    with pytest.raises(loggers.LoggerError, match="no W&B credentials"):
        wandb.finish({}, exit_code=0)


def test_a_failed_wandb_start_does_not_replace_the_error_that_ended_a_run(
    monkeypatch, tmp_path, capsys
):
    def failing_init(*args, **options):
        raise RuntimeError("no W&B credentials")

    monkeypatch.setattr(loggers, "_init_wandb", failing_init)
    local = loggers.LocalFiles(tmp_path)
    fanout = loggers.Fanout([local, start_wandb(tmp_path)])
    fanout.finish({}, exit_code=loggers.PREEMPTED_EXIT_CODE)  # raises nothing
    assert "no W&B credentials" in capsys.readouterr().err
    status = (tmp_path / loggers.STATUS_FILE).read_text()
    assert "preempted" in status
