"""Config composition, the schema, and the errors users see for bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from metalearn.algorithms import ALGORITHMS
from metalearn.config import SCHEMAS, ConfigError, validate
from metalearn.experiment import build, resolve

REPO = Path(__file__).resolve().parents[1]


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (REPO / "conf" / group).glob("*.yaml"))


def test_the_default_is_the_tutorials_batched_maml(make_config):
    config = resolve(make_config())
    assert config["task"] == pytest.approx(
        {
            "name": "sinusoid",
            "amp_min": 0.1,
            "amp_max": 0.5,
            "phase_min": 0.0,
            "phase_max": 3.141592653589793,
            "x_min": -5.0,
            "x_max": 5.0,
        }
    )
    assert config["inner"] == {"lr": 0.1, "steps": 1, "k": 20}
    assert config["outer"] == {"lr": 0.001, "steps": 20000, "batch": 4, "num_query": 20}
    assert config["optimizer"]["_target_"] == "optax.adam"
    assert config["model"]["hidden_sizes"] == [40, 40]
    assert config["algo"] == {"name": "maml", "first_order": False, "remat": False}
    assert config["logger"]["name"] == "wandb"
    assert config["eval"]["k"] == 20 and config["eval"]["num_tasks"] == 1000


@pytest.mark.parametrize(
    "group, option",
    [(group, option) for group in SCHEMAS for option in options(group)],
)
def test_every_option_composes_and_builds(make_config, group, option):
    config = resolve(make_config([f"{group}={option}"]))
    validate(config)
    parts = build(config)
    assert parts.algorithm.name in (*ALGORITHMS, "fomaml")


@pytest.mark.parametrize(
    "overrides",
    [[f"experiment={e}"] for e in options("experiment")]
    + [[f"variant={v}"] for v in options("variant")]
    + [
        [f"experiment={e}", f"variant={v}"]
        for e in options("experiment")
        for v in ("maml_b1", "sgd")
    ],
)
def test_every_preset_and_variant_composes_and_builds(make_config, overrides):
    config = resolve(make_config(overrides))
    validate(config)
    build(config)


def test_paper_preset_is_the_maml_papers_setting_and_variants_apply_last(make_config):
    config = resolve(make_config(["experiment=maml_paper_sinusoid", "variant=maml_b4"]))
    assert config["task"]["amp_max"] == 5.0 and config["inner"] == {
        "lr": 0.01,
        "steps": 1,
        "k": 10,
    }
    assert config["outer"]["steps"] == 70000 and config["outer"]["batch"] == 4
    assert config["eval"]["k"] == 5 and config["eval"]["num_tasks"] == 600


def test_every_yaml_option_has_a_schema_and_a_comment_line():
    for group in SCHEMAS:
        for path in (REPO / "conf" / group).glob("*.yaml"):
            assert path.read_text().startswith("# "), path
            assert f"/schema/{group}/" in path.read_text(), path


def test_fomaml_preset_is_first_order_maml(make_config):
    config = resolve(make_config(["algo=fomaml"]))
    assert config["algo"] == {"name": "maml", "first_order": True, "remat": False}
    assert build(config).algorithm.name == "fomaml"


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lrr=0.1", "Key 'lrr' not in 'InnerConfig'"),
        ("inner.lr=abc", "could not be converted to Float"),
        ("outer.batch=1.5", "could not be converted to Integer"),
        ("algo.first_order=maybe", "is not a valid bool"),
        ("algo=nope", "Could not find 'algo/nope'"),
        ("optimizer=nope", "Could not find 'optimizer/nope'"),
        ("task.amp_mx=3", "Key 'amp_mx' not in 'SinusoidConfig'"),
    ],
)
def test_hydra_rejects_typos_types_and_unknown_options(make_config, override, message):
    with pytest.raises(ConfigCompositionException) as error:
        make_config([override])
    assert message in f"{error.value}\n{error.value.__cause__}"


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lr=-1", "inner.lr=-1.0 is not allowed: it must be a finite number > 0"),
        ("inner.lr=0", "inner.lr=0.0 is not allowed"),
        ("outer.lr=nan", "outer.lr=nan is not allowed"),
        ("inner.k=0", "inner.k=0 is not allowed: it must be an integer >= 1"),
        ("outer.batch=0", "outer.batch=0 is not allowed: it must be an integer >= 1"),
        ("inner.steps=-1", "inner.steps=-1 is not allowed: it must be an integer >= 0"),
        ("eval.num_tasks=1", "eval.num_tasks=1 is not allowed"),
        ("task.amp_min=6", "task.amp_min must be <= task.amp_max"),
        ("model.activation=swish", "choose one of elu, gelu, relu"),
        ("model.hidden_sizes=[40,0]", "every size must be >= 1"),
        ("logger.mode=sometimes", "logger.mode=sometimes is not allowed"),
    ],
)
def test_out_of_range_values_are_named_with_what_is_allowed(
    make_config, override, message
):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        validate(resolve(make_config([override])))


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lr=-1", "inner.lr=-1.0 is not allowed: it must be a finite number > 0"),
        ("inner.k=0", "inner.k=0 is not allowed: it must be an integer >= 1"),
        ("outer.batch=0", "outer.batch=0 is not allowed: it must be an integer >= 1"),
        ("inner.steps=-1", "inner.steps=-1 is not allowed: it must be an integer >= 0"),
        ("algo=nope", "Could not find 'algo/nope'"),
        ("optimizer=nope", "Could not find 'optimizer/nope'"),
        ("inner.lr=abc", "Value 'abc' of type 'str' could not be converted to Float"),
    ],
)
def test_train_py_exits_early_with_a_short_message_and_no_traceback(
    tmp_path, override, message
):
    result = subprocess.run(
        [sys.executable, "train.py", override, f"hydra.run.dir={tmp_path}/run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HYDRA_FULL_ERROR": ""},
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert override.split("=")[0] in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert 'File "' not in result.stderr
    assert not (tmp_path / "run" / "wandb").exists()  # failed before starting a run
