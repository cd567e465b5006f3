"""ANIL: Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or
Feature Reuse?", ICLR 2020).

MAML whose inner loop adapts only the network's final layer (the model's `head`);
the body is meta-learned in the outer loop and left untouched during adaptation, so
the inner loop neither computes nor applies body gradients.
"""

from metalearn.algorithms.base import ALGORITHMS, Algorithm, body_of
from metalearn.algorithms.maml import make_partial_maml
from metalearn.models import Model
from metalearn.tasks import TaskFamily


@ALGORITHMS.register("anil")
def make_anil(
    model: Model,
    task: TaskFamily,
    inner_lr: float,
    inner_steps: int,
    *,
    first_order: bool = False,
    remat: bool = False,
) -> Algorithm:
    """Builds ANIL for `model` on `task`.

    Args:
        model: the network; its `head` is adapted, the rest meta-learned only.
        task: the meta-training task family.
        inner_lr: the inner SGD step size of the head.
        inner_steps: inner steps during meta-training.
        first_order: drop second derivatives.
        remat: recompute each inner step's activations in the backward pass.
    """
    return make_partial_maml(
        "anil", model, task, body_of(model), inner_lr, inner_steps, first_order, remat
    )
