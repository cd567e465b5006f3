"""Paper curves from finished runs: the tutorial's figures and the MAML paper's.

Reads run dirs (their `.hydra/config.yaml`, `summary.json`, `history.jsonl` and
final checkpoint) and draws the figures; `sweeps/paper.py` runs the studies and
calls these functions.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from omegaconf import OmegaConf

from metalearn import loggers
from metalearn.checkpoints import Checkpointer
from metalearn.experiment import CHECKPOINT_DIR, Parts, build
from metalearn.loggers import HISTORY_FILE, SUMMARY_FILE
from metalearn.trainer import init_train_state

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# MAML paper (Finn et al. 2017), App. C.1 Table 2: K=5 test, trained at K=10.
PUBLISHED_K5 = {
    "maml": {1: 0.67, 5: 0.38, 10: 0.35},
    "pretrained": {1: 2.41, 5: 2.23, 10: 2.19},
}


class Run(NamedTuple):
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def algo(self) -> str:
        return self.config["algo"]["name"]


def load_run(path: str | Path) -> Run:
    path = Path(path)
    config = OmegaConf.to_container(
        OmegaConf.load(path / ".hydra" / "config.yaml"), resolve=True
    )
    summary = json.loads((path / SUMMARY_FILE).read_text())
    history = [json.loads(line) for line in (path / HISTORY_FILE).open()]
    return Run(path, config, summary, history)


def load_trained(run: Run) -> tuple[Parts, Any, Any]:
    """The run's parts and its final (meta-parameters, model state)."""
    parts = build(run.config)
    template = init_train_state(parts.algorithm, parts.optimizer, jax.random.key(0))
    state, _ = Checkpointer(run.path / CHECKPOINT_DIR).restore(template)
    return parts, state.meta_params, state.model_state


def attach_figures(run: Run, figures: dict[str, Path]) -> bool:
    """Logs `figures` (name -> PNG) to the run's W&B run, if it had one."""
    options = run.config["logger"]
    run_dirs = sorted((run.path / "wandb").glob("*run-*-*"))
    if options["name"] != "wandb" or options["mode"] == "disabled" or not run_dirs:
        return False
    run_id = run_dirs[0].name.rsplit("-", 1)[1]
    images = {f"figures/{name}": path for name, path in figures.items()}
    loggers.attach_images(
        run.path,
        run_id,
        images,
        options["project"],
        options["mode"],
        options["entity"],
        step=run.history[-1]["step"] if run.history else None,
    )
    return True


def adaptation_curves(
    parts: Parts, meta_params, model_state, task, steps: Sequence[int], key
) -> dict[int, np.ndarray]:
    """Predictions on a dense grid after each of `steps` adaptation steps."""
    grid = jnp.linspace(-5, 5, 200)[:, None]
    params, state = parts.algorithm.adapt_init(meta_params, key), model_state
    curves, taken = {}, 0
    for target in sorted(steps):
        while taken < target:
            params, state = parts.algorithm.adapt_step(
                meta_params, params, state, task.support_inputs, task.support_targets
            )
            taken += 1
        curves[target] = np.asarray(parts.algorithm.predict(params, state, grid))[:, 0]
    return curves


def sinusoid_task(amplitude: float, phase: float, k: int, key):
    """A task with known amplitude and phase, K support points from `key`."""
    inputs = jax.random.uniform(key, (k, 1), minval=-5.0, maxval=5.0)
    grid = jnp.linspace(-5, 5, 200)
    return (
        inputs,
        amplitude * jnp.sin(inputs - phase),
        np.asarray(grid),
        np.asarray(amplitude * jnp.sin(grid - phase)),
    )


class Support(NamedTuple):
    """A support set: what adaptation sees of a task."""

    support_inputs: jax.Array  # [K, 1]
    support_targets: jax.Array  # [K, 1]


def plot_fits(
    runs: dict[str, Run],
    shots: Sequence[int],
    steps: Sequence[int],
    path: Path,
    amplitude: float,
    phase: float = 0.5,
    seed: int = 0,
) -> None:
    """Grid of panels (run x K): target, support points, fits after `steps`."""
    fig, axes = plt.subplots(
        len(shots), len(runs), figsize=(5 * len(runs), 3.6 * len(shots)), squeeze=False
    )
    for column, (label, run) in enumerate(runs.items()):
        parts, meta_params, model_state = load_trained(run)
        for row, k in enumerate(shots):
            inputs, targets, grid, truth = sinusoid_task(
                amplitude, phase, k, jax.random.key(seed)
            )
            curves = adaptation_curves(
                parts,
                meta_params,
                model_state,
                Support(inputs, targets),
                steps,
                jax.random.key(seed + 1),
            )
            ax = axes[row][column]
            ax.plot(grid, truth, "k", lw=2, label="ground truth")
            for step, prediction in curves.items():
                style = ":" if step == 0 else "-"
                name = "pre-update" if step == 0 else f"after {step} step(s)"
                ax.plot(grid, prediction, style, label=name)
            ax.plot(inputs[:, 0], targets[:, 0], "^", color="purple", label="K points")
            ax.set(title=f"{label}, K={k}", xlim=(-5, 5))
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_meta_loss(runs: dict[str, Run], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, run in runs.items():
        steps = [row["step"] for row in run.history]
        ax.plot(steps, [row["train/meta_loss"] for row in run.history], label=label)
    ax.set(xlabel="meta-step", ylabel="meta-training loss", yscale="log")
    ax.set_title("meta-training loss (window means)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _suffix(run: Run, k: int) -> str:
    """The metric-key suffix of K=k in this run's evaluation."""
    if run.config["eval"]["k"] == k:
        return ""
    if k in run.config["eval"]["extra_k"]:
        return f"_k{k}"
    raise ValueError(
        f"{run.path} was not evaluated at K={k} (see eval.k, eval.extra_k)"
    )


def mse_curve(run: Run, k: int, max_step: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean query MSE and its 95% CI after 0..max_step steps at K=k."""
    suffix = _suffix(run, k)
    means = [run.summary[f"eval/mse{suffix}@step{i}"] for i in range(max_step + 1)]
    cis = [run.summary[f"eval/mse{suffix}_ci95@step{i}"] for i in range(max_step + 1)]
    return np.array(means), np.array(cis)


def plot_mse_vs_steps(
    runs: dict[str, Run], shots: Sequence[int], path: Path, max_step: int = 10
) -> None:
    """MAML paper Fig. 3 style: query MSE vs gradient steps, one panel per K."""
    fig, axes = plt.subplots(1, len(shots), figsize=(5 * len(shots), 4), squeeze=False)
    for ax, k in zip(axes[0], shots, strict=True):
        # a diverged curve (a few tasks blowing up) would flatten the others
        top = max(mse_curve(run, k, 0)[0][0] for run in runs.values())
        ax.set_ylim(0, 1.2 * top)
        for label, run in runs.items():
            means, cis = mse_curve(run, k, max_step)
            steps = np.arange(max_step + 1)
            (line,) = ax.plot(steps, means, "o-", ms=3, label=label)
            ax.fill_between(
                steps, means - cis, means + cis, color=line.get_color(), alpha=0.2
            )
        ax.set(
            title=f"K={k}",
            xlabel="number of gradient steps",
            ylabel="mean squared error",
        )
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def results_table(runs: dict[str, Run], k: int = 5, steps=(0, 1, 5, 10)) -> str:
    """Markdown: our MSE (mean ± 95% CI over test tasks; median in brackets)
    beside MAML paper Table 2."""
    lines = [
        f"| method (K={k} test) | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for label, run in runs.items():
        suffix = _suffix(run, k)
        cells = []
        for s in steps:
            mean = run.summary[f"eval/mse{suffix}@step{s}"]
            ci = run.summary[f"eval/mse{suffix}_ci95@step{s}"]
            median = run.summary[f"eval/mse{suffix}_median@step{s}"]
            published = PUBLISHED_K5.get(run.algo, {}).get(s) if k == 5 else None
            paper = f" (paper {published})" if published is not None else ""
            cells.append(f"{mean:.3g} ± {ci:.2g} [{median:.3g}]{paper}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
