"""Shared fixtures. Environment first: JAX and W&B read it when first used."""

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from metalearn.config import register_configs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "conf")
sys.path.insert(0, str(Path(__file__).parent))  # tests' own helpers

# Overrides that make a run take seconds: few steps, a small evaluation.
QUICK = [
    "outer.steps=40",
    "train.log_every=10",
    "eval.every=20",
    "eval.num_tasks=20",
    "eval.num_query=20",
]

register_configs()


@pytest.fixture
def make_config():
    """`make_config(overrides) -> DictConfig`, composed as `train.py` would."""

    def compose_config(overrides=()):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return compose_config
