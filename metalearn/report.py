"""A local report of a sweep: `python -m metalearn.report <sweep dir>`.

Reads every job's `.hydra/overrides.yaml`, `summary.json` and `history.jsonl` (no W&B,
no server), groups jobs by their overrides other than the seed, and writes into the
sweep dir:

- `report.md` and `report.csv`: per group, eval scores after 0/1/5/10 adaptation
  steps as mean ± 95% CI over seeds (Student t), train steps/s, and how many jobs
  finished; failed or unfinished jobs are counted and marked, never averaged in;
- `adaptation.png`: score vs adaptation steps per group (mean, CI band);
- `meta_loss.png`: training meta-loss vs meta-step per group.

A job whose files cannot be read (bad JSON, missing overrides) is listed as
unreadable, with the reason, and the rest of the sweep is still reported. Nothing
here assumes a metric is better low or high: each metric's goal comes from
`metalearn.metrics` (a loss is plotted on a log scale, an accuracy on a linear one).
"""

import argparse
import csv
import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from matplotlib.figure import Figure
from tqdm import tqdm

from metalearn.loggers import log_report, wandb_mode
from metalearn.metrics import GOALS
from metalearn.rundir import (
    CONFIG_FILE,
    HISTORY_FILE,
    HYDRA_DIR,
    STATUS_FILE,
    SUMMARY_FILE,
    State,
    read_history,
    read_json,
    read_state,
    sweep_group,
)

REPORT_STEPS = (0, 1, 5, 10)
# two-sided 95% Student t quantiles by degrees of freedom (30 and up: 2.042)
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365,
        8: 2.306, 9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


class Job(NamedTuple):
    path: Path
    overrides: list[str]
    status: str  # finished | failed | preempted | unfinished | unreadable: <why>
    summary: dict[str, Any]
    history: list[dict[str, Any]]


class Group(NamedTuple):
    label: dict[str, str]  # override key -> value, seed excluded
    jobs: list[Job]

    @property
    def finished(self) -> list[Job]:
        return [job for job in self.jobs if job.status == "finished"]


def read_job(path: Path) -> Job:
    """One job dir; a job whose files cannot be read is `unreadable: <why>`."""
    try:
        overrides = yaml.safe_load((path / HYDRA_DIR / "overrides.yaml").read_text())
        summary_path = path / SUMMARY_FILE
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        history = read_history(path / HISTORY_FILE)
    except (OSError, ValueError, yaml.YAMLError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return Job(path, [], f"unreadable: {reason}", {}, [])
    state = read_state(path)  # status.json is written last: it wins over a summary
    if (path / STATUS_FILE).exists() and state is None:
        return Job(path, overrides or [], "unreadable: bad status.json", {}, history)
    if state is None:
        status = "finished" if summary else "unfinished"
    else:
        status = "unfinished" if state == State.RUNNING else str(state)
    return Job(path, overrides or [], status, summary, history)


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job dir (one holding `.hydra/overrides.yaml`) below `sweep_dir`."""
    paths = [p.parent.parent for p in sweep_dir.rglob(f"{HYDRA_DIR}/overrides.yaml")]
    numbered = sorted(paths, key=lambda p: [_natural(part) for part in p.parts])
    # a bar on a terminal only (disable=None), as every bar here: a sweep of
    # hundreds of jobs takes a while to read
    bar = tqdm(numbered, desc="reading jobs", unit="job", leave=False, disable=None)
    return [read_job(path) for path in bar]


def _natural(text: str) -> tuple[float, str]:
    return (int(text), "") if text.isdigit() else (math.inf, text)


def group_jobs(jobs: Sequence[Job], over: Sequence[str] = ("seed",)) -> list[Group]:
    """Groups jobs whose overrides agree on every key but those in `over`.

    A group's label keeps only the keys whose values differ between jobs.
    """
    labels = []
    for job in jobs:
        pairs = [o.lstrip("+~").partition("=")[::2] for o in job.overrides]
        labels.append({k: v for k, v in pairs if k not in over and k[:5] != "hydra"})
    varying = [
        key
        for key in dict.fromkeys(k for label in labels for k in label)
        if len({label.get(key) for label in labels}) > 1
    ]
    groups: dict[tuple, Group] = {}
    for job, label in zip(jobs, labels, strict=True):
        kept = {key: label[key] for key in varying if key in label}
        groups.setdefault(tuple(kept.items()), Group(kept, []))[1].append(job)
    return list(groups.values())


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% CI (Student t; NaN for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    dof = len(values) - 1
    t = T_95[max(k for k in T_95 if k <= dof)]  # nearest tabulated dof below: wider
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def metric_names(groups: Sequence[Group]) -> list[str]:
    names = set()
    for group in groups:
        for job in group.finished:
            names |= {m.group(1) for k in job.summary if (m := _EVAL.match(k))}
    return sorted(n for n in names if not n.endswith(("_ci95", "_median")))


_EVAL = re.compile(r"eval/([a-z0-9_]+)@step(\d+)$")


def table_rows(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    keys = list(dict.fromkeys(k for group in groups for k in group.label))
    metrics = metric_names(groups)
    header = [*keys, "jobs", "status"]
    header += [f"{m}@step{s}" for m in metrics for s in REPORT_STEPS]
    header += ["steps_per_s"]
    rows = []
    for group in groups:
        done = group.finished
        problems = [f"{j.path.name}:{j.status}" for j in group.jobs if j not in done]
        row = [group.label.get(k, "") for k in keys]
        row += [
            f"{len(done)}/{len(group.jobs)}",
            "ok" if not problems else " ".join(problems),
        ]
        for metric in metrics:
            for step in REPORT_STEPS:
                row.append(
                    _cell([j.summary.get(f"eval/{metric}@step{step}") for j in done])
                )
        row.append(_cell([j.summary.get("perf/steps_per_s") for j in done], digits=0))
        rows.append(row)
    return header, rows


def _cell(scores: list[float | None], digits: int = 4) -> str:
    """`mean ± ci` over the finite values; diverged (nan/inf) ones are counted."""
    values = [v for v in scores if v is not None]
    finite = [v for v in values if math.isfinite(v)]
    diverged = f" [{len(values) - len(finite)}/{len(values)} non-finite]"
    suffix = diverged if len(finite) < len(values) else ""
    if not finite:
        return "-" + suffix if not values else "non-finite" + suffix
    mean, ci = mean_ci(finite)
    form = f".{digits}g" if digits else ".0f"
    ci_form = ".2g" if digits else ".0f"
    if math.isnan(ci):
        return f"{mean:{form}}{suffix}"
    return f"{mean:{form}} ± {ci:{ci_form}}{suffix}"


def write_tables(
    groups: Sequence[Group], sweep_dir: Path, unreadable: Sequence[Job] = ()
) -> None:
    header, rows = table_rows(groups)
    with open(sweep_dir / "report.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    lines = [f"# Sweep report: {sweep_dir}", ""]
    lines += [
        "Eval scores: mean ± 95% CI over seeds (Student t), over the seeds whose score",
        "is finite; `[k/n non-finite]` counts seeds whose adaptation diverged. The",
        "figure leaves diverged seeds out.",
        "",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if unreadable:
        lines += ["", f"Jobs that could not be read ({len(unreadable)}):", ""]
        lines += [f"- `{job.path}`: {job.status}" for job in unreadable]
    lines += [
        "",
        "![adaptation](adaptation.png)",
        "",
        "![meta-loss](meta_loss.png)",
        "",
    ]
    (sweep_dir / "report.md").write_text("\n".join(lines))


def _panels(groups: Sequence[Group]) -> dict[str, list[Group]]:
    """Splits groups by their first label key when labels have several keys."""
    panels: dict[str, list[Group]] = {}
    for group in groups:
        items = list(group.label.items())
        title = "=".join(items[0]) if len(items) > 1 else ""
        panels.setdefault(title, []).append(group)
    return panels


def _name(group: Group, title: str) -> str:
    parts = [f"{k}={v}" for k, v in group.label.items() if f"{k}={v}" != title]
    return ", ".join(parts) or "default"


def _goal(metric: str) -> str:
    return GOALS.get(metric.rsplit("_k", 1)[0], GOALS.get(metric, "min"))


Line = (
    tuple[Sequence[float], Sequence[float]]
    | tuple[Sequence[float], Sequence[float], Sequence[float]]
)  # (x, y) or (x, y, CI half-width)


MARKED_POINTS = 12  # lines with at most this many points get a marker per point


def draw_lines(ax, lines: dict[str, Line]) -> None:
    """One line per label, with a CI band where one is given."""
    for label, line in lines.items():
        xs, ys = line[0], line[1]
        marker = "o" if len(xs) <= MARKED_POINTS else None  # a 1-point line shows
        (drawn,) = ax.plot(xs, ys, label=label, marker=marker, markersize=3)
        if len(line) == 3:
            low = [y - c for y, c in zip(ys, line[2], strict=True)]
            high = [y + c for y, c in zip(ys, line[2], strict=True)]
            ax.fill_between(xs, low, high, color=drawn.get_color(), alpha=0.2)
    if lines:
        ax.legend(fontsize=7)


def plot_lines(
    lines: dict[str, Line],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log: bool = False,
) -> None:
    """One panel of labelled lines (with CI bands where given) saved as a PNG."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    draw_lines(ax, lines)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, yscale="log" if log else "linear")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_panels(
    panels: dict[str, dict[str, Line]],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    yscale: str = "linear",
) -> None:
    """Panels side by side (panel title -> labelled lines) saved as one PNG."""
    fig = Figure(figsize=(6 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, lines) in zip(axes[0], panels.items(), strict=True):
        draw_lines(ax, lines)
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel, yscale=yscale)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _means_and_bands(columns: Sequence[Sequence[float]]):
    """Each column's mean and 95% CI half-width (0 for a column of one value)."""
    stats = [mean_ci(column) for column in columns]
    return [m for m, _ in stats], [0.0 if math.isnan(ci) else ci for _, ci in stats]


def adaptation_lines(groups: Sequence[Group], metric: str, title: str) -> dict:
    """Per group: score vs adaptation steps, mean and CI over finished seeds."""
    lines = {}
    for group in groups:
        curves = [_curve(job.summary, metric) for job in group.finished]
        curves = [c for c in curves if c and all(map(math.isfinite, c))]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        means, cis = _means_and_bands([[c[i] for c in curves] for i in range(length)])
        lines[_name(group, title)] = (range(length), means, cis)
    return lines


def plot_adaptation(groups: Sequence[Group], metric: str, path: Path) -> None:
    panels = {
        title: adaptation_lines(members, metric, title)
        for title, members in _panels(groups).items()
    }
    scale = "log" if _goal(metric) == "min" else "linear"
    plot_panels(panels, path, "adaptation steps", f"query {metric}", yscale=scale)


def _curve(summary: dict[str, Any], metric: str) -> list[float]:
    steps = {int(m.group(2)): v for k, v in summary.items()
             if (m := _EVAL.match(k)) and m.group(1) == metric}  # fmt: skip
    return [steps[i] for i in range(len(steps)) if i in steps]


def meta_loss_lines(groups: Sequence[Group], title: str) -> dict:
    """Per group: the training meta-loss vs meta-step, mean over jobs."""
    lines = {}
    for group in groups:
        curves = [
            {row["step"]: row["train/meta_loss"] for row in job.history
             if "train/meta_loss" in row}
            for job in group.jobs
        ]  # fmt: skip
        curves = [curve for curve in curves if curve]
        if curves:
            lines[_name(group, title)] = seed_mean(curves)
    return lines


def seed_mean(curves: Sequence[dict[int, float]]) -> Line:
    """The mean of several runs' curves (step -> value), with its 95% CI band (0
    for one run): at every step all of them logged, then one last point, at the
    mean of their last steps, for their last values. Runs stopped by a time
    budget log their last window at different steps; a point per step any one
    reached would zigzag between single runs."""
    common = sorted(set.intersection(*(set(curve) for curve in curves)))
    columns = [[curve[step] for curve in curves] for step in common]
    xs: list[float] = list(common)
    lasts = [max(curve) for curve in curves]
    if not common or max(lasts) > common[-1]:
        xs.append(statistics.fmean(lasts))
        columns.append([curve[last] for curve, last in zip(curves, lasts, strict=True)])
    means, cis = _means_and_bands(columns)
    return xs, means, cis


def plot_meta_loss(groups: Sequence[Group], path: Path) -> None:
    panels = {
        title: meta_loss_lines(members, title)
        for title, members in _panels(groups).items()
    }
    plot_panels(panels, path, "meta-step", "meta-loss", yscale="log")


def write_report(sweep_dir: Path, over: Sequence[str] = ("seed",)) -> list[Group]:
    """Writes report.md, report.csv, adaptation.png and meta_loss.png."""
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(
            f"no Hydra jobs (.hydra/overrides.yaml) below {sweep_dir}"
        )
    unreadable = [job for job in jobs if job.status.startswith("unreadable")]
    groups = group_jobs([job for job in jobs if job not in unreadable], over)
    write_tables(groups, sweep_dir, unreadable)
    metrics = metric_names(groups)
    figures: dict[str, Callable[[Path], None]] = {}
    if metrics:
        figures["adaptation.png"] = lambda p: plot_adaptation(groups, metrics[0], p)
    figures["meta_loss.png"] = lambda p: plot_meta_loss(groups, p)
    bar = tqdm(figures.items(), "drawing figures", leave=False, disable=None)
    for name, draw in bar:
        draw(sweep_dir / name)
    return groups


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m metalearn.report", description=__doc__
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir (or any parent)")
    parser.add_argument(
        "--over",
        nargs="*",
        default=[],
        help="override keys averaged over rather than grouped by, besides seed",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the tables and figures to a W&B run (job_type=report) in "
        "the sweep's group (offline unless WANDB_MODE says otherwise)",
    )
    parser.add_argument(
        "--wandb-dashboard",
        action="store_true",
        help="build a saved W&B workspace view of the sweep's group (needs W&B "
        "online and the `dashboard` extra)",
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"sweep_dir {args.sweep_dir} is not a directory")
    try:
        groups = write_report(args.sweep_dir, ["seed", *args.over])
    except FileNotFoundError as error:
        parser.error(str(error))
    jobs = sum(len(g.jobs) for g in groups)
    print(f"{jobs} jobs in {len(groups)} groups -> {args.sweep_dir / 'report.md'}")
    print((args.sweep_dir / "report.md").read_text())
    if args.wandb:
        run_id = log_to_wandb(args.sweep_dir, groups)
        group = wandb_target(args.sweep_dir)[0]
        print(f"report logged to W&B run {run_id} (group {group})")
    if args.wandb_dashboard:
        from metalearn import dashboard

        try:
            print(dashboard.build(args.sweep_dir, groups))
        except dashboard.DashboardError as error:
            parser.exit(2, f"{error}\n")


def wandb_target(sweep_dir: Path) -> tuple[str, str, str | None, str]:
    """(group, project, entity, mode) of a sweep's W&B runs, from its jobs'
    configs (the group its jobs were logged in)."""
    for path in sorted(sweep_dir.rglob(CONFIG_FILE)):
        logger = (read_json(path) or {}).get("logger") or {}
        if logger.get("name") == "wandb":
            group = logger.get("group") or sweep_group(sweep_dir)
            mode = wandb_mode(logger.get("mode"))
            return group, logger.get("project", "metalearn"), logger.get("entity"), mode
    return sweep_group(sweep_dir), "metalearn", None, wandb_mode(None)


def log_to_wandb(sweep_dir: Path, groups: Sequence[Group]) -> str:
    """The report's table and figures, to one W&B run in the sweep's group."""
    group, project, entity, mode = wandb_target(sweep_dir)
    header, rows = table_rows(groups)
    images = {
        name: sweep_dir / f"{name}.png"
        for name in ("adaptation", "meta_loss")
        if (sweep_dir / f"{name}.png").exists()
    }
    return log_report(
        sweep_dir, group, project, entity, mode, {"comparison": (header, rows)}, images
    )


if __name__ == "__main__":
    main()
