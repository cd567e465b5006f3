"""`fit`: the host loop around the compiled windows: when it logs, checkpoints and
evaluates, and how it stops (NaN guard, stop requests, time limit)."""

import time

import jax
import jax.numpy as jnp
import optax
import pytest

from metalearn.algorithms import make_maml
from metalearn.evaluation import EvaluationStopped
from metalearn.models import make_mlp
from metalearn.optimizers import flat_optimizer
from metalearn.tasks.sinusoid import make_sinusoid
from metalearn.trainer import (
    NonFiniteError,
    Preempted,
    Schedule,
    budget_window_end,
    fit,
    init_train_state,
)

FAMILY = make_sinusoid().train
ALGORITHM = make_maml(
    make_mlp(FAMILY.input_shape, 1, hidden_sizes=(4,)), FAMILY, 0.1, 1
)
OPTIMIZER = flat_optimizer(optax.adam(1e-3))


class FakeWindow:
    """A train window that only counts steps; from call `bad_call` on, it returns
    NaN parameters."""

    def __init__(self, bad_call=None):
        self.calls, self.bad_call = [], bad_call

    def lower(self, state, data, num_steps):
        return self

    def compile(self):
        return self

    def __call__(self, state, data, num_steps):
        self.calls.append(int(num_steps))
        bad = len(self.calls) == self.bad_call
        params = jax.tree.map(lambda p: p * jnp.nan if bad else p, state.meta_params)
        state = state._replace(meta_params=params, step=state.step + num_steps)
        loss = jnp.nan if bad else 1.0
        return state, {"train/meta_loss": loss, "finite": not bad}


def run_fit(schedule, window=None, events=None, **options):
    """`fit` from a fresh state; `events` records (what, step) in call order."""
    events = [] if events is None else events
    state = init_train_state(ALGORITHM, OPTIMIZER, jax.random.key(0))
    return fit(
        state,
        window or FakeWindow(),
        FAMILY.data,
        schedule,
        evaluate=options.pop(
            "evaluate",
            lambda s: events.append(("eval", int(s.step))) or {"eval/x": 1.0},
        ),
        on_metrics=lambda step, metrics: events.append(("log", step)),
        checkpoint=lambda s, seconds: events.append(("save", int(s.step))),
        **options,
    )


def test_it_logs_every_window_and_checkpoints_before_evaluating():
    events = []
    result = run_fit(Schedule(20, 5, eval_every=10, checkpoint_every=10), events=events)
    assert events == [
        ("log", 5),
        ("save", 10), ("eval", 10), ("log", 10),
        ("log", 15),
        ("save", 20), ("eval", 20), ("log", 20),
    ]  # fmt: skip
    assert int(result.state.step) == 20 and result.summary["eval/x"] == 1.0
    assert {"perf/compile_s", "perf/steps_per_s", "train/meta_loss"} <= set(
        result.summary
    )


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint():
    events = []
    with pytest.raises(NonFiniteError, match="between meta-steps 20 and 30") as error:
        run_fit(Schedule(50, 10, 0, 10), FakeWindow(bad_call=3), events)
    assert "(meta-step 20) is the last good state" in str(error.value)
    assert "lower outer.lr" in str(error.value)
    assert [step for what, step in events if what == "save"] == [10, 20]


def test_a_stop_request_checkpoints_then_raises_preempted():
    events = []
    with pytest.raises(Preempted, match="stopped at meta-step 5"):
        run_fit(Schedule(20, 5, 10), events=events, should_stop=lambda: True)
    assert events == [("save", 5), ("log", 5)]


def test_a_stop_during_evaluation_checkpoints_then_raises_preempted():
    def stopped(state):
        raise EvaluationStopped("stopped after 3 of 9 tasks")

    events = []
    with pytest.raises(Preempted, match="during evaluation"):
        run_fit(Schedule(20, 5, 10), events=events, evaluate=stopped)
    # saved although not due at 10, and the window's training metrics logged
    assert events == [("log", 5), ("save", 10), ("log", 10)]


def test_a_time_limit_ends_training_as_at_the_end():
    events = []
    result = run_fit(Schedule(100, 5, 50), events=events, time_limit=1e-9)
    # the first window under a budget is one meta-step: it measures the speed
    assert events == [("save", 1), ("eval", 1), ("log", 1)]
    assert int(result.state.step) == 1


class SlowWindow(FakeWindow):
    """A window whose every meta-step takes `seconds` of wall time."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def __call__(self, state, data, num_steps):
        time.sleep(self.seconds * int(num_steps))
        return super().__call__(state, data, num_steps)


def test_a_time_limit_cuts_the_window_that_would_overshoot_it():
    window = SlowWindow(0.01)
    result = run_fit(Schedule(1000, 100), window, time_limit=0.1)
    # one step measures the speed, then about the 9 steps that fit in what is left,
    # not the whole 100-step window
    assert window.calls[0] == 1 and sum(window.calls) < 30
    assert result.train_seconds >= 0.1
    assert int(result.state.step) == sum(window.calls)


@pytest.mark.parametrize(
    "done, end, seconds_left, rate, expected",
    [
        (0, 100, 30.0, None, 1),  # speed unknown: one step
        (1, 100, 30.0, 1.0, 31),  # 30 s at 1 step/s
        (1, 100, 30.0, 10.0, 100),  # the window ends first
        (40, 100, 0.01, 1.0, 41),  # always at least one step
        (40, 100, 2.5, 2.0, 45),  # 5 steps fit
        (40, 100, 2.6, 2.0, 46),  # 5.2 steps: rounded up
    ],
)
def test_budget_window_end(done, end, seconds_left, rate, expected):
    assert budget_window_end(done, end, seconds_left, rate) == expected


def test_a_finished_run_is_only_scored_again():
    events = []
    schedule = Schedule(0, 5)
    result = run_fit(schedule, events=events)
    assert events == [("eval", 0)] and result.train_seconds == 0.0
