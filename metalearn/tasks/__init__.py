"""Task families: pure samplers of few-shot tasks from PRNG keys and data arrays.

A task family is a `TaskFamily` of pure functions plus the arrays it samples from.
`sample(key, data, num_support, num_query)` draws one task as a `TaskBatch`; under
`jax.vmap` over keys it draws a batch of tasks with a leading task axis `[T, ...]`.
`data` is an argument, not a constant closed over: the trainer and the evaluation
pass `family.data` into their compiled programs, so a dataset of images is an input
of the program, never baked into it (sinusoids have no data: `()`).

Training and evaluation sample from different families (`TaskSplits`): for a
dataset split by class, meta-test tasks come only from the test classes.

Every module of this package that defines a task family registers its factory in
`TASKS`; a factory takes the data root (where prepared datasets live) and its
options, and returns the `TaskSplits`; it registers with `headline=<metric>`, the
metric its evaluation reports first and the default objective's.
"""

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from metalearn.metrics import Metric
from metalearn.registry import Registry

Data = Any  # a pytree of arrays a family samples from; () when it needs none


class TaskBatch(NamedTuple):
    """One task (or, with a leading axis `T`, a batch of tasks)."""

    support_inputs: jax.Array  # [K, *input_shape] (classification: [N*K, ...])
    support_targets: jax.Array  # [K, *target_shape] (classification: int labels)
    query_inputs: jax.Array  # [Q, *input_shape]
    query_targets: jax.Array  # [Q, *target_shape]
    # classification: the family-wide class id of each task label [N]; else None
    classes: jax.Array | None = None


class TaskFamily(NamedTuple):
    """A distribution over tasks, the data it draws from, and how tasks are scored.

    Attributes:
        name: short name used in logs.
        sample: `(key, data, num_support, num_query) -> TaskBatch` for one task; the
            two counts are Python ints (they fix shapes). For classification they
            count examples per class.
        data: the arrays `sample` draws from (`()` for none).
        loss: `(predictions, targets) -> scalar`, minimised by inner and outer loops.
        metrics: name -> `Metric`, reported by evaluation as `eval/<name>@step<i>`.
        input_shape: shape of one input, used to initialise models.
        output_size: number of model outputs per input (classification: N ways).
        num_classes: classification: how many classes the family draws from (the
            size of a classifier over all of them); None for regression.
        examples_per_class: classification: examples each class has (a task's
            support plus query per class cannot exceed it; the smallest class's
            count when they differ); None: unlimited.
        smallest_class: the name of the class with `examples_per_class`, when
            classes differ in size (named in the error when a task needs more).
    """

    name: str
    sample: Callable[[jax.Array, Data, int, int], TaskBatch]
    data: Data
    loss: Callable[[jax.Array, jax.Array], jax.Array]
    metrics: dict[str, Metric]
    input_shape: tuple[int, ...]
    output_size: int
    num_classes: int | None = None
    examples_per_class: int | None = None
    smallest_class: str | None = None


class TaskSplits(NamedTuple):
    """The family meta-training samples from and the one evaluation samples from."""

    train: TaskFamily
    test: TaskFamily


TASKS = Registry("task")


for _module in pkgutil.iter_modules(__path__):  # each family registers itself
    importlib.import_module(f"{__name__}.{_module.name}")
