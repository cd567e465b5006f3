"""The sinusoid studies' figures and tables: the maml-jax tutorial's, and the MAML
paper's (Finn et al. 2017: Fig. 2 fits, Fig. 3 MSE vs steps, App. C Table 2)."""

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from runs import Run, attach_everywhere, load_trained, runs_by
from tqdm import tqdm

from metalearn.report import plot_lines

# MAML paper (Finn et al. 2017), App. C.1 Table 2: K=5 test, trained at K=10.
PUBLISHED_K5 = {
    "maml": {1: 0.67, 5: 0.38, 10: 0.35},
    "pretrained": {1: 2.41, 5: 2.23, 10: 2.19},
}


class Support(NamedTuple):
    """A support set: what adaptation sees of a task."""

    support_inputs: jax.Array  # [K, 1]
    support_targets: jax.Array  # [K, 1]


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


def adaptation_curves(
    parts, meta_params, model_state, task, steps: Sequence[int], key
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
    fig = Figure(figsize=(5 * len(runs), 3.6 * len(shots)))
    axes = fig.subplots(len(shots), len(runs), squeeze=False)
    # restoring and compiling each run's model takes seconds: a bar on a terminal
    bar = tqdm(runs.items(), desc="fitting runs", unit="run", leave=False, disable=None)
    for column, (label, run) in enumerate(bar):
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


def plot_meta_loss(runs: dict[str, Run], path: Path) -> None:
    lines = {
        label: (
            [r["step"] for r in run.history],
            [r["train/meta_loss"] for r in run.history],
        )
        for label, run in runs.items()
    }
    plot_lines(
        lines, path, xlabel="meta-step", ylabel="meta-training loss",
        title="meta-training loss (window means)", log=True,
    )  # fmt: skip


def _suffix(run: Run, k: int) -> str:
    """The metric-key suffix of K=k in this run's evaluation."""
    if run.config.eval.k == k:
        return ""
    if k in run.config.eval.extra_k:
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
    fig = Figure(figsize=(5 * len(shots), 4))
    axes = fig.subplots(1, len(shots), squeeze=False)
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


def tutorial_figures(sweep_dir: Path, out: Path) -> str:
    """The tutorial's meta-loss curves and K-shot fit; returns its table."""
    runs = runs_by(sweep_dir)
    labelled = {
        "MAML (batch 1)": runs["maml_b1"],
        "batched MAML (batch 4)": runs["maml_b4"],
    }
    figures = {
        "meta_loss": out / "tutorial_meta_loss.png",
        "fit": out / "tutorial_fit.png",
    }
    plot_meta_loss(labelled, figures["meta_loss"])
    plot_fits(
        {"batched MAML": runs["maml_b4"]},
        shots=[20],
        steps=[0, 1, 2, 3, 4],
        path=figures["fit"],
        amplitude=0.4,
    )
    attach_everywhere(runs, figures)
    text = results_table(labelled, k=20) + "\n"
    (out / "tutorial_table.md").write_text(text)
    return text


def maml_figures(sweep_dir: Path, out: Path) -> str:
    """The MAML paper's Fig. 2 and Fig. 3; returns (and writes) its tables."""
    runs = runs_by(sweep_dir)
    labelled = {
        "MAML (α=0.01)": runs["maml_b25"],
        "MAML (α=0.001)": runs["maml_b25_lr1e-3"],
        "pretrained": runs["pretrained"],
        "SGD retraining": runs["sgd"],
    }
    figures = {
        "fig2_fits": out / "maml_fig2_fits.png",
        "fig3_mse_vs_steps": out / "maml_fig3_mse_vs_steps.png",
    }
    fitted = {k: v for k, v in labelled.items() if k != "SGD retraining"}
    plot_fits(
        fitted,
        shots=[5, 10],
        steps=[0, 1, 10],
        path=figures["fig2_fits"],
        amplitude=4.0,
    )
    plot_mse_vs_steps(labelled, [5, 10, 20], figures["fig3_mse_vs_steps"])
    attach_everywhere(runs, figures)
    text = "\n\n".join(results_table(labelled, k=k) for k in (5, 10, 20)) + "\n"
    (out / "maml_paper_table.md").write_text(text)
    return text
