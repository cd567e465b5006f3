"""A saved W&B workspace view of a sweep (`report <dir> --wandb-dashboard`).

Built with W&B's own workspace API (`wandb-workspaces`, the `dashboard` extra):
the runs of the sweep's group, grouped by algorithm, with the meta-loss, the
headline score after 1 and after `eval.steps` adaptation steps, each adaptation
step's score over meta-training, and the throughput. Saving a view needs W&B
online (an API key); offline, `build` says what to do instead.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metalearn.metrics import GOALS
from metalearn.rundir import CONFIG_FILE, read_json


class DashboardError(RuntimeError):
    """The view cannot be saved here (offline, or the extra is not installed)."""


def panel_keys(headline: str, eval_steps: int) -> dict[str, list[Any]]:
    """The metric keys each section of the view plots (every one is logged by
    every training run)."""
    return {
        "meta-training": ["train/meta_loss"],
        "scores": [f"eval/{headline}@step1", f"eval/{headline}@step{eval_steps}"],
        "adaptation": [f"eval/{headline}@step{i}" for i in range(eval_steps + 1)],
        "throughput": ["perf/steps_per_s"],
    }


def workspace(
    entity: str, project: str, group: str, headline: str, eval_steps: int
) -> Any:
    """The view's definition (a `wandb_workspaces` Workspace; nothing is sent)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    keys = panel_keys(headline, eval_steps)
    by_algo = "algo.name"
    sections = [
        ws.Section(
            name="meta-training",
            is_open=True,
            panels=[
                wr.LinePlot(
                    title="meta-loss",
                    x="meta_step",
                    y=keys["meta-training"],
                    groupby=by_algo,
                    log_y=True,
                )  # fmt: skip
            ],
        ),
        ws.Section(
            name=f"{headline} after 1 and after {eval_steps} adaptation steps",
            is_open=True,
            panels=[
                wr.BarPlot(title=key, metrics=[key], groupby=by_algo)
                for key in keys["scores"]
            ],
        ),
        ws.Section(
            name="adaptation curves: each step's score during meta-training",
            is_open=True,
            panels=[
                wr.LinePlot(
                    title=f"{headline} after 0..{eval_steps} adaptation steps",
                    x="meta_step",
                    y=keys["adaptation"],
                    groupby=by_algo,
                )  # fmt: skip
            ],
        ),
        ws.Section(
            name="throughput",
            panels=[
                wr.LinePlot(
                    title="meta-steps/s",
                    x="meta_step",
                    y=keys["throughput"],
                    groupby=by_algo,
                )  # fmt: skip
            ],
        ),
    ]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"metalearn sweep {group}",
        sections=sections,
        runset_settings=ws.RunsetSettings(
            filters=f"Metric('Group') = '{group}'",
            groupby=[ws.Config(by_algo)],
        ),
    )


def sweep_facts(sweep_dir: Path) -> tuple[str, int]:
    """(headline metric, eval.steps) of a sweep, from a job's config."""
    for path in sorted(sweep_dir.rglob(CONFIG_FILE)):
        config = read_json(path) or {}
        objective = (config.get("eval") or {}).get("objective", "")
        metric = objective.partition("@")[0]
        if metric in GOALS:
            return metric, int(config["eval"]["steps"])
    raise DashboardError(f"no finished job with an eval objective below {sweep_dir}")


def build(sweep_dir: Path, groups: Sequence[Any] = ()) -> str:
    """Saves the view of the sweep's W&B group; returns its URL line."""
    from metalearn.report import wandb_target

    group, project, entity, mode = wandb_target(sweep_dir)
    if mode != "online":
        raise DashboardError(
            f"the dashboard is a view saved on the W&B server, and these runs are "
            f"{mode}: upload them first (find {sweep_dir} -type d -name "
            "'offline-run-*' -exec wandb sync {} +), then run this again with "
            "WANDB_MODE=online and a W&B API key"
        )
    try:
        import wandb
        import wandb_workspaces  # noqa: F401
    except ImportError as error:
        raise DashboardError(
            "the dashboard needs the `dashboard` extra: pip install -e '.[dashboard]'"
        ) from error
    headline, eval_steps = sweep_facts(sweep_dir)
    entity = entity or str(wandb.Api().default_entity)
    view = workspace(entity, project, group, headline, eval_steps).save()
    return f"dashboard of group {group}: {view.url}"
