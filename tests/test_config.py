"""Config composition, the schema, and the errors users see for bad input."""

import copy
import dataclasses
import functools

import pytest
import yaml
from helpers import (
    CONFIG_DIR,
    QUICK,
    REPO,
    compose_config,
    options,
    train_main,
    train_py,
)
from hydra.errors import ConfigCompositionException

from metalearn.build import build
from metalearn.config import (
    GROUPS,
    Config,
    ConfigError,
    component_schema,
    config_reference,
    typed,
    validate,
)
from metalearn.rundir import State, read_state


def typed_config(overrides=()) -> Config:
    return typed(compose_config(overrides))


@functools.cache
def default_plain() -> dict:
    from metalearn.resume import plain

    return plain(typed_config())


def typed_with(override: str) -> Config:
    """The default config with one `key=value` set in its plain form (as a saved
    `config.json` would hold it), typed: the schema's own checks, without
    Hydra's command-line parsing (the train.py tests cover that)."""
    key, _, value = override.partition("=")
    config = copy.deepcopy(default_plain())
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = yaml.safe_load(value)
    return typed(config)


def test_the_default_is_the_tutorials_batched_maml():
    config = typed_config()
    assert dataclasses.asdict(config.task) == pytest.approx(
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
    assert (config.inner.lr, config.inner.steps, config.inner.k) == (0.1, 1, 20)
    outer = config.outer
    assert (outer.lr, outer.steps, outer.batch, outer.num_query) == (1e-3, 20000, 4, 20)
    assert config.optimizer.name == "adam" and config.optimizer.b1 == 0.9
    assert config.model.name == "mlp" and list(config.model.hidden_sizes) == [40, 40]
    assert dataclasses.asdict(config.algo) == {
        "name": "maml",
        "first_order": False,
        "remat": False,
        **MAMLPP_OFF,
    }
    assert config.logger.name == "wandb" and config.logger.mode is None
    assert config.eval.k == 20 and config.eval.num_tasks == 1000
    assert config.resume is None and config.seed == 0


@pytest.mark.parametrize(
    "overrides, objective",
    [
        ([], "mse@step10"),
        (["eval.steps=5"], "mse@step5"),
        (["task=sinusoid"], "mse@step10"),
        (["task=omniglot"], "acc@step10"),
        (["eval.objective=mse_k10@step3"], "mse_k10@step3"),
    ],
)
def test_the_objective_defaults_to_the_tasks_headline_metric_after_eval_steps(
    overrides, objective
):
    assert typed_config(overrides).eval.objective == objective


def data_overrides(request, overrides: list[str]) -> list[str]:
    """The data options the image tasks among `overrides` need (fixtures)."""
    if "task=omniglot" in overrides or any("omniglot" in o for o in overrides):
        return [f"data.root={request.getfixturevalue('omniglot_root')}"]
    if "task=image_folder" in overrides:
        root = request.getfixturevalue("image_folder_root")
        return [f"task.root={root}", "task.ways=3", "task.image_size=16"]
    if any("mini_imagenet" in o for o in overrides):
        standin = request.getfixturevalue("mini_imagenet_standin")
        return [  # 2 images a class
            f"data.root={standin.data_root}",
            f"task.split_dir={standin.split_dir}",
            *["inner.k=1", "outer.num_query=1", "eval.k=1", "eval.num_query=1"],
        ]
    return []


# a conv net needs images; ProtoNets classify
NEED_IMAGES = {("model", "conv4"), ("algo", "protonet")}


def build_overrides(request, group: str, option: str) -> list[str]:
    """`group=option`, with a task it can run on and the data that task needs."""
    overrides = [f"{group}={option}"]
    if (group, option) in NEED_IMAGES:
        overrides.append("task=omniglot")
    if "task=omniglot" in overrides:  # 20 drawings per class: K + Q <= 20
        overrides += ["inner.k=1", "eval.num_query=15"]
    if overrides[0] == "task=image_folder":  # 12 images a class
        overrides += ["inner.k=1", "eval.num_query=5", "outer.num_query=5"]
    return [*overrides, *data_overrides(request, overrides)]


OPTIONS = [(group, option) for group in GROUPS for option in options(group)]


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_option_composes_and_builds(request, group, option):
    config = typed_config(build_overrides(request, group, option))
    validate(config)
    parts = build(config)
    assert getattr(config, group).name in GROUPS[group]
    assert parts.algorithm.name in (*GROUPS["algo"], "fomaml")


def test_every_registered_component_has_a_yaml_option():
    for group, registry in GROUPS.items():
        assert set(registry) <= set(options(group)), group


IMAGE_VARIANTS = ("mamlpp", "protonet")  # arms of the Omniglot comparison only
PRESETS = (
    [[f"experiment={e}"] for e in options("experiment")]
    + [[f"variant={v}"] for v in options("variant") if v not in IMAGE_VARIANTS]
    + [  # the variants are arms of the sinusoid studies
        [f"experiment={e}", f"variant={v}"]
        for e in ("tutorial", "maml_paper_sinusoid")
        for v in ("maml_b1", "sgd")
    ]
    + [  # the arms of the Omniglot comparison (sweep=compare_omniglot)
        ["experiment=maml_paper_omniglot_5w1s", f"variant={v}"]
        for v in ("maml", "mamlpp", "protonet", "reptile", "pretrained")
    ]
)


@pytest.mark.parametrize("overrides", PRESETS, ids=" ".join)
def test_every_preset_and_variant_composes_and_builds(request, overrides):
    config = typed_config([*overrides, *data_overrides(request, overrides)])
    validate(config)
    build(config)


def test_paper_preset_is_the_maml_papers_setting_and_variants_apply_last():
    config = typed_config(["experiment=maml_paper_sinusoid", "variant=maml_b4"])
    assert config.task.amp_max == 5.0
    assert (config.inner.lr, config.inner.steps, config.inner.k) == (0.01, 1, 10)
    assert config.outer.steps == 70000 and config.outer.batch == 4
    assert config.eval.k == 5 and config.eval.num_tasks == 600
    assert config.eval.extra_k == [10, 20]


MAMLPP_OFF = {  # MAML++'s options of algo=maml, all off
    "multi_step_loss": False,
    "multi_step_loss_epochs": 10,
    "learned_lrs": False,
    "first_order_epochs": 0,
    "epoch_steps": 500,
    "adapt_batch_norm": False,  # the reference code's: BatchNorm in the outer loop
}


def test_fomaml_preset_is_first_order_maml():
    config = typed_config(["algo=fomaml"])
    assert dataclasses.asdict(config.algo) == {
        "name": "maml",
        "first_order": True,
        "remat": False,
        **MAMLPP_OFF,
    }
    assert build(config).algorithm.name == "fomaml"


YAML_FILES = sorted(CONFIG_DIR.rglob("*.yaml"))


@pytest.mark.parametrize(
    "path", YAML_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR))
)
def test_every_yaml_file_starts_with_a_comment_line(path):
    assert path.read_text().startswith("# "), path


@pytest.mark.parametrize("group, option", OPTIONS)
def test_group_options_extend_their_schema_and_set_only_what_differs(group, option):
    """Schema defaults are the one home of defaults: an option file selects its
    schema and sets only values of its own."""
    text = (CONFIG_DIR / group / f"{option}.yaml").read_text()
    content = yaml.safe_load(text)
    (schema,) = [d for d in content.pop("defaults") if d != "_self_"]
    assert schema.startswith(f"/schema/{group}/") and schema.endswith("@_here_")
    name = schema.removeprefix(f"/schema/{group}/").removesuffix("@_here_")
    defaults = dataclasses.asdict(component_schema(group, name)())
    for key, value in content.items():
        assert key in defaults, f"{path_of(group, option)}: {key} is not an option"
        assert value != defaults[key], f"{path_of(group, option)}: {key} is a default"


def path_of(group, option):
    return f"conf/{group}/{option}.yaml"


def test_the_config_reference_in_docs_is_current():
    # regenerate with: python -m metalearn.config conf > docs/config.md
    assert (REPO / "docs" / "config.md").read_text() == config_reference(REPO / "conf")


def test_the_config_reference_lists_every_key_and_option():
    reference = config_reference(REPO / "conf")
    for section in ("inner", "outer", "eval", "train", "checkpoint", "data"):
        for spec in dataclasses.fields(getattr(Config(), section)):
            assert f"| `{section}.{spec.name}` |" in reference
    for group, registry in GROUPS.items():
        for name in registry:
            assert f"### `{group}={name}`" in reference
            for option in registry.options(name):
                assert f"| `{group}.{option.name}` |" in reference
                assert option.help, f"{group}={name}: {option.name} has no help"


# --- errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lrr=0.1", "Key 'lrr' not in 'InnerConfig'"),
        ("inner.lr=abc", "could not be converted to Float"),
        ("outer.batch=1.5", "could not be converted to Integer"),
        ("algo.first_order=maybe", "is not a valid bool"),
        ("algo=nope", "Could not find 'algo/nope'"),
        ("optimizer=nope", "Could not find 'optimizer/nope'"),
        ("task.amp_mx=3", "Key 'amp_mx' not in 'task_sinusoid'"),
        ("optimizer.momentum=0.9", "Key 'momentum' not in 'optimizer_adam'"),
    ],
)
def test_hydra_rejects_typos_types_and_unknown_options(override, message):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config([override])
    assert message in f"{error.value}\n{error.value.__cause__}"


@pytest.mark.parametrize(
    "override, message",
    [
        ("+inner.lrr=0.5", "inner.lrr is not a config key (misspelt?)"),
        ("+lr=0.5", "lr is not a config key (misspelt?)"),
        ("+task.amp=2", "task.amp is not a config key (misspelt?)"),
    ],
)
def test_typed_refuses_keys_added_with_a_plus(override, message):
    cfg = compose_config([override])  # Hydra appends a `+` key without a word
    with pytest.raises(ConfigError) as error:
        typed(cfg)
    assert str(error.value) == message


def test_typed_refuses_a_saved_config_with_a_key_this_version_lacks():
    from metalearn.resume import plain

    saved = plain(typed_config())
    saved["train"]["retired"] = 1
    with pytest.raises(ConfigError, match="train.retired is not a config key"):
        typed(saved)
    assert plain(typed(plain(typed_config()))) == plain(typed_config())


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lr=-1", "inner.lr=-1.0 is not allowed: it must be a finite number > 0"),
        ("inner.lr=0", "inner.lr=0.0 is not allowed"),
        ("outer.lr=0", "outer.lr=0.0 is not allowed: it must be a finite number > 0"),
        ("outer.lr=.nan", "outer.lr=nan is not allowed"),
        ("inner.k=0", "inner.k=0 is not allowed: it must be an integer >= 1"),
        ("outer.batch=0", "outer.batch=0 is not allowed: it must be an integer >= 1"),
        ("inner.steps=-1", "inner.steps=-1 is not allowed: it must be an integer >= 0"),
        ("eval.num_tasks=1", "eval.num_tasks=1 is not allowed"),
        ("eval.extra_k=[5,0]", "eval.extra_k=[5, 0] is not allowed: every value"),
        ("outer.steps=3000000000", "it must be an integer between 1 and 2147483647"),
        ("train.max_minutes=0", "train.max_minutes=0.0 is not allowed"),
        ("outer.clip_value=0", "outer.clip_value=0.0 is not allowed: it must be a"),
        ("seed=-1", "seed=-1 is not allowed: it must be an integer >= 0"),
        ("train.tasks_at_once=-1", "train.tasks_at_once=-1 is not allowed: it must"),
        ("train.cpu_devices=-2", "train.cpu_devices=-2 is not allowed: it must be"),
    ],
)
def test_out_of_range_run_settings_are_named_with_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as error:
        validate(typed_with(override))
    assert message in str(error.value)


def test_chunks_of_tasks_that_do_not_split_the_batch_are_named():
    from metalearn.experiment import device_mesh

    with pytest.raises(ConfigError) as error:
        device_mesh(typed_with("train.tasks_at_once=3"))  # outer.batch=4
    assert str(error.value) == (
        "train.tasks_at_once=3 is not allowed: each of 1 device(s) has 4 of the 4 "
        "tasks of a meta-step; it must be a divisor of 4 (0: all at once) "
        "(outer.batch=4)"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "task.amp_min=6",
            "task.amp_min=6.0 is not allowed: it must be <= amp_max=0.5",
        ),
        ("task.x_max=.inf", "task.x_max=inf is not allowed: it must be finite"),
        (
            "model.activation=swish",
            "model.activation=swish is not allowed: choose one of relu, tanh, gelu",
        ),
        ("model.hidden_sizes=[40,0]", "model.hidden_sizes=[40, 0] is not allowed"),
        ("model.weight_init=zeros", "model.weight_init=zeros is not allowed: choose"),
        ("optimizer.b1=1.0", "optimizer.b1=1.0 is not allowed: it must be in [0, 1)"),
        ("optimizer.b2=-0.1", "optimizer.b2=-0.1 is not allowed: it must be in [0, 1)"),
        ("optimizer.eps=0", "optimizer.eps=0.0 is not allowed: it must be > 0"),
        ("optimizer.schedule=linear", "optimizer.schedule=linear is not allowed"),
        (
            "eval.objective=acc@step3",
            "eval.objective=acc@step3 is not allowed: use <metric>@step<i> with "
            "metric in ['mse']",
        ),
        ("eval.objective=mse@step11", "eval.objective=mse@step11 is not allowed"),
        ("eval.objective=mse_k10@step1", "eval.objective=mse_k10@step1 is not"),
    ],
)
def test_out_of_range_component_options_are_named_when_built(override, message):
    config = typed_with(override)
    validate(config)  # the run's own sections are fine
    with pytest.raises(ConfigError) as error:
        build(config)
    assert message in str(error.value)


def test_an_objective_at_an_extra_k_is_allowed():
    build(typed_config(["eval.extra_k=[10]", "eval.objective=mse_k10@step1"]))


# --- what train.py prints -------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lr=-1", "inner.lr=-1.0 is not allowed: it must be a finite number > 0"),
        ("algo=nope", "Could not find 'algo/nope'"),
        ("inner.lr=abc", "Value 'abc' of type 'str' could not be converted to Float"),
        ("+inner.lrr=0.5", "inner.lrr is not a config key (misspelt?)"),
        ("task.amp_min=6", "task.amp_min=6.0 is not allowed: it must be <= amp_max"),
        ("optimizer.b2=1", "optimizer.b2=1.0 is not allowed: it must be in [0, 1)"),
        ("eval.objective=acc@step1", "eval.objective=acc@step1 is not allowed"),
        (
            "algo=protonet",
            "algo=protonet is not allowed with task=sinusoid: it classifies, choose "
            "a classification task (image_folder, mini_imagenet, omniglot)",
        ),
        (
            "logger.mode=sometimes",
            "logger.mode=sometimes is not allowed: choose one of offline, online",
        ),
    ],
)
def test_train_py_exits_early_with_a_short_message_and_no_traceback(
    tmp_path, capsys, override, message
):
    run_dir = tmp_path / "run"
    code = train_main(override, *QUICK, f"hydra.run.dir={run_dir}")
    out, err = capsys.readouterr()
    assert code != 0
    assert message in err
    assert override.lstrip("+").split("=")[0] in err
    assert "Traceback" not in err + out and 'File "' not in err
    assert not (run_dir / "wandb").exists()  # failed before starting a run
    # refused before the run started: nothing says it is running
    assert read_state(run_dir) in (None, State.FAILED)


def test_train_py_in_a_fresh_interpreter_refuses_a_bad_value_cleanly(tmp_path):
    result = train_py("inner.lr=-1", f"hydra.run.dir={tmp_path}/run", check=False)
    assert result.returncode == 2
    assert "inner.lr=-1.0 is not allowed: it must be a finite number > 0" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "run" / "wandb").exists()
