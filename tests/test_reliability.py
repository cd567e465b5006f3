"""Resume, preemption, divergence, hostile inputs and sweeps with failed jobs, as
`python train.py` meets them (its `main()`, in this process unless a fresh
interpreter is the point)."""

import errno
import fcntl
import json
import logging
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    QUICK,
    REPO,
    final_state,
    leaves,
    read_json,
    read_runs,
    train_main,
    without_timing,
)

from metalearn import loggers, report, rundir
from metalearn.build import build
from metalearn.checkpoints import Checkpointer, damage
from metalearn.config import typed
from metalearn.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
    ExitCode,
    RunLock,
    checkpoint_steps,
    has_checkpoint,
)
from metalearn.trainer import init_train_state


def state_of(run_dir) -> str:
    return read_json(run_dir / STATUS_FILE)["state"]


def summary_of(run_dir) -> dict:
    return without_timing(read_json(run_dir / SUMMARY_FILE))


@pytest.fixture
def run_dir(finished_run, tmp_path):
    """A copy of the session's finished quick run (40 steps)."""
    return shutil.copytree(finished_run[0], tmp_path / "run")


# 60 meta-steps: windows of 10, checkpoints every 20, evaluations at 30 and 60
SIXTY = [*QUICK, "outer.steps=60", "checkpoint.every=20", "eval.every=30"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run dir of `SIXTY` run from start to end (shared: do not change it)."""
    whole = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert train_main(*SIXTY, "logger=none", f"hydra.run.dir={whole}") == 0
    return whole


def test_a_run_stopped_mid_window_and_resumed_matches_an_uninterrupted_one(
    uninterrupted, tmp_path
):
    parts = tmp_path / "parts"
    # stops at step 35: inside the 30-40 window, off the checkpoint grid
    assert (
        train_main(*SIXTY, "logger=none", "outer.steps=35", f"hydra.run.dir={parts}")
        == 0
    )
    assert train_main(f"resume={parts}", "outer.steps=60") == 0

    for got, want in zip(
        leaves(final_state(parts)), leaves(final_state(uninterrupted)), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    assert summary_of(parts) == summary_of(uninterrupted)
    steps = [json.loads(line)["step"] for line in (parts / HISTORY_FILE).open()]
    assert steps == sorted(steps) and steps[-1] == 60


def flip_a_bit(step_dir) -> None:
    """Flips one bit in the middle of the largest file of a checkpoint."""
    files = (path for path in step_dir.rglob("*") if path.is_file())
    largest = max(files, key=lambda path: path.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 1
    largest.write_bytes(bytes(data))


@pytest.mark.slow  # a SIGTERMed train.py and a resume: ~7 s cold
def test_a_preempted_run_whose_last_checkpoint_is_damaged_resumes_to_the_same_end(
    uninterrupted, tmp_path, monkeypatch, caplog
):
    run_dir = tmp_path / "run"
    save = Checkpointer.save

    def save_then_preempt(self, state, meta):
        save(self, state, meta)
        if int(state.step) == 40:  # the cluster preempts the job
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Checkpointer, "save", save_then_preempt)
    code = train_main(*SIXTY, "logger=none", f"hydra.run.dir={run_dir}")
    monkeypatch.undo()
    assert code == ExitCode.PREEMPTED
    assert checkpoint_steps(run_dir) == [40, 50]  # stopped after the 40-50 window
    flip_a_bit(run_dir / CHECKPOINT_DIR / "50")

    with caplog.at_level(logging.WARNING, logger="metalearn.checkpoints"):
        assert train_main(f"resume={run_dir}") == 0
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"{CHECKPOINT_DIR}/50 is damaged" in line
    assert "does not match its checksum); trying the one before" in line
    assert summary_of(run_dir) == summary_of(uninterrupted)  # every score, exactly
    steps = [json.loads(line)["step"] for line in (run_dir / HISTORY_FILE).open()]
    assert steps == [10, 20, 30, 40, 50, 60]  # the rows after 40 were redone


@pytest.mark.slow  # a fresh interpreter trained twice
def test_sigterm_checkpoints_and_resume_continues_the_same_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    slow = ["outer.steps=2000", "train.log_every=100", "checkpoint.every=100000"]
    slow += ["eval.num_tasks=20", "eval.figures=false"]
    process = subprocess.Popen(
        [sys.executable, "train.py", *slow, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    history = run_dir / HISTORY_FILE
    deadline = time.time() + 180
    while not (history.exists() and history.read_text().strip()):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == ExitCode.PREEMPTED
    assert "Interrupted: stopped at meta-step" in stderr and "Traceback" not in stderr
    assert f"resume={run_dir}" in stderr
    assert state_of(run_dir) == "preempted"
    stopped_at = Checkpointer(run_dir / CHECKPOINT_DIR).latest_step()
    assert 0 < stopped_at < 2000
    (first,) = read_runs(run_dir)
    assert first.exit_code == ExitCode.PREEMPTED

    assert train_main(f"resume={run_dir}") == 0
    runs = read_runs(run_dir)
    assert len(runs) == 2 and {r.run_id for r in runs} == {first.run_id}
    resumed = next(r for r in runs if r.exit_code == 0)
    assert resumed.history[0]["_step"] > stopped_at
    assert state_of(run_dir) == "finished"
    assert int(final_state(run_dir).step) == 2000


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["inner.lr=0.5"], "inner.lr=0.5 is not allowed with resume="),
        (["variant=sgd"], "variant=sgd is not allowed"),
        (["logger=wandb"], "logger=wandb is not allowed with resume="),
        (["+inner.lrr=0.5"], "+inner.lrr=0.5 is not allowed with resume="),
    ],
)
def test_resume_refuses_changes_to_the_maths_and_unknown_keys(
    run_dir, capsys, overrides, message
):
    before = (run_dir / CONFIG_FILE).read_text()
    assert train_main(f"resume={run_dir}", *overrides) == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (run_dir / CONFIG_FILE).read_text() == before
    assert state_of(run_dir) == "finished"  # the run it refused is left as it was


def test_resume_refuses_dirs_that_hold_no_run_with_a_checkpoint(tmp_path, capsys):
    died = tmp_path / "died"
    (died / CHECKPOINT_DIR).mkdir(parents=True)  # died before its first save
    (died / CONFIG_FILE).write_text("{}")
    for where in (died, tmp_path / "nothing"):
        assert train_main(f"resume={where}") == ExitCode.REFUSED
        err = capsys.readouterr().err
        assert "must be the output dir of a run" in err and "Traceback" not in err


def test_resume_is_refused_in_a_multirun(run_dir, tmp_path, capsys):
    code = train_main("-m", f"resume={run_dir}", f"hydra.sweep.dir={tmp_path}/sweep")
    assert code != 0
    assert "resume= is not allowed in a multirun" in capsys.readouterr().err


def test_resuming_a_finished_run_rescores_it_and_refuses_to_go_backwards(
    run_dir, capsys
):
    before = summary_of(run_dir)
    assert train_main(f"resume={run_dir}") == 0  # at its last step: nothing to train
    assert summary_of(run_dir) == before
    assert state_of(run_dir) == "finished"
    assert train_main(f"resume={run_dir}", "outer.steps=20") == ExitCode.REFUSED
    assert "already at step 40" in capsys.readouterr().err


@pytest.mark.slow
def test_extending_a_run_on_resume_is_remembered_for_the_next_resume(run_dir):
    assert train_main(f"resume={run_dir}", "outer.steps=60") == 0
    assert read_json(run_dir / CONFIG_FILE)["outer"]["steps"] == 60
    assert train_main(f"resume={run_dir}") == 0  # a later resume keeps the extension
    assert int(final_state(run_dir).step) == 60
    assert read_json(run_dir / SUMMARY_FILE)["train/steps"] == 60


def test_resuming_a_run_saved_by_an_older_version(run_dir, tmp_path, capsys):
    saved = read_json(run_dir / CONFIG_FILE)
    del saved["train"]["sample_ahead"]  # a key added after the run started
    # a key added after the run started whose default changed the maths: MAML
    # adapted BatchNorm before algo.adapt_batch_norm, and an older run keeps that
    del saved["algo"]["adapt_batch_norm"]
    optimizer = saved["optimizer"]  # older runs named the optimiser by optax target
    optimizer["_target_"] = f"optax.{optimizer.pop('name')}"
    (run_dir / CONFIG_FILE).write_text(json.dumps(saved))
    assert train_main(f"resume={run_dir}", "outer.steps=60") == 0
    assert int(final_state(run_dir).step) == 60
    assert read_json(run_dir / CONFIG_FILE)["optimizer"]["name"] == "adam"
    assert read_json(run_dir / CONFIG_FILE)["algo"]["adapt_batch_norm"] is True

    # a checkpoint whose state is laid out otherwise: a clear refusal, no traceback
    parts = build(typed(read_json(run_dir / CONFIG_FILE)))
    per_array_adam = optax.adam(1e-3)  # one optimiser array per parameter array
    older = init_train_state(parts.algorithm, per_array_adam, jax.random.key(0))
    checkpointer = Checkpointer(run_dir / "older")
    checkpointer.save(older._replace(step=jnp.int32(60)), {})
    checkpointer.close()
    for path in (run_dir / CHECKPOINT_DIR).glob("60*"):  # step 60 and its records
        path.rename(tmp_path / path.name)
    for path in (run_dir / "older").glob("60*"):
        path.rename(run_dir / CHECKPOINT_DIR / path.name)
    capsys.readouterr()
    assert train_main(f"resume={run_dir}", "outer.steps=80") == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert "laid out differently" in err and "Traceback" not in err


def test_train_py_reports_a_diverging_run_without_a_traceback(tmp_path, capsys):
    code = train_main(
        *QUICK, "optimizer=sgd", "outer.lr=1e12", "logger=none",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == ExitCode.FAILED
    assert "became NaN or infinite between meta-steps" in err
    assert "lower outer.lr" in err and "Traceback" not in err
    assert state_of(tmp_path) == "failed"
    assert not (tmp_path / SUMMARY_FILE).exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("task=nope", "Could not find 'task/nope'"),
        ("model=nope", "Could not find 'model/nope'"),
        ("outer.lr=abc", "could not be converted to Float"),
        ("hydra.run.dir=/etc/hostname/run", "cannot write the output dir"),
        ("task=omniglot", "python -m metalearn.data omniglot"),
    ],
)
def test_more_hostile_inputs_fail_early_and_cleanly(
    override, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("METALEARN_DATA", str(tmp_path / "no_data"))
    overrides = [override, "inner.k=1", "eval.num_query=5"]
    if "hydra.run.dir" not in override:
        overrides.append(f"hydra.run.dir={tmp_path}/run")
    code = train_main(*overrides)
    out, err = capsys.readouterr()
    assert code != 0
    assert message in err
    assert "Traceback" not in err + out
    assert not (tmp_path / "run" / SUMMARY_FILE).exists()


@pytest.mark.slow  # a multirun of three runs; test_sweeps checks the report's part
def test_a_multirun_goes_on_past_failed_jobs_and_the_report_marks_them(tmp_path):
    sweep = tmp_path / "sweep"
    code = train_main(
        "-m", "optimizer=sgd", "outer.lr=-1,1e12,0.001", *QUICK,
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert code != 0
    assert [state_of(sweep / str(i)) for i in range(3)] == [
        "failed",
        "failed",
        "finished",
    ]
    runs = {r.config["outer"]["lr"]: r for r in read_runs(sweep)}
    assert runs[1e12].exit_code == ExitCode.FAILED and runs[0.001].exit_code == 0
    assert -1 not in runs  # rejected before a W&B run started

    groups = report.write_report(sweep)
    assert [len(g.finished) for g in groups] == [0, 0, 1]
    assert "0:failed" in (sweep / "report.md").read_text()


@pytest.mark.slow  # W&B's own login check takes seconds
def test_wandb_online_without_credentials_fails_cleanly(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    code = train_main(*QUICK, "logger.mode=online", f"hydra.run.dir={tmp_path}/run")
    out, err = capsys.readouterr()
    assert code == ExitCode.REFUSED, err[-2000:]
    assert "wandb login" in err and "logger.mode=offline" in err
    assert "Traceback" not in err + out
    assert state_of(tmp_path / "run") == "failed"


# --- refused runs leave other runs as they were -------------------------------------


def snapshot(directory) -> dict[str, bytes]:
    """Every file below `directory`, by relative path, with its bytes."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_a_run_refused_in_another_runs_dir_writes_nothing_there(run_dir, capsys):
    before = snapshot(run_dir)
    code = train_main(*QUICK, "inner.lr=0.5", f"hydra.run.dir={run_dir}")
    err = capsys.readouterr().err
    assert code == ExitCode.REFUSED and "holds a run with another config" in err
    assert "inner.lr" in err and "Traceback" not in err
    assert snapshot(run_dir) == before  # .hydra/overrides.yaml included


def test_a_multirun_refused_in_another_sweeps_dir_writes_nothing_there(
    tmp_path, capsys
):
    sweep = tmp_path / "sweep"
    assert (
        train_main("-m", "seed=0", *QUICK, "logger=none", f"hydra.sweep.dir={sweep}")
        == 0
    )
    before = snapshot(sweep)
    code = train_main("-m", "seed=0,1", *QUICK, f"hydra.sweep.dir={sweep}")
    err = capsys.readouterr().err
    assert code == ExitCode.REFUSED and "holds another sweep" in err
    assert snapshot(sweep) == before


def test_resume_of_a_dir_that_holds_no_run_creates_and_writes_nothing(tmp_path, capsys):
    nothing = tmp_path / "nothing"
    assert train_main(f"resume={nothing}") == ExitCode.REFUSED
    assert not nothing.exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("not a run")
    assert train_main(f"resume={other}") == ExitCode.REFUSED
    assert snapshot(other) == {"todo.txt": b"not a run"}
    assert "must be the output dir of a run" in capsys.readouterr().err


def test_a_second_process_in_a_run_dir_is_refused_in_one_line(run_dir, capsys):
    with RunLock(run_dir):  # as another process training there holds it
        code = train_main(f"resume={run_dir}", "outer.steps=60")
    err = capsys.readouterr().err
    assert code == ExitCode.REFUSED and "Traceback" not in err
    assert f"Refused: {run_dir} is in use: process {os.getpid()}" in err
    assert state_of(run_dir) == "finished"  # not marked failed by the refused one


def test_a_run_that_cannot_fit_in_memory_is_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    from metalearn import experiment

    monkeypatch.setattr(experiment, "free_memory", lambda device: 64 * 1024)
    code = train_main(*QUICK, "logger=none", f"hydra.run.dir={tmp_path}")
    err = capsys.readouterr().err
    assert code == ExitCode.REFUSED and "Traceback" not in err
    assert "Too big: the compiled training window needs about" in err
    assert "lower outer.batch, inner.k, outer.num_query, inner.steps" in err
    assert not has_checkpoint(tmp_path)  # no training happened
    assert state_of(tmp_path) == "failed"


# --- the disk fails mid-run ------------------------------------------------------


def no_space(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class FailingWrites:
    """A file whose writes fail (`fails()` says when), as on a full disk."""

    def __init__(self, file, fails):
        self._file, self._fails = file, fails

    def write(self, text):
        if self._fails():
            raise no_space(self._file.name)
        return self._file.write(text)

    def __getattr__(self, name):
        return getattr(self._file, name)


class BrokenDisk:
    """Write faults of a run with checkpoints at meta-steps 20 and 40 and history
    rows at 10, 20, 30 and 40: `checkpoint` refuses orbax's last step of writing
    checkpoint 40 (the rename of its complete temporary dir), `history` refuses
    the history row of step 30, `disk` is full from checkpoint 40 on (every later
    write fails too, `status.json` included)."""

    def __init__(self, fault: str, monkeypatch):
        # orbax's own file system call (private: imported here, so that a later
        # orbax that moves it fails these tests, not the module's import)
        from orbax.checkpoint._src.path import async_path

        self.fault, self.full, self.rows = fault, False, 0
        self._rename = async_path.rename
        self._write = rundir.write_text_atomically
        monkeypatch.setattr(async_path, "rename", self.rename)
        monkeypatch.setattr(rundir, "write_text_atomically", self.write_text)
        monkeypatch.setattr(loggers, "open", self.open, raising=False)

    async def rename(self, src, dst):
        if self.full or self.fault != "history" and dst.name == "40":
            self.full = self.fault == "disk"
            raise no_space(dst)
        return await self._rename(src, dst)

    def write_text(self, path, text):
        if self.full:
            raise no_space(path)
        self._write(path, text)

    def open(self, path, *args, **kwargs):
        return FailingWrites(open(path, *args, **kwargs), self.history_fails)

    def history_fails(self) -> bool:
        self.rows += 1
        return self.full or self.fault == "history" and self.rows == 3


def run_on_a_broken_disk(fault, tmp_path, capsys, monkeypatch):
    """A quick run on `BrokenDisk(fault)`: its run dir and the line it ends with
    (checked: exit code 1, no traceback)."""
    run_dir = tmp_path / "run"
    BrokenDisk(fault, monkeypatch)
    code = train_main(
        *QUICK, "checkpoint.every=20", "logger=none", f"hydra.run.dir={run_dir}"
    )
    monkeypatch.undo()  # the disk works again
    out, err = capsys.readouterr()
    assert code == ExitCode.FAILED and "Traceback" not in out + err
    assert not (run_dir / SUMMARY_FILE).exists()
    assert checkpoint_steps(run_dir) == [20]  # orbax's temporary dir is no step
    assert damage(run_dir / CHECKPOINT_DIR / "20") is None
    return run_dir, err.splitlines()[0]


@pytest.mark.parametrize(
    "fault, path", [("checkpoint", f"{CHECKPOINT_DIR}/40"), ("history", HISTORY_FILE)]
)
def test_a_file_that_cannot_be_written_mid_run_ends_it_in_one_line(
    tmp_path, capsys, monkeypatch, fault, path
):
    run_dir, line = run_on_a_broken_disk(fault, tmp_path, capsys, monkeypatch)
    assert line == (
        f"Output failed: cannot write {run_dir / path}: No space left on device"
    )
    assert read_json(run_dir / STATUS_FILE) == {"state": "failed", "error": line}


@pytest.mark.slow  # a run and its resume through a failing disk: ~8 s cold
def test_a_full_disk_mid_run_loses_no_training_and_the_run_resumes(
    tmp_path, capsys, monkeypatch
):
    run_dir, line = run_on_a_broken_disk("disk", tmp_path, capsys, monkeypatch)
    # the first write that failed is named, not the last (status.json's)
    checkpoint = run_dir / CHECKPOINT_DIR / "40"
    assert line == f"Output failed: cannot write {checkpoint}: No space left on device"
    assert state_of(run_dir) == "running"  # as it was: no half-written status.json

    assert train_main(f"resume={run_dir}") == 0  # on from checkpoint 20
    assert read_json(run_dir / SUMMARY_FILE)["train/steps"] == 40
    assert state_of(run_dir) == "finished"
    rows = [json.loads(line)["step"] for line in (run_dir / HISTORY_FILE).open()]
    assert rows == [10, 20, 30, 40]


# --- a stop request during evaluation --------------------------------------------


def read_terminal(terminal: int, until=None, timeout: float = 60) -> str:
    """What a process wrote to the terminal whose master end is `terminal`, read
    until the regex `until` matches it, or (None) to the end of the process."""
    output, deadline = "", time.monotonic() + timeout
    while until is None or not until.search(output):
        assert time.monotonic() < deadline, output[-2000:]
        if not select.select([terminal], [], [], 0.05)[0]:
            continue
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: the process has ended, and closed its end
            chunk = b""
        if not chunk:
            break
        output += chunk.decode(errors="replace")
    return output


@pytest.mark.slow  # a train.py subprocess on a terminal, then a resume: ~20 s cold
def test_a_stop_during_the_final_evaluation_ends_it_within_seconds_training_saved(
    tmp_path,
):
    run_dir = tmp_path / "run"
    overrides = ["outer.steps=20", "train.log_every=10", "eval.every=0"]
    # 2000 held-out tasks one at a time: an evaluation of seconds to a minute
    overrides += ["eval.num_tasks=2000", "eval.tasks_per_batch=1", "eval.steps=1"]
    overrides += ["eval.num_query=20", "eval.figures=false", "logger=none"]
    # on a terminal (of 120 columns: tqdm draws nothing in 0), so that the
    # evaluation draws its progress bar
    terminal, its_end = pty.openpty()
    fcntl.ioctl(its_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        stdout=its_end,
        stderr=its_end,
    )
    os.close(its_end)
    try:
        some_tasks_done = re.compile(r"evaluating: [^\n]*?\b[1-9]\d*/2000")
        output = read_terminal(terminal, some_tasks_done, timeout=120)
        assert process.poll() is None, output[-2000:]
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        output += read_terminal(terminal)
        process.wait(timeout=10)
        seconds = time.monotonic() - signalled
    finally:
        process.kill()
        os.close(terminal)

    assert process.returncode == ExitCode.PREEMPTED, output[-2000:]
    assert "Traceback" not in output
    done = re.search(r"during evaluation \(stopped after (\d+) of 2000 tasks\)", output)
    assert done and 0 < int(done[1]) < 2000, output[-2000:]
    assert seconds < 15
    assert state_of(run_dir) == "preempted"
    assert checkpoint_steps(run_dir) == [20]  # all the training, saved

    # the resume has nothing left to train: it evaluates (in larger chunks) and ends
    assert train_main(f"resume={run_dir}", "eval.tasks_per_batch=1000") == 0
    summary = read_json(run_dir / SUMMARY_FILE)
    rows = [json.loads(line) for line in (run_dir / HISTORY_FILE).open()]
    assert [row["step"] for row in rows] == [10, 20] and summary["train/steps"] == 20
    assert summary["train/meta_loss"] == rows[-1]["train/meta_loss"]  # step 20's
