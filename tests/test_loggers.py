"""Loggers: local files always, W&B started in the background without losing or
reordering metrics, and failures that keep the error that ended a run."""

import errno
import json
import os
import threading

import pytest
from helpers import read_json

from metalearn import loggers, rundir
from metalearn.rundir import (
    HISTORY_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
    ExitCode,
    OutputError,
)


class FakeRun:
    def __init__(self):
        self.logged, self.summary, self.finished, self.defined = [], {}, None, []

    def define_metric(self, name, **options):
        self.defined.append(name)

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
    assert [(step, metrics["loss"]) for step, metrics in run.logged] == [
        (10, 1.0),
        (20, 2.0),
        (30, 3.0),
    ]
    assert run.summary == {"eval/mse": 0.5} and run.finished == 0
    # the run id is known at once (checkpoints record it) and is the one W&B got
    assert calls == [(wandb.run_id, None)] and len(wandb.run_id) == 8


def test_a_resumed_run_keeps_its_id(monkeypatch, tmp_path):
    calls = []

    def init(*args, **options):
        calls.append((args[4], options["resume"]))
        return FakeRun()

    monkeypatch.setattr(loggers, "_init_wandb", init)
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
    fanout.finish({}, exit_code=ExitCode.PREEMPTED)  # raises nothing
    assert "no W&B credentials" in capsys.readouterr().err
    assert read_json(tmp_path / STATUS_FILE)["state"] == "preempted"


@pytest.mark.parametrize(
    "exit_code, state, has_summary",
    [
        (ExitCode.OK, "finished", True),
        (ExitCode.FAILED, "failed", False),
        (ExitCode.PREEMPTED, "preempted", False),
    ],
)
def test_local_files_record_history_status_and_a_summary_only_on_success(
    tmp_path, exit_code, state, has_summary
):
    local = loggers.LocalFiles(tmp_path)
    assert read_json(tmp_path / STATUS_FILE)["state"] == "running"
    local.log({"train/meta_loss": 1.5}, 10)
    rows = [json.loads(line) for line in (tmp_path / HISTORY_FILE).open()]
    assert rows == [{"step": 10, "train/meta_loss": 1.5}]  # flushed at once
    local.finish({"objective": 0.1}, exit_code)
    assert read_json(tmp_path / STATUS_FILE)["state"] == state
    assert (tmp_path / SUMMARY_FILE).exists() is has_summary


@pytest.mark.parametrize("unwritable", [SUMMARY_FILE, STATUS_FILE])
def test_local_files_name_the_file_they_cannot_write(monkeypatch, tmp_path, unwritable):
    local = loggers.LocalFiles(tmp_path)
    write = rundir.write_text_atomically

    def write_or_fail(path, text):
        if path.name == unwritable:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, text)

    monkeypatch.setattr(rundir, "write_text_atomically", write_or_fail)
    with pytest.raises(OutputError) as raised:
        local.finish({"objective": 0.1}, ExitCode.OK)
    path = tmp_path / unwritable
    assert str(raised.value) == f"cannot write {path}: No space left on device"


def test_local_files_resumed_at_a_step_drop_later_rows_and_the_old_summary(tmp_path):
    (tmp_path / HISTORY_FILE).write_text(
        "".join(json.dumps({"step": s}) + "\n" for s in (10, 20, 30)) + '{"step": 4'
    )  # the last line cut short by a kill
    (tmp_path / SUMMARY_FILE).write_text("{}")
    local = loggers.LocalFiles(tmp_path, start_step=20)
    local.log({}, 25)
    local.finish({}, ExitCode.FAILED)
    steps = [json.loads(line)["step"] for line in (tmp_path / HISTORY_FILE).open()]
    assert steps == [10, 20, 25] and not (tmp_path / SUMMARY_FILE).exists()


def test_fanout_records_the_wandb_run_id_for_checkpoints(monkeypatch, tmp_path):
    monkeypatch.setattr(loggers, "_init_wandb", lambda *a, **k: FakeRun())
    wandb = start_wandb(tmp_path)
    assert loggers.Fanout([wandb]).resume_meta() == {loggers.WANDB_RUN_ID: wandb.run_id}
    assert loggers.Fanout([]).resume_meta() == {loggers.WANDB_RUN_ID: None}


@pytest.mark.parametrize(
    "mode, env, expected",
    [
        ("online", "disabled", "online"),
        (None, "disabled", "disabled"),
        (None, None, "offline"),
    ],
)
def test_wandb_mode_is_the_option_else_the_environment_else_offline(
    monkeypatch, mode, env, expected
):
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    assert loggers.wandb_mode(mode) == expected


def test_the_logger_group_chooses_wandb_or_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(loggers, "_init_wandb", lambda *a, **k: FakeRun())
    info = loggers.RunInfo(tmp_path, {}, "sweep", "run", "maml")
    assert loggers.LOGGERS.create("none", info) is None
    wandb = loggers.LOGGERS.create("wandb", info, project="q")
    assert isinstance(wandb, loggers.WandbRun)
    with pytest.raises(ValueError, match="mode=sometimes is not allowed"):
        loggers.LOGGERS.create("wandb", info, mode="sometimes")
