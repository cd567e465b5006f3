"""The MAML paper's Table 1 studies (Finn et al. 2017), Omniglot and miniImageNet:
our accuracy beside the published one, and learning and adaptation curves. On
Omniglot first-order MAML is as the Reptile paper reports it (the MAML paper gives
first order only for miniImageNet), and Prototypical Networks as Snell et al. do,
for `algo=protonet` runs in the sweep dir."""

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from runs import Run, attach_everywhere, load_run

from metalearn.report import Line, find_jobs, plot_lines, plot_panels, seed_mean

# Accuracy (%), ± 95% CI: MAML paper Table 1; Omniglot's first-order MAML from the
# Reptile paper's Table 2 (the MAML paper gives first order only for miniImageNet).
PUBLISHED = {
    ("omniglot", "maml", "5w1s"): "98.7 ± 0.4",
    ("omniglot", "maml", "5w5s"): "99.9 ± 0.1",
    ("omniglot", "maml", "20w1s"): "95.8 ± 0.3",
    ("omniglot", "maml", "20w5s"): "98.9 ± 0.2",
    ("omniglot", "fomaml", "5w1s"): "98.3 ± 0.5",
    ("omniglot", "fomaml", "5w5s"): "99.2 ± 0.2",
    ("omniglot", "fomaml", "20w1s"): "89.4 ± 0.5",
    ("omniglot", "fomaml", "20w5s"): "97.9 ± 0.1",
    # Snell et al. 2017, Table 1 (as issue #14 quotes it; not in our papers notes):
    # Vinyals split, trained with 60-way episodes, so not the MAML protocol
    ("omniglot", "protonet", "5w1s"): "98.8",
    ("omniglot", "protonet", "5w5s"): "99.7",
    ("omniglot", "protonet", "20w1s"): "96.0",
    ("omniglot", "protonet", "20w5s"): "98.9",
    # the comparison study's other rows (papers-and-peers notes, "more numbers")
    ("omniglot", "mamlpp", "5w1s"): "99.47",
    ("omniglot", "mamlpp", "20w1s"): "97.65",
    ("omniglot", "metasgd", "5w1s"): "99.53 ± 0.26",
    ("omniglot", "metasgd", "20w1s"): "95.93",
    ("omniglot", "anil", "20w1s"): "96.2 ± 0.5",
    ("omniglot", "reptile", "5w1s"): "97.68 (transduction)",
    ("omniglot", "reptile", "20w1s"): "89.43 (transduction)",
    ("mini_imagenet", "maml", "5w1s"): "48.70 ± 1.84",
    ("mini_imagenet", "maml", "5w5s"): "63.11 ± 0.92",
    ("mini_imagenet", "fomaml", "5w1s"): "48.07 ± 1.75",
    ("mini_imagenet", "fomaml", "5w5s"): "63.15 ± 0.91",
}
METHODS = {
    "maml": "MAML",
    "fomaml": "first-order MAML",
    "mamlpp": "MAML++",
    "metasgd": "Meta-SGD",
    "anil": "ANIL",
    "reptile": "Reptile",
    "protonet": "Prototypical Networks",
    "pretrained": "pretrained, fine-tuned",
    "sgd": "SGD from scratch",
}
SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")
TITLES = {"omniglot": "Omniglot", "mini_imagenet": "miniImageNet"}


def setting_of(run: Run) -> str:
    return f"{run.config.task.ways}w{run.config.inner.k}s"


def method_of(run: Run) -> str:
    """The algorithm, with MAML told apart by order and by MAML++'s options."""
    if run.algo != "maml":
        return run.algo
    if run.config.algo.first_order:
        return "fomaml"
    return "mamlpp" if is_mamlpp(run.config) else "maml"


def is_mamlpp(config) -> bool:
    """Whether a MAML run turns on any of MAML++'s options."""
    algo = config.algo
    return bool(
        algo.multi_step_loss
        or algo.learned_lrs
        or algo.first_order_epochs > 0
        or config.model.batch_norm == "per_step"
    )


def finished_runs(sweep_dir: Path) -> dict[tuple[str, str], list[Run]]:
    """(method, setting) -> the finished runs (one per seed)."""
    runs = defaultdict(list)
    for job in find_jobs(sweep_dir):
        if job.status == "finished":
            run = load_run(job.path)
            runs[(method_of(run), setting_of(run))].append(run)
    return dict(runs)


def _mean_ci(runs: list[Run], key: str) -> str:
    """Mean over seeds of a score in %, with the mean of their 95% CIs over tasks."""
    means = [100 * run.summary[f"eval/{key}"] for run in runs]
    cis = [100 * run.summary[f"eval/{key.replace('@', '_ci95@')}"] for run in runs]
    text = f"{statistics.fmean(means):.1f} ± {statistics.fmean(cis):.1f}"
    if len(runs) > 1:
        text += f" (seeds {', '.join(f'{m:.1f}' for m in means)})"
    return text


def results_table(runs: dict[tuple[str, str], list[Run]], dataset: str) -> str:
    """Markdown: our accuracy after the paper's test steps and after all
    `eval.steps`, beside the published one, with the meta-steps and training
    minutes each row had."""
    lines = [
        "| setting | method | ours, paper's test steps | ours, all test steps "
        "| published "
        "| meta-steps | train min | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting in SETTINGS:
        for method in METHODS:
            group = runs.get((method, setting))
            if not group:
                continue
            steps = group[0].config.eval.objective.partition("@step")[2]
            last = group[0].config.eval.steps
            done = sorted({int(run.summary["train/steps"]) for run in group})
            minutes = statistics.fmean(run.summary["train/seconds"] for run in group)
            lines.append(
                f"| {setting} | {METHODS[method]} "
                f"| {_mean_ci(group, f'acc@step{steps}')} (step {steps}) "
                f"| {_mean_ci(group, f'acc@step{last}')} (step {last}) "
                f"| {PUBLISHED.get((dataset, method, setting), '–')} "
                f"| {'/'.join(map(str, done))} | {minutes / 60:.1f} | {len(group)} |"
            )
    return "\n".join(lines)


def curve_lines(runs: dict, key) -> dict[str, Line]:
    lines = {}
    for (method, setting), group in sorted(runs.items(), key=lambda item: item[0][1]):
        for run in group[:1]:  # one seed per line keeps the figure readable
            lines[f"{setting} {method}"] = key(run)
    return lines


def learning_curve(run: Run) -> Line:
    steps = run.config.eval.objective.partition("@step")[2]
    rows = [r for r in run.history if f"eval/acc@step{steps}" in r]
    return [r["step"] for r in rows], [100 * r[f"eval/acc@step{steps}"] for r in rows]


def adaptation_curve(run: Run) -> Line:
    count = run.config.eval.steps + 1
    means = [100 * run.summary[f"eval/acc@step{i}"] for i in range(count)]
    cis = [100 * run.summary[f"eval/acc_ci95@step{i}"] for i in range(count)]
    return list(range(count)), means, cis


def omniglot_figures(sweep_dir: Path, out: Path) -> str:
    return table1_figures(sweep_dir, out, "omniglot")


def mini_imagenet_figures(sweep_dir: Path, out: Path) -> str:
    return table1_figures(sweep_dir, out, "mini_imagenet")


# Methods whose `train/acc` is the query accuracy of meta-training episodes (SGD's
# is the untrained network's; the pretrained baseline's, many-way supervised accuracy).
EPISODIC = ("maml", "fomaml", "mamlpp", "metasgd", "anil", "reptile", "protonet")


def comparison_figures(sweep_dir: Path, out: Path) -> str:
    """The comparison study: the table (omniglot_compare_table1.md) and, one panel
    per setting and one line per method (mean over seeds, 95% CI band over seeds),
    test accuracy vs adaptation steps (omniglot_compare_acc_vs_steps.png) and the
    training episodes' query accuracy vs meta-step
    (omniglot_compare_learning_curve.png)."""
    runs = finished_runs(sweep_dir)
    if not runs:
        raise SystemExit(f"no finished runs in {sweep_dir}")
    figures = {
        "learning_curve": out / "omniglot_compare_learning_curve.png",
        "acc_vs_steps": out / "omniglot_compare_acc_vs_steps.png",
    }
    plot_panels(
        setting_panels(runs, adaptation_points, METHODS), figures["acc_vs_steps"],
        xlabel="adaptation steps", ylabel="test accuracy (%)",
        title="Accuracy vs adaptation steps (mean over seeds)",
    )  # fmt: skip
    plot_panels(
        setting_panels(runs, training_points, EPISODIC), figures["learning_curve"],
        xlabel="meta-step", ylabel="training query accuracy (%)",
        title="Meta-training episodes' query accuracy (mean over seeds)",
    )  # fmt: skip
    attach_everywhere(
        {str(i): r for i, r in enumerate(sum(runs.values(), []))}, figures
    )
    text = results_table(runs, "omniglot") + "\n"
    (out / "omniglot_compare_table1.md").write_text(text)
    return text


def setting_panels(
    runs: dict[tuple[str, str], list[Run]],
    points_of: Callable[[Run], dict[int, float]],
    methods: Iterable[str],
) -> dict[str, dict[str, Line]]:
    """Per setting (in SETTINGS order), per method: the seed mean of `points_of`
    (`metalearn.report.seed_mean`)."""
    settings = [s for s in SETTINGS if any(setting == s for _, setting in runs)]
    return {
        f"Omniglot {setting}": {
            METHODS[method]: seed_mean([points_of(run) for run in runs[key]])
            for method in methods
            if (key := (method, setting)) in runs
        }
        for setting in settings
    }


def adaptation_points(run: Run) -> dict[int, float]:
    """Test accuracy (%) after each adaptation step."""
    count = run.config.eval.steps + 1
    return {i: 100 * run.summary[f"eval/acc@step{i}"] for i in range(count)}


def training_points(run: Run) -> dict[int, float]:
    """Training accuracy (%) at each logged meta-step."""
    return {r["step"]: 100 * r["train/acc"] for r in run.history if "train/acc" in r}


def table1_figures(sweep_dir: Path, out: Path, dataset: str) -> str:
    """The table (written as <dataset>_table1.md) and the two figures
    (<dataset>_learning_curve.png, <dataset>_acc_vs_steps.png)."""
    runs = finished_runs(sweep_dir)
    if not runs:
        raise SystemExit(f"no finished runs in {sweep_dir}")
    name = TITLES[dataset]
    figures = {
        "learning_curve": out / f"{dataset}_learning_curve.png",
        "acc_vs_steps": out / f"{dataset}_acc_vs_steps.png",
    }
    plot_lines(
        curve_lines(runs, learning_curve), figures["learning_curve"],
        xlabel="meta-step", ylabel="test accuracy (%), paper's test steps",
        title=f"{name}: test accuracy during meta-training",
    )  # fmt: skip
    plot_lines(
        curve_lines(runs, adaptation_curve), figures["acc_vs_steps"],
        xlabel="adaptation steps", ylabel="test accuracy (%)",
        title=f"{name}: accuracy vs adaptation steps (600 test tasks)",
    )  # fmt: skip
    attach_everywhere(
        {str(i): r for i, r in enumerate(sum(runs.values(), []))}, figures
    )
    text = results_table(runs, dataset) + "\n"
    (out / f"{dataset}_table1.md").write_text(text)
    return text
