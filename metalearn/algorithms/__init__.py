"""Meta-learning algorithms, one per module, all returning an `Algorithm`.

Every factory has the signature `make_<algo>(model, task, inner_lr, inner_steps,
**options)`; `ALGORITHMS` maps the config's `algo.name` to it.
"""

from metalearn.algorithms.anil import make_anil
from metalearn.algorithms.base import Algorithm
from metalearn.algorithms.maml import make_maml
from metalearn.algorithms.metasgd import make_metasgd
from metalearn.algorithms.pretrained import make_pretrained
from metalearn.algorithms.reptile import make_reptile
from metalearn.algorithms.sgd import make_sgd_baseline

ALGORITHMS = {
    "maml": make_maml,
    "reptile": make_reptile,
    "metasgd": make_metasgd,
    "anil": make_anil,
    "sgd": make_sgd_baseline,
    "pretrained": make_pretrained,
}

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "make_anil",
    "make_maml",
    "make_metasgd",
    "make_pretrained",
    "make_reptile",
    "make_sgd_baseline",
]
