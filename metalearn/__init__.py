"""metalearn: meta-learning experiments on JAX, haiku, optax, Hydra and W&B.

The library takes objects, not configs: build a task family, a model, an
algorithm and an optimiser in plain Python, then train with `make_train_step`,
`make_train_window` and `fit`, and score with `make_evaluate`
(`examples/python_api.py` does exactly that). `train.py` builds the same objects
from a Hydra config.

The public names below are imported on first use, so `python -m metalearn.data`
and `python -m metalearn.report` start without loading JAX.
"""

import importlib
from typing import Any

_EXPORTS = {
    "metalearn.tasks": ["TASKS", "TaskBatch", "TaskFamily", "TaskSplits"],
    "metalearn.tasks.sinusoid": ["make_sinusoid"],
    "metalearn.tasks.omniglot": ["make_omniglot"],
    "metalearn.models": ["MODELS", "Model", "make_conv4", "make_mlp"],
    "metalearn.algorithms": [
        "ALGORITHMS",
        "Algorithm",
        "MetaGradient",
        "make_anil",
        "make_maml",
        "make_metasgd",
        "make_pretrained",
        "make_protonet",
        "make_reptile",
        "make_sgd_baseline",
    ],
    "metalearn.optimizers": ["OPTIMIZERS", "flat_optimizer", "make_adam"],
    "metalearn.trainer": [
        "Schedule",
        "TrainState",
        "fit",
        "init_train_state",
        "make_train_step",
        "make_train_window",
    ],
    "metalearn.evaluation": ["EvalScores", "flatten_scores", "make_evaluate"],
    "metalearn.metrics": ["Metric", "accuracy", "cross_entropy", "mean_squared_error"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'metalearn' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


def __dir__() -> list[str]:
    return __all__
